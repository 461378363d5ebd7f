"""A seed-style game lobby on roomcast, with the roomcast package's Django app.

Environment: GAME_DB (the SQLite file), ROOMCAST_URL, ROOMCAST_API_KEY,
ROOMCAST_PROXY_SECRET, BACKEND_URL (where roomcast reaches this Django),
REDIS_URL (optional: roomcast's broker, with python-socketio's emitter channel).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-game-example-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "roomcast.django",
    "game",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "gamesite.urls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("GAME_DB", str(BASE_DIR / "db.sqlite3")),
        # Socket handlers and webhooks write from several threads at once. In
        # SQLite's default (deferred) transactions a read that then writes
        # fails at once with "database is locked" when another write is under
        # way (login's update_or_create beside a webhook's update); IMMEDIATE
        # transactions wait for the lock instead, up to `timeout` seconds.
        "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

_redis = os.environ.get("REDIS_URL", "")
ROOMCAST = {
    "URL": os.environ.get("ROOMCAST_URL", "http://127.0.0.1:8700"),
    "API_KEY": os.environ.get("ROOMCAST_API_KEY", "dev-api-key"),
    "SECRET": os.environ.get("ROOMCAST_PROXY_SECRET", "dev-shared-secret"),
    "BACKEND_URL": os.environ.get("BACKEND_URL", "http://127.0.0.1:8000/roomcast/"),
    # Players log in with a `login` event after connecting: no Django session needed.
    "ANONYMOUS": True,
    # More roomcast settings for `manage.py roomcast`.
    "SERVER": {
        "socketio": {"builtin_events": False},
        "client": {"send": False, "broadcast": False},
        **({"broker": {"url": _redis, "emitters": "python-socketio"}} if _redis else {}),
        "rooms": [
            {"pattern": "game:*", "join": "proxy"},
            {"pattern": "*", "join": "none", "publish": "none"},
        ],
    },
}
