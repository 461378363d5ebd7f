"""The ``ROOMCAST`` setting, one dict, with defaults::

ROOMCAST = {
    "URL": "http://127.0.0.1:8700",  # roomcast's HTTP API, for the client and signals
    "API_KEY": "",                    # api.key of roomcast
    "SECRET": "",                     # proxy.secret: roomcast's calls carry it (required)
    "TOKEN_SECRET": "",               # auth.jwt.secret, for roomcast.make_token
    "USER_ID": None,                  # dotted path: user -> id; default str(user.pk)
    "INFO": None,                     # dotted path: user -> public info dict; default {"name": username}
    "ROOMS": [],                      # rooms every authenticated connection joins on connect
    "ANONYMOUS": True,                # whether visitors who are not logged in may connect
    "BACKEND_URL": "http://127.0.0.1:8000/roomcast/",  # where manage.py roomcast points roomcast
    "SERVER": {},                     # more roomcast.toml settings for manage.py roomcast
}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

DEFAULTS: dict[str, Any] = {
    "URL": "http://127.0.0.1:8700",
    "API_KEY": "",
    "SECRET": "",
    "TOKEN_SECRET": "",
    "USER_ID": None,
    "INFO": None,
    "SESSION": None,
    "ROOMS": [],
    "ANONYMOUS": True,
    "BACKEND_URL": "http://127.0.0.1:8000/roomcast/",
    "SERVER": {},
}


def get(key: str) -> Any:
    """One setting of ``ROOMCAST``, or its default."""
    given = getattr(settings, "ROOMCAST", {})
    if not isinstance(given, dict):
        raise ImproperlyConfigured("ROOMCAST must be a dict")
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise ImproperlyConfigured(f"unknown ROOMCAST keys: {', '.join(sorted(unknown))}")
    return given.get(key, DEFAULTS[key])


def secret() -> str:
    """The shared secret; empty when it is not set (then every call is refused)."""
    return str(get("SECRET") or "")


def _function(key: str, default: Callable[[Any], Any]) -> Callable[[Any], Any]:
    path = get(key)
    if path is None:
        return default
    if callable(path):
        return path
    return import_string(path)


def user_id(user: Any) -> str:
    """The roomcast user id of a Django user."""
    return str(_function("USER_ID", lambda u: u.pk)(user))


def user_info(user: Any) -> Any:
    """The public ``info`` of a Django user's connections."""
    return _function("INFO", lambda u: {"name": u.get_username()})(user)


def user_session(user: Any) -> Any:
    """The session data a Django user's connections start with (``None``: none)."""
    return _function("SESSION", lambda u: None)(user)
