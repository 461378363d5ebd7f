"""roomcast for Python: the API client, tokens, webhook checks, and socket
handlers as decorated functions (run by :mod:`roomcast.django`).

``pip install roomcast`` also installs the ``roomcast`` server executable.
"""

from __future__ import annotations

from .client import AsyncClient, Client
from .errors import (
    BadRequestError,
    NotFoundError,
    RoomcastError,
    ServerError,
    Timeout,
    TransportError,
    UnauthorizedError,
)
from .handlers import Refused, can_join, event, on
from .server import executable
from .tokens import make_token
from .types import (
    Bound,
    ConnectionInfo,
    Delivered,
    Health,
    HistoryPage,
    Presence,
    Publication,
    RoomSummary,
    Stats,
    UserCount,
    UsersPage,
    UserStatus,
)
from .webhooks import WebhookEvent, parse_webhook, verify_request, verify_secret

__all__ = [
    "AsyncClient",
    "BadRequestError",
    "Bound",
    "Client",
    "ConnectionInfo",
    "Delivered",
    "Health",
    "HistoryPage",
    "NotFoundError",
    "Presence",
    "Publication",
    "Refused",
    "RoomSummary",
    "RoomcastError",
    "ServerError",
    "Stats",
    "Timeout",
    "TransportError",
    "UnauthorizedError",
    "UserCount",
    "UserStatus",
    "UsersPage",
    "WebhookEvent",
    "can_join",
    "event",
    "executable",
    "make_token",
    "on",
    "parse_webhook",
    "verify_request",
    "verify_secret",
]
