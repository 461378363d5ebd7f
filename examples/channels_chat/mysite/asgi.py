"""The tutorial's ASGI application, plus the worker channel roomcast's
channel-mode endpoint sends to (`manage.py runworker chat.inbound`).

With roomcast serving `/ws/`, daphne needs none of this; it stays for
consumers that still run on daphne during a migration (the mixed room of
docs/channels.md) and for the worker.
"""
import os

from channels.auth import AuthMiddlewareStack
from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
django_asgi_app = get_asgi_application()

from chat import consumers, routing  # noqa: E402  (after Django is set up)

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AuthMiddlewareStack(URLRouter(routing.websocket_urlpatterns)),
        "channel": ChannelNameRouter({"chat.inbound": consumers.InboundWorker.as_asgi()}),
    }
)
