"""Checking that a call comes from roomcast, and reading its webhooks
(docs/security.md#webhooks).

roomcast sends ``proxy.secret`` as the ``X-Roomcast-Secret`` header on every
call to the backend: the connect, subscribe and event proxies and the
webhooks alike.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SECRET_HEADER = "X-Roomcast-Secret"


def verify_secret(given: str | None, secret: str) -> bool:
    """Whether ``given`` (the header's value) is ``secret``, compared in constant time."""
    if not secret or given is None:
        return False
    return hmac.compare_digest(given.encode(), secret.encode())


def verify_request(headers: Mapping[str, str], secret: str) -> bool:
    """Whether a request's headers carry roomcast's secret (any header-name case)."""
    for name, value in headers.items():
        if name.lower() == SECRET_HEADER.lower():
            return verify_secret(value, secret)
    return False


@dataclass(frozen=True)
class WebhookEvent:
    """One webhook: ``connect``, ``disconnect``, ``join`` or ``leave``; ``id`` de-duplicates retries."""

    id: str
    type: str
    conn: str
    node: str
    time_ms: int
    user: str | None = None
    room: str | None = None
    reason: str | None = None


class WebhookError(ValueError):
    """A webhook body that is not one roomcast sends."""


def parse_webhook(body: bytes | str | Mapping[str, Any]) -> WebhookEvent:
    """Reads a webhook body (bytes, text or an already parsed object)."""
    if isinstance(body, (bytes, str)):
        try:
            data = json.loads(body)
        except ValueError as e:
            raise WebhookError(f"not JSON: {e}") from None
    else:
        data = dict(body)
    if not isinstance(data, dict):
        raise WebhookError("not a JSON object")
    try:
        return WebhookEvent(
            id=str(data["id"]),
            type=str(data["type"]),
            conn=str(data["conn"]),
            node=str(data.get("node", "")),
            time_ms=int(data.get("time_ms", 0)),
            user=data.get("user"),
            room=data.get("room"),
            reason=data.get("reason"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise WebhookError(f"missing or bad field: {e}") from None
