"""roomcast's Django app: roomcast's connect, subscribe and event proxies and
its webhooks as views, socket handlers as plain decorated Django functions,
signals, and publishing after a commit. See docs/python.md.
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from ..client import Client
from . import conf


def client() -> Client:
    """A client of ``ROOMCAST["URL"]`` with ``ROOMCAST["API_KEY"]``, made once per process."""
    global _client
    if _client is None:
        _client = Client(conf.get("URL"), conf.get("API_KEY") or None)
    return _client


_client: Client | None = None


def publish_on_commit(room: str, event: str, data: Any = None, *, using: str | None = None) -> None:
    """Publishes once the current transaction commits; a rollback publishes nothing.

    Outside a transaction it publishes at once. The publish carries an
    idempotency key, so the client's retries never deliver it twice.
    """
    from django.db import transaction

    key = uuid4().hex
    transaction.on_commit(lambda: client().publish(room, event, data, idempotency_key=key), using=using)


def send_on_commit(user: str, event: str, data: Any = None, *, using: str | None = None) -> None:
    """Sends to every connection of ``user`` once the current transaction commits."""
    from django.db import transaction

    key = uuid4().hex
    transaction.on_commit(lambda: client().send(event, data, user=user, idempotency_key=key), using=using)
