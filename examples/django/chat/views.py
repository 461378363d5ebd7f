"""The chat page, the online-state view, and the four endpoints roomcast calls.

    POST /roomcast/connect    who is this socket?           (proxy.connect_url)
    POST /roomcast/subscribe  may it join this room?        (proxy.subscribe_url)
    POST /roomcast/rpc        handle this client event      (proxy.rpc_url)
    POST /roomcast/webhook    a socket connected, left, ... (proxy.webhook_url)
"""

import logging
from datetime import datetime, timezone

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from .models import Connection, Message
from .rooms import check_may_join, room_name, rooms_for
from .roomcast import Refusal, acting_user, roomcast_endpoint

log = logging.getLogger("chat")

#: Longest message accepted by ``chat.send``, in characters.
MAX_TEXT = 2000


# ---------------------------------------------------------------------------
# Pages


@login_required
def index(request):
    return render(
        request,
        "chat/index.html",
        {
            "client_config": {
                "url": settings.ROOMCAST["PUBLIC_URL"],
                "rooms": rooms_for(request.user),
                "username": request.user.username,
            }
        },
    )


@require_GET
def online(request, username):
    """Whether `username` has a live roomcast connection, from the webhooks' rows."""
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        return JsonResponse({"error": {"code": "not_found", "message": f"no user {username!r}"}}, status=404)
    connections = list(Connection.objects.of(user).order_by("connected_at", "conn"))
    return JsonResponse(
        {
            "username": user.username,
            "online": bool(connections),
            "sids": [c.conn for c in connections],
            "connections": [
                {"conn": c.conn, "node": c.node, "rooms": c.rooms, "connected_at": c.connected_at.isoformat()}
                for c in connections
            ],
        }
    )


# ---------------------------------------------------------------------------
# Connect proxy


@roomcast_endpoint
def connect(request, body):
    """A new socket: its cookies carry the Django session, so ``request.user`` is who it is."""
    user = request.user
    if not user.is_authenticated:
        raise Refusal("unauthenticated", "log in to chat: this connection has no Django session")
    return {
        "user": str(user.pk),
        "rooms": list(settings.ROOMCAST["DEFAULT_ROOMS"]),
        "session": {"username": user.username},
        "info": {"username": user.username},
    }


# ---------------------------------------------------------------------------
# Subscribe proxy


@roomcast_endpoint
def subscribe(request, body):
    """A client asks to join a room whose roomcast rule says ``join = "proxy"``."""
    check_may_join(acting_user(request, body), body.get("room"))
    return {}


# ---------------------------------------------------------------------------
# Event proxy: client events, answered with an ack value and actions

EVENTS = {}


def event(name):
    """Registers ``handler(user, data, call) -> {"result": ..., "actions": [...]}`` for `name`."""

    def register(handler):
        EVENTS[name] = handler
        return handler

    return register


@roomcast_endpoint
def rpc(request, body):
    name = body.get("event")
    handler = EVENTS.get(name)
    if handler is None:
        raise Refusal("unknown_event", f"no handler for the event {name!r}")
    user = acting_user(request, body)
    if user is None:
        raise Refusal("unauthenticated", "log in to chat: your Django session has ended")
    data = body.get("data")
    if not isinstance(data, dict):
        raise Refusal("invalid", f"{name}: expected an object as the event's argument")
    return handler(user, data, body)


@event("chat.send")
def chat_send(user, data, call):
    """``{"room", "text"}``: saves the message, then roomcast publishes it to the room."""
    room = room_name(data.get("room"))
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        raise Refusal("invalid", "text must be a non-empty string")
    if len(text) > MAX_TEXT:
        raise Refusal("invalid", f"text is longer than {MAX_TEXT} characters")
    check_may_join(user, room)
    if room not in call.get("rooms", []):
        raise Refusal("not_a_member", f"join {room} before sending to it")
    message = Message.objects.create(room=room, user=user, text=text)
    log.info("message %s from %s in %s", message.id, user.username, room)
    return {
        "result": {"id": message.id},
        "actions": [{"type": "publish", "room": room, "event": "message", "data": message.as_json()}],
    }


@event("chat.history")
def chat_history(user, data, call):
    """``{"room", "limit"?}``: the room's last messages, oldest first."""
    room = room_name(data.get("room"))
    check_may_join(user, room)
    most = settings.ROOMCAST["HISTORY_LIMIT"]
    limit = data.get("limit", 50)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= most:
        raise Refusal("invalid", f"limit must be an integer from 1 to {most}")
    recent = Message.objects.filter(room=room).select_related("user").order_by("-id")[:limit]
    return {"result": {"room": room, "messages": [m.as_json() for m in reversed(recent)]}}


@event("room.join")
def room_join(user, data, call):
    """``{"room"}``: roomcast joins the connection to the room if the rule allows it."""
    room = room_name(data.get("room"))
    check_may_join(user, room)
    joined = room not in call.get("rooms", [])
    return {"result": {"room": room, "joined": joined}, "actions": [{"type": "join", "room": room}]}


@event("room.leave")
def room_leave(user, data, call):
    """``{"room"}``: the connection leaves the room."""
    room = room_name(data.get("room"))
    left = room in call.get("rooms", [])
    return {"result": {"room": room, "left": left}, "actions": [{"type": "leave", "room": room}]}


# ---------------------------------------------------------------------------
# Webhooks: Django's own record of who is online, without polling roomcast


@roomcast_endpoint
def webhook(request, body):
    """``connect``, ``disconnect``, ``join``, ``leave``, posted in order per roomcast node.

    Each handler is idempotent (an upsert, a delete, a set insert or removal),
    so an event roomcast retries and delivers twice changes nothing the second time.
    """
    kind = body.get("type")
    conn = body.get("conn")
    if not isinstance(conn, str) or not conn:
        raise Refusal("bad_request", "webhook without a conn")
    if kind == "connect":
        uid = body.get("user")  # the connect answer's "user": a primary key, or null
        user = get_user_model().objects.filter(pk=uid).first() if isinstance(uid, str) and uid.isdigit() else None
        at = datetime.fromtimestamp(body.get("time_ms", 0) / 1000, tz=timezone.utc)
        Connection.objects.update_or_create(
            conn=conn,
            defaults={"user": user, "node": body.get("node") or ""},
            create_defaults={"user": user, "node": body.get("node") or "", "connected_at": at},
        )
    elif kind == "disconnect":
        Connection.objects.filter(conn=conn).delete()
    elif kind in ("join", "leave"):
        room = body.get("room")
        with transaction.atomic():
            c = Connection.objects.select_for_update().filter(conn=conn).first()
            if c is not None:
                rooms = [r for r in c.rooms if r != room]
                if kind == "join":
                    rooms.append(room)
                if rooms != c.rooms:
                    c.rooms = rooms
                    c.save(update_fields=["rooms"])
    else:
        log.info("webhook of unknown type %r ignored", kind)
    return {}
