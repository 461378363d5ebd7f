from django.conf import settings
from django.http import JsonResponse
from django.shortcuts import render
from django.utils.crypto import constant_time_compare
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST


def index(request):
    return render(request, "chat/index.html")


def room(request, room_name):
    return render(request, "chat/room.html", {"room_name": room_name})


@csrf_exempt  # called by roomcast, not by a browser: the secret stands in for CSRF
@require_POST
def roomcast_connect(request):
    """roomcast's connect proxy (``proxy.connect_url``): who opened this WebSocket?

    roomcast forwards the handshake's cookies, so Django's own session and
    authentication middleware make ``request.user`` the page's user, as
    ``AuthMiddlewareStack`` did for the tutorial's consumer. A visitor who is
    not logged in is anonymous (``auth.anonymous = "allow"`` in roomcast.toml).
    """
    given = request.headers.get("X-Roomcast-Secret", "")
    if not constant_time_compare(given, settings.ROOMCAST_SECRET):
        return JsonResponse({"error": {"code": "forbidden", "message": "not roomcast"}}, status=403)
    user = request.user
    if not user.is_authenticated:
        return JsonResponse({"user": None})
    return JsonResponse({"user": user.get_username(), "info": {"name": user.get_username()}})
