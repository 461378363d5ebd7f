"""Settings of the channels_chat example: the Django Channels tutorial's
project, whose WebSockets roomcast serves (see docs/channels.md).

Environment: ROOMCAST_CHANNELS_URL (the layer's Redis, default
redis://127.0.0.1:6379/0), CHANNELS_LAYER (core or pubsub), CHANNELS_PREFIX
(default asgi), CHAT_DB (the SQLite file), ROOMCAST_PROXY_SECRET (the secret
roomcast sends to the connect proxy; roomcast reads the same variable).
"""
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "channels-chat-example-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "daphne",
    "channels",
    "chat",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

ROOT_URLCONF = "mysite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
ASGI_APPLICATION = "mysite.asgi.application"
WSGI_APPLICATION = None

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("CHAT_DB", str(BASE_DIR / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"
LOGIN_REDIRECT_URL = "/chat/"

# roomcast calls chat.views.roomcast_connect (proxy.connect_url in
# roomcast.toml) with this secret in X-Roomcast-Secret.
ROOMCAST_SECRET = os.environ.get("ROOMCAST_PROXY_SECRET", "channels-chat-example-secret")
USE_TZ = True

_layer = os.environ.get("CHANNELS_LAYER", "core")
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": {
            "core": "channels_redis.core.RedisChannelLayer",
            "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
        }[_layer],
        "CONFIG": {
            "hosts": [os.environ.get("ROOMCAST_CHANNELS_URL", "redis://127.0.0.1:6379/0")],
            "prefix": os.environ.get("CHANNELS_PREFIX", "asgi"),
        },
    }
}
if _layer == "core":
    # One roomcast node is one layer "process" holding every room of its
    # members: let its queue take a burst (channels_redis counts per process key).
    CHANNEL_LAYERS["default"]["CONFIG"]["channel_capacity"] = {"specific.roomcast-*": 10000}
