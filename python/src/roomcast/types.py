"""Typed results of the API client: one dataclass per answer of roomcast's HTTP API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Delivered:
    """A publish, send or broadcast: connections reached on the answering node."""

    delivered: int
    #: True when this was a repeat of an idempotent request: nothing was delivered again.
    replayed: bool = False


@dataclass(frozen=True)
class UserCount:
    """A user and how many of its connections (in a room, or anywhere)."""

    user: str
    connections: int
    info: Any = None


@dataclass(frozen=True)
class Presence:
    """Who is in a room, cluster-wide."""

    room: str
    connections: int
    users: list[UserCount]
    anonymous: int


@dataclass(frozen=True)
class RoomSummary:
    """A room with members."""

    room: str
    connections: int
    users: int


@dataclass(frozen=True)
class UsersPage:
    """One page of online users; pass ``next_cursor`` for the next one."""

    users: list[UserCount]
    next_cursor: str | None


@dataclass(frozen=True)
class UserStatus:
    """Where a user is connected."""

    user: str
    online: bool
    connections: list[str]


@dataclass(frozen=True)
class ConnectionInfo:
    """One connection, as ``GET /api/connections/{conn}`` shows it."""

    conn: str
    online: bool
    user: str | None = None
    node: str | None = None
    rooms: list[str] = field(default_factory=list)
    session: dict[str, Any] | None = None
    info: Any = None
    channel: str | None = None


@dataclass(frozen=True)
class Publication:
    """A publication kept in a room's history."""

    room: str | None
    event: str
    data: Any
    offset: int | None
    epoch: str | None
    sender: dict[str, Any] | None = None


@dataclass(frozen=True)
class HistoryPage:
    """What a room's history holds after a position."""

    room: str
    epoch: str | None
    offset: int
    complete: bool
    publications: list[Publication]


@dataclass(frozen=True)
class Bound:
    """A bind: ``bound`` is False when the connection was the user's already."""

    conn: str
    user: str
    bound: bool


@dataclass(frozen=True)
class Stats:
    """Cluster totals, this node, and every live node."""

    connections: int
    users: int
    rooms: int
    node: dict[str, Any]
    nodes: list[dict[str, Any]]


@dataclass(frozen=True)
class Health:
    """``/healthz``: ``ok``, ``degraded`` (with a reason) or ``shutting_down``."""

    status: str
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"
