"""Settings of the roomcast chat example.

Everything that differs between a laptop and a deployment comes from the
environment, with development defaults:

    DJANGO_SECRET_KEY      signs sessions and CSRF tokens (default: a dev-only key)
    DJANGO_DEBUG           "1" for debug pages (default: "1")
    DJANGO_ALLOWED_HOSTS   comma-separated (default: "127.0.0.1,localhost")
    DJANGO_DB              path of the SQLite file (default: db.sqlite3 next to manage.py)
    ROOMCAST_PROXY_SECRET  the secret roomcast sends as X-Roomcast-Secret; the same
                           variable configures roomcast's proxy.secret (default: "s3cret")
    ROOMCAST_PUBLIC_URL    where browsers reach roomcast (default: http://127.0.0.1:8700)
    ROOMCAST_URL           roomcast as Django reaches it (its HTTP API), to disconnect a
                           user's sockets when they log out (default: http://127.0.0.1:8700)
    ROOMCAST_API_KEY       its key; the same variable configures roomcast's api.key
                           (default: "dev-api-key", as in roomcast.toml)
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name, default):
    return os.environ.get(name, default)


SECRET_KEY = env("DJANGO_SECRET_KEY", "dev-only-not-secret-1b4f0e9c7a5d")
DEBUG = env("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = [h.strip() for h in env("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "roomcast.django",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatsite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "chatsite.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": env("DJANGO_DB", str(BASE_DIR / "db.sqlite3")),
        "OPTIONS": {
            # roomcast calls the backend concurrently (connects, events and
            # webhooks): let writers queue instead of failing with "database is locked".
            "transaction_mode": "IMMEDIATE",
            "timeout": 10,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        },
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "index"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The roomcast side (see README.md and roomcast.toml).
ROOMCAST = {
    # roomcast's HTTP API, for pushes from ordinary Django code (chat.signals).
    "URL": env("ROOMCAST_URL", "http://127.0.0.1:8700"),
    "API_KEY": env("ROOMCAST_API_KEY", "dev-api-key"),
    # Checked on every call to /roomcast/*: only roomcast knows it.
    "SECRET": env("ROOMCAST_PROXY_SECRET", "s3cret"),
    # Rooms every connection joins when it connects.
    "ROOMS": ["chat:lobby"],
    # Only logged-in users may connect.
    "ANONYMOUS": False,
    "INFO": "chat.sockets.public_info",
    "SESSION": "chat.sockets.public_info",
}

CHAT = {
    # For the chat page's socket.io-client.
    "PUBLIC_URL": env("ROOMCAST_PUBLIC_URL", "http://127.0.0.1:8700"),
    # How many messages chat.history returns at most.
    "HISTORY_LIMIT": 100,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "chat": {"handlers": ["console"], "level": env("CHAT_LOG_LEVEL", "INFO")},
        "roomcast.django": {"handlers": ["console"], "level": "WARNING"},
    },
}
