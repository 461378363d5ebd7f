"""Minimal production-style settings for the Channels benchmark peer."""

SECRET_KEY = "benchmark-peer-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = ["channels"]
ROOT_URLCONF = "benchsite.urls"
ASGI_APPLICATION = "benchsite.asgi.application"
DATABASES = {}
USE_TZ = True

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels.layers.InMemoryChannelLayer",
        # Per-channel queue size; the default of 100 silently drops group
        # messages to a consumer that falls more than 100 messages behind.
        "CONFIG": {"capacity": 100_000},
    },
}
