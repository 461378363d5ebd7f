"""The four endpoints roomcast calls, as Django views (``roomcast.django.urls``):

    POST connect    who is this socket?       proxy.connect_url
    POST subscribe  may it join this room?     proxy.subscribe_url
    POST rpc        handle this client event   proxy.rpc_url
    POST webhook    a socket connected, left   proxy.webhook_url

Each checks ``X-Roomcast-Secret`` against ``ROOMCAST["SECRET"]`` (403
otherwise) and is exempt from CSRF: the caller is roomcast, not a browser.
roomcast forwards the client's handshake cookies, so Django's own session and
authentication middleware make ``request.user`` the page's user.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from django.core.cache import cache
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .. import handlers
from ..webhooks import WebhookError, parse_webhook, verify_secret
from . import client, conf, signals
from .call import Connection

log = logging.getLogger("roomcast.django")

View = Callable[[HttpRequest, dict[str, Any]], Any]


def refusal(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def endpoint(view: View) -> Callable[[HttpRequest], HttpResponse]:
    """``view(request, body) -> dict`` as an endpoint roomcast calls."""

    @csrf_exempt
    @require_POST
    def wrapped(request: HttpRequest) -> HttpResponse:
        secret = conf.secret()
        if not secret:
            log.error("%s: ROOMCAST['SECRET'] is not set: every call from roomcast is refused", request.path)
            return JsonResponse(refusal("forbidden", "the backend has no shared secret"), status=403)
        if not verify_secret(request.headers.get("X-Roomcast-Secret"), secret):
            log.warning("%s: wrong or missing X-Roomcast-Secret", request.path)
            return JsonResponse(refusal("forbidden", "not roomcast: wrong or missing X-Roomcast-Secret"), status=403)
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            return JsonResponse(refusal("bad_request", "the body is not JSON"), status=400)
        if not isinstance(body, dict):
            return JsonResponse(refusal("bad_request", "the body is not a JSON object"), status=400)
        return JsonResponse(view(request, body))

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return wrapped


def connection_of(body: dict[str, Any]) -> Connection:
    """The calling connection of a subscribe or rpc body."""
    return Connection(
        conn=str(body.get("conn", "")),
        user=body.get("user"),
        rooms=list(body.get("rooms") or []),
        session=dict(body.get("session") or {}),
        transport=str(body.get("transport", "")),
        namespace=body.get("namespace"),
        room=body.get("room"),
    )


def as_refusal(e: Exception) -> dict[str, Any] | None:
    """The client error an exception of a handler is, or ``None`` for a failure (500)."""
    if isinstance(e, handlers.Refused):
        return refusal(e.code, e.message)
    if isinstance(e, PermissionDenied):
        return refusal("forbidden", str(e) or "permission denied")
    if isinstance(e, ValidationError):
        return refusal("invalid", "; ".join(e.messages))
    if isinstance(e, (Http404, ObjectDoesNotExist)):
        return refusal("not_found", str(e) or "not found")
    return None


@endpoint
def connect(request: HttpRequest, body: dict[str, Any]) -> dict[str, Any]:
    """Who opened this socket: the Django user of its session cookie."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        if not conf.get("ANONYMOUS"):
            return refusal("unauthenticated", "log in first: this connection has no Django session")
        return {"user": None}
    rooms = conf.get("ROOMS")
    answer = {
        "user": conf.user_id(user),
        "rooms": list(rooms(user) if callable(rooms) else rooms),
        "info": conf.user_info(user),
    }
    session = conf.user_session(user)
    if session:
        answer["session"] = session
    return answer


@endpoint
def subscribe(request: HttpRequest, body: dict[str, Any]) -> dict[str, Any]:
    """May the connection join ``room``? The first ``@roomcast.can_join`` hook matching it decides."""
    room = str(body.get("room", ""))
    request.roomcast = connection_of(body)
    hook = handlers.join_hook_for(room)
    if hook is None:
        return refusal("forbidden", f"no join hook matches {room!r}")
    try:
        allowed = hook(request, room)
    except Exception as e:
        answer = as_refusal(e)
        if answer is None:
            raise
        return answer
    return {} if allowed else refusal("forbidden", f"you may not join {room!r}")


@endpoint
def rpc(request: HttpRequest, body: dict[str, Any]) -> dict[str, Any]:
    """A client event: its ``@roomcast.event`` handler's return value is the ack."""
    name = str(body.get("event", ""))
    handler = handlers.handler_for(name)
    if handler is None:
        return refusal("unknown_event", f"no handler for the event {name!r}")
    call = connection_of(body)
    request.roomcast = call
    try:
        result = handler(request, body.get("data"))
    except Exception as e:
        answer = as_refusal(e)
        if answer is None:
            raise
        return answer
    return {"result": result, "actions": call.actions}


def _online_key(user: str) -> str:
    return f"roomcast:online:{user}"


def _user_transition(user: str) -> None:
    """Sends ``user_online``/``user_offline`` when the user's cluster-wide state changed."""
    if not (signals.user_online.has_listeners() or signals.user_offline.has_listeners()):
        return  # nobody asks: no call to roomcast
    try:
        online = client().user(user).online
    except Exception:
        log.warning("roomcast unreachable: no online/offline signal for %r", user, exc_info=True)
        return
    if online:
        if cache.add(_online_key(user), 1, timeout=None):
            signals.user_online.send(sender=None, user=user)
    elif cache.delete(_online_key(user)):
        signals.user_offline.send(sender=None, user=user)


@endpoint
def webhook(request: HttpRequest, body: dict[str, Any]) -> dict[str, Any]:
    """connect, disconnect, join, leave: sent on as signals, once per event id."""
    try:
        e = parse_webhook(body)
    except WebhookError as err:
        return refusal("bad_request", str(err))
    # roomcast retries on timeouts: an event may come twice.
    if not cache.add(f"roomcast:webhook:{e.id}", 1, timeout=3600):
        return {}
    common = {"conn": e.conn, "user": e.user, "node": e.node, "time_ms": e.time_ms}
    if e.type == "connect":
        signals.connected.send(sender=None, **common)
    elif e.type == "disconnect":
        signals.disconnected.send(sender=None, reason=e.reason, **common)
    elif e.type == "join":
        signals.joined.send(sender=None, room=e.room, **common)
    elif e.type == "leave":
        signals.left.send(sender=None, room=e.room, **common)
    if e.user and e.type in ("connect", "disconnect"):
        _user_transition(e.user)
    return {}
