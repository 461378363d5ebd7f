"""Logging out of Django also closes that user's sockets."""

from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver

from .roomcast import call_api


@receiver(user_logged_out)
def disconnect_sockets(sender, request, user, **kwargs):
    if user is not None:
        call_api("/disconnect", {"user": str(user.pk), "code": 4500, "reason": "logged out"})
