"""Signals sent from roomcast's webhooks (``POST <prefix>/webhook``).

Each is sent with ``sender=None`` and keyword arguments; the connection
signals all carry ``conn``, ``user`` (``None`` for anonymous), ``node`` and
``time_ms`` (when roomcast saw it):

- ``connected``; again with the user when an anonymous connection is bound later.
- ``disconnected``: also ``reason``.
- ``joined`` / ``left``: also ``room``.
- ``user_online``: ``user``, when the user's first connection anywhere in the cluster opened.
- ``user_offline``: ``user``, when its last one closed.

``user_online`` and ``user_offline`` are decided against roomcast's own
presence (``GET /api/users/{user}``) when each webhook arrives, and each
transition is sent once (the cache remembers who is online).
"""

from __future__ import annotations

from django.dispatch import Signal

connected = Signal()
disconnected = Signal()
joined = Signal()
left = Signal()
user_online = Signal()
user_offline = Signal()
