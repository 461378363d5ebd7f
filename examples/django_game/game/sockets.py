"""The game's socket handlers: plain Django functions, run by roomcast's event proxy.

``request.user`` is the Django user of the page's session (none here: players
log in with an event), ``request.roomcast`` the connection and the actions
queued for roomcast. The return value is the client's ack.
"""

from django.db import transaction

import roomcast
from roomcast.django import client, publish_on_commit

from .models import Player, Shout

LOBBY = "lobby"


@roomcast.event("login")
def login(request, data):
    """The seed's ``socket.emit('login', {login, picture})``: remember the player, bind the socket."""
    name = (data or {}).get("login") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        raise roomcast.Refused("invalid", "login must be a non-empty name of at most 64 characters")
    if request.roomcast.user not in (None, name):
        raise roomcast.Refused("already_logged_in", f"this connection is {request.roomcast.user}")
    Player.objects.update_or_create(
        login=name, defaults={"picture": str(data.get("picture", "")), "conn": request.roomcast.conn}
    )
    request.roomcast.bind(name)
    request.roomcast.join(LOBBY)
    return {"ok": True, "login": name}


@roomcast.event("shout")
def shout(request, data):
    """Saves a message and publishes it to the lobby only if the transaction commits."""
    player = Player.objects.get(login=request.roomcast.user or "")
    with transaction.atomic():
        s = Shout.objects.create(player=player, text=str(data.get("text", ""))[:500])
        publish_on_commit(LOBBY, "shout", {"from": player.login, "text": s.text})
        if data.get("undo"):
            transaction.set_rollback(True)
            return {"saved": False}
    return {"saved": True, "id": s.id}


@roomcast.can_join("game:*")
def may_join_game(request, room):
    """Tables are for logged-in players."""
    return request.roomcast.user is not None


# The classic python-socketio example's events, as Django handlers.


@roomcast.event("my_event")
def my_event(request, message):
    return {"data": message["data"]}


@roomcast.event("my_broadcast_event")
def my_broadcast_event(request, message):
    request.roomcast.broadcast("my_response", {"data": message["data"]})
    return {"ok": True}


@roomcast.event("join")
def join(request, message):
    request.roomcast.join(message["room"])
    return {"data": "In rooms: " + ", ".join(sorted({*request.roomcast.rooms, message["room"]}))}


@roomcast.event("leave")
def leave(request, message):
    request.roomcast.leave(message["room"])
    return {"data": "In rooms: " + ", ".join(sorted(set(request.roomcast.rooms) - {message["room"]}))}


@roomcast.event("close_room")
def close_room(request, message):
    # A server-side call: every member leaves, this one included.
    client().publish(message["room"], "my_response", {"data": "Room " + message["room"] + " is closing."})
    client().close_room(message["room"])
    return {"ok": True}


@roomcast.event("my_room_event")
def my_room_event(request, message):
    request.roomcast.publish(message["room"], "my_response", {"data": message["data"]})
    return {"ok": True}


@roomcast.event("disconnect_request")
def disconnect_request(request, message):
    # Actions run before the ack is sent: the socket closes, and no ack follows.
    request.roomcast.disconnect(4000, "disconnect requested")
