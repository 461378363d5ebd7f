"""Connection tokens for ``roomcast serve --auth token`` (docs/security.md#token-mode).

Claims: ``sub`` (the user id, required), ``exp`` (expiry), ``nbf``, ``iss`` and
``aud`` (checked when roomcast's ``auth.jwt.issuer`` / ``audience`` are set),
``rooms`` (joined on connect, and granted for ``join = "claim"`` rules) and
``info`` (public data about the connection, shown in presence).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import jwt

#: The algorithms roomcast accepts (``auth.jwt.algorithm``).
ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "ES256")


def make_token(
    user: str,
    *,
    secret: str | bytes | None = None,
    private_key: str | bytes | None = None,
    algorithm: str = "HS256",
    rooms: Iterable[str] | None = None,
    info: Any = None,
    expires_in: float | None = 3600,
    issuer: str | None = None,
    audience: str | None = None,
    key_id: str | None = None,
    claims: dict[str, Any] | None = None,
) -> str:
    """A signed token for ``user``: HMAC with ``secret`` or RS256/ES256 with ``private_key`` (PEM).

    ``expires_in`` seconds from now (``None``: no expiry; roomcast then keeps
    the connection as long as it lasts). ``claims`` adds more claims.
    """
    if not isinstance(user, str) or not user:
        raise ValueError("user must be a non-empty string")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}")
    hmac = algorithm.startswith("HS")
    key = secret if hmac else private_key
    if key is None or (secret is not None and private_key is not None):
        raise ValueError(f"{algorithm} needs {'secret' if hmac else 'private_key'} (and only it)")
    now = int(time.time())
    payload: dict[str, Any] = {"sub": user, "iat": now}
    if expires_in is not None:
        payload["exp"] = now + int(expires_in)
    if rooms is not None:
        payload["rooms"] = list(rooms)
    if info is not None:
        payload["info"] = info
    if issuer is not None:
        payload["iss"] = issuer
    if audience is not None:
        payload["aud"] = audience
    payload.update(claims or {})
    headers = {"kid": key_id} if key_id else None
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)
