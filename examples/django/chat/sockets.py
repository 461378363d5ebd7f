"""The chat's socket handlers: plain Django functions that roomcast's event
proxy runs (the roomcast package's Django app imports this module).

``request.user`` is the Django user of the socket's session cookie, which
roomcast forwards on every call; ``request.roomcast`` is the connection and
the actions roomcast runs before the ack. The return value is the ack.
"""

import logging

import roomcast
from django.conf import settings
from roomcast import Refused

from .models import Message
from .rooms import check_may_join, room_name

log = logging.getLogger("chat")

#: Longest message accepted by ``chat.send``, in characters.
MAX_TEXT = 2000


def public_info(user):
    """What presence shows of a user, and the session its sockets start with."""
    return {"username": user.username}


def acting_user(request):
    """The user the call acts for, or None.

    roomcast says who the connection is (bound at connect); the forwarded
    cookie says whether that Django session is still alive. Both must agree,
    so logging out of Django also stops the socket's events.
    """
    user = request.user
    if user.is_authenticated and request.roomcast.user == str(user.pk):
        return user
    return None


def the_user(request):
    user = acting_user(request)
    if user is None:
        raise Refused("unauthenticated", "log in to chat: your Django session has ended")
    return user


def an_object(data, name):
    if not isinstance(data, dict):
        raise Refused("invalid", f"{name}: expected an object as the event's argument")
    return data


@roomcast.can_join("chat:*")
def may_join(request, room):
    """A client joins a room whose roomcast rule says ``join = "proxy"``."""
    check_may_join(acting_user(request), room)
    return True


@roomcast.event("chat.send")
def chat_send(request, data):
    """``{"room", "text"}``: saves the message, then roomcast publishes it to the room."""
    user = the_user(request)
    data = an_object(data, "chat.send")
    room = room_name(data.get("room"))
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        raise Refused("invalid", "text must be a non-empty string")
    if len(text) > MAX_TEXT:
        raise Refused("invalid", f"text is longer than {MAX_TEXT} characters")
    check_may_join(user, room)
    if room not in request.roomcast.rooms:
        raise Refused("not_a_member", f"join {room} before sending to it")
    message = Message.objects.create(room=room, user=user, text=text)
    log.info("message %s from %s in %s", message.id, user.username, room)
    request.roomcast.publish(room, "message", message.as_json())
    return {"id": message.id}


@roomcast.event("chat.history")
def chat_history(request, data):
    """``{"room", "limit"?}``: the room's last messages, oldest first."""
    user = the_user(request)
    data = an_object(data, "chat.history")
    room = room_name(data.get("room"))
    check_may_join(user, room)
    most = settings.CHAT["HISTORY_LIMIT"]
    limit = data.get("limit", 50)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= most:
        raise Refused("invalid", f"limit must be an integer from 1 to {most}")
    recent = Message.objects.filter(room=room).select_related("user").order_by("-id")[:limit]
    return {"room": room, "messages": [m.as_json() for m in reversed(recent)]}


@roomcast.event("room.join")
def room_join(request, data):
    """``{"room"}``: roomcast joins the connection to the room if the rule allows it."""
    user = the_user(request)
    room = room_name(an_object(data, "room.join").get("room"))
    check_may_join(user, room)
    joined = room not in request.roomcast.rooms
    request.roomcast.join(room)
    return {"room": room, "joined": joined}


@roomcast.event("room.leave")
def room_leave(request, data):
    """``{"room"}``: the connection leaves the room."""
    the_user(request)
    room = room_name(an_object(data, "room.leave").get("room"))
    left = room in request.roomcast.rooms
    request.roomcast.leave(room)
    return {"room": room, "left": left}
