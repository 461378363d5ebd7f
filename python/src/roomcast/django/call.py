"""``request.roomcast``: the connection an event came from, and the actions
the handler queues for roomcast to run after it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Connection:
    """The calling connection, as roomcast described it, with queued actions.

    ``conn`` its id, ``user`` its roomcast user (``None``: anonymous),
    ``rooms`` the rooms it is in, ``session`` its session data, ``transport``
    ``websocket``, ``socketio`` or ``endpoint``. The action methods queue; roomcast
    runs them in order, as this connection, before the ack reaches the client.
    """

    conn: str
    user: str | None = None
    rooms: list[str] = field(default_factory=list)
    session: dict[str, Any] = field(default_factory=dict)
    transport: str = ""
    namespace: str | None = None
    #: The endpoint's room, for frames of a URL-per-room endpoint in rpc mode.
    room: str | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)

    def join(self, room: str) -> None:
        """This connection joins ``room`` (no room-rule check: the backend is trusted)."""
        self.actions.append({"type": "join", "room": room})

    def leave(self, room: str) -> None:
        """This connection leaves ``room``."""
        self.actions.append({"type": "leave", "room": room})

    def bind(self, user: Any) -> None:
        """This anonymous connection becomes ``user``'s (a user id, or a Django user)."""
        from . import conf

        uid = user if isinstance(user, str) else conf.user_id(user)
        self.actions.append({"type": "bind", "user": uid})
        self.user = uid

    def publish(self, room: str, event: str, data: Any = None, *, exclude_self: bool = False) -> None:
        """Publishes to ``room``'s members, from this connection."""
        action = {"type": "publish", "room": room, "event": event, "data": data}
        if exclude_self:
            action["exclude_self"] = True
        self.actions.append(action)

    def send(self, user: str, event: str, data: Any = None) -> None:
        """Sends to every connection of ``user``."""
        self.actions.append({"type": "send", "user": user, "event": event, "data": data})

    def broadcast(self, event: str, data: Any = None) -> None:
        """Sends to every connection."""
        self.actions.append({"type": "broadcast", "event": event, "data": data})

    def set_session(self, data: dict[str, Any] | None = None, **keys: Any) -> None:
        """Merges keys into this connection's session data (``None`` removes one)."""
        merged = {**(data or {}), **keys}
        self.actions.append({"type": "session", "data": merged})
        for k, v in merged.items():
            if v is None:
                self.session.pop(k, None)
            else:
                self.session[k] = v

    def disconnect(self, code: int | None = None, reason: str | None = None) -> None:
        """Closes this connection (``code`` 4000-4999, default 4500)."""
        action: dict[str, Any] = {"type": "disconnect"}
        if code is not None:
            action["code"] = code
        if reason is not None:
            action["reason"] = reason
        self.actions.append(action)
