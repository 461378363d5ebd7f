"""Socket handlers and room permission hooks, registered with decorators.

Framework-neutral: :mod:`roomcast.django` calls them from its views::

    @roomcast.event("chat.send")
    def chat_send(request, data):
        ...                      # request.user, request.roomcast
        return {"ok": True}      # the client's ack

    @roomcast.can_join("chat:*")
    def may_chat(request, room):
        return request.user.is_authenticated
"""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any, TypeVar

Handler = Callable[[Any, Any], Any]
JoinHook = Callable[[Any, str], Any]
H = TypeVar("H", bound=Handler)
J = TypeVar("J", bound=JoinHook)

_events: dict[str, Handler] = {}
_join_hooks: list[tuple[str, JoinHook]] = []


class Refused(Exception):
    """A "no" that reaches the client as an error with this code and message.

    Raised from an event handler: the client's ack is ``{"error": {"code", "message"}}``
    (Socket.IO) or an ``error`` frame (native). From a join hook: the join is refused.
    """

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(message or code)
        self.code = code
        self.message = message or code


def event(name: str) -> Callable[[H], H]:
    """Registers ``handler(request, data)`` for the client event ``name``; its return value is the ack."""
    if not name:
        raise ValueError("an event needs a name")

    def register(handler: H) -> H:
        if name in _events and _events[name] is not handler:
            raise ValueError(f"two handlers for the event {name!r}")
        _events[name] = handler
        return handler

    return register


#: Another name for :func:`event`.
on = event


def can_join(pattern: str) -> Callable[[J], J]:
    """Registers ``hook(request, room) -> bool`` for rooms matching ``pattern`` (``*`` and ``?`` wildcards).

    roomcast asks for rooms whose rule says ``join = "proxy"``. The first hook
    whose pattern matches decides: falsy (or :class:`Refused`) refuses. A room
    no hook matches is refused.
    """

    def register(hook: J) -> J:
        _join_hooks.append((pattern, hook))
        return hook

    return register


def handler_for(name: str) -> Handler | None:
    """The handler registered for ``name``."""
    return _events.get(name)


def join_hook_for(room: str) -> JoinHook | None:
    """The first join hook whose pattern matches ``room``."""
    for pattern, hook in _join_hooks:
        if fnmatchcase(room, pattern):
            return hook
    return None


def registered_events() -> list[str]:
    """The names of every registered event, sorted."""
    return sorted(_events)
