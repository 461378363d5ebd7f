"""One exception hierarchy for everything the package raises about roomcast."""

from __future__ import annotations


class RoomcastError(Exception):
    """Base of every roomcast error.

    ``status`` is the HTTP status (``None`` when no answer came), ``code`` the
    error code of roomcast's table (docs/http-api.md), ``message`` its text.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    def __str__(self) -> str:
        if self.code:
            return f"{self.code}: {self.message}"
        return self.message


class TransportError(RoomcastError):
    """roomcast could not be reached, or the connection broke."""


class Timeout(TransportError):
    """No answer within the client's timeout."""


class UnauthorizedError(RoomcastError):
    """401/403: a missing or wrong API key, or a key whose scope does not cover the call."""


class NotFoundError(RoomcastError):
    """404: no such connection, no history for the room, or no such endpoint."""


class BadRequestError(RoomcastError):
    """400/409/422: the request was refused; ``field`` names the field at fault, when one is."""

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.field = field


class ServerError(RoomcastError):
    """5xx: roomcast, or the Redis behind it, failed; a retry may work."""


def from_answer(status: int, body: object) -> RoomcastError:
    """The exception for an HTTP error answer of roomcast's API."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {}

    def text(key: str) -> str | None:
        value = error.get(key)
        return value if isinstance(value, str) else None

    code, field = text("code"), text("field")
    message = text("message") or f"HTTP {status}"
    if status in (401, 403):
        return UnauthorizedError(message, status=status, code=code)
    if status == 404:
        return NotFoundError(message, status=status, code=code)
    if 400 <= status < 500:
        return BadRequestError(message, status=status, code=code, field=field)
    return ServerError(message, status=status, code=code)
