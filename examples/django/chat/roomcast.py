"""The plumbing between Django and roomcast: the backend endpoints (secret check,
JSON in and out, refusals) and calls to roomcast's HTTP API.

roomcast POSTs JSON to the views decorated with ``@roomcast_endpoint``, with
the header ``X-Roomcast-Secret`` and the client's own handshake headers (its
cookies among them), so ``request.user`` is the user of the browser that
opened the socket. The views are exempt from CSRF: the caller is roomcast,
not a browser, and the secret authenticates it instead.
"""

import json
import logging
import urllib.request
from functools import wraps

from django.conf import settings
from django.http import JsonResponse
from django.utils.crypto import constant_time_compare
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

log = logging.getLogger("chat.roomcast")

SECRET_HEADER = "X-Roomcast-Secret"


class Refusal(Exception):
    """A "no" that reaches the client: ``{"error": {"code", "message"}}``.

    roomcast passes the code and message on: a refused connect closes the
    socket with that message, a refused join or event is an error reply.
    """

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message

    def as_json(self):
        return {"error": {"code": self.code, "message": self.message}}


def secret_ok(request):
    expected = settings.ROOMCAST["SECRET"]
    given = request.headers.get(SECRET_HEADER, "")
    return bool(expected) and constant_time_compare(given, expected)


def roomcast_endpoint(view):
    """``view(request, body) -> dict`` becomes a roomcast backend endpoint.

    A wrong or missing secret is 403, a body that is not a JSON object 400;
    a ``Refusal`` raised by the view is answered 200 with its ``error``.
    """

    @csrf_exempt
    @require_POST
    @wraps(view)
    def endpoint(request):
        if not secret_ok(request):
            log.warning("%s: wrong or missing %s", request.path, SECRET_HEADER)
            return JsonResponse(
                {"error": {"code": "forbidden", "message": f"wrong or missing {SECRET_HEADER}"}}, status=403
            )
        try:
            body = json.loads(request.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JsonResponse({"error": {"code": "bad_request", "message": "expected a JSON object"}}, status=400)
        try:
            answer = view(request, body)
        except Refusal as refusal:
            answer = refusal.as_json()
        return JsonResponse(answer)

    return endpoint


def acting_user(request, body):
    """The user a call about a connection acts for, or None.

    roomcast says who the connection is (``body["user"]``, bound at connect);
    the forwarded cookie says whether that Django session is still alive. Both
    must agree, so logging out of Django also stops the socket's events.
    """
    user = request.user
    if user.is_authenticated and body.get("user") == str(user.pk):
        return user
    return None


def call_api(path, payload, timeout=2.0):
    """POSTs `payload` to roomcast's HTTP API (``ROOMCAST["API_URL"]`` + `path`).

    Returns the decoded answer, or None when the API is not configured or the
    call failed (logged): pushes from Django are best effort and never break
    the request that makes them.
    """
    base = settings.ROOMCAST["API_URL"]
    if not base:
        return None
    request = urllib.request.Request(
        base.rstrip("/") + path,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {settings.ROOMCAST['API_KEY']}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")
    except (OSError, ValueError) as e:
        log.warning("roomcast API %s failed: %s", path, e)
        return None
