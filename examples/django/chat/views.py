"""The chat page and the online-state view. The endpoints roomcast calls
are the roomcast package's (``roomcast.django.urls``); the socket handlers
are in sockets.py and the webhook receivers in signals.py."""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from .models import Connection
from .rooms import rooms_for


@login_required
def index(request):
    return render(
        request,
        "chat/index.html",
        {
            "client_config": {
                "url": settings.CHAT["PUBLIC_URL"],
                "rooms": rooms_for(request.user),
                "username": request.user.username,
            }
        },
    )


@require_GET
def online(request, username):
    """Whether `username` has a live roomcast connection, from the webhooks' rows."""
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        return JsonResponse({"error": {"code": "not_found", "message": f"no user {username!r}"}}, status=404)
    connections = list(Connection.objects.of(user).order_by("connected_at", "conn"))
    return JsonResponse(
        {
            "username": user.username,
            "online": bool(connections),
            "sids": [c.conn for c in connections],
            "connections": [
                {"conn": c.conn, "node": c.node, "rooms": c.rooms, "connected_at": c.connected_at.isoformat()}
                for c in connections
            ],
        }
    )
