"""Django's own record of who is online, from roomcast's webhooks (the
package's signals), and logging out of Django closing that user's sockets.

Each receiver is idempotent (an upsert, a delete, a set insert or removal);
the package also drops webhooks roomcast retried.
"""

import logging
from datetime import datetime, timezone

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.dispatch import receiver
from roomcast import RoomcastError
from roomcast.django import client, signals

from .models import Connection


@receiver(signals.connected)
def connected(sender, conn, user, node, time_ms, **kwargs):
    # The connect answer's "user" is a primary key, or None.
    who = get_user_model().objects.filter(pk=user).first() if user and user.isdigit() else None
    at = datetime.fromtimestamp(time_ms / 1000, tz=timezone.utc)
    Connection.objects.update_or_create(
        conn=conn,
        defaults={"user": who, "node": node},
        create_defaults={"user": who, "node": node, "connected_at": at},
    )


@receiver(signals.disconnected)
def disconnected(sender, conn, **kwargs):
    Connection.objects.filter(conn=conn).delete()


@receiver(signals.joined)
@receiver(signals.left)
def membership(sender, signal, conn, room, **kwargs):
    with transaction.atomic():
        c = Connection.objects.select_for_update().filter(conn=conn).first()
        if c is not None:
            rooms = [r for r in c.rooms if r != room]
            if signal is signals.joined:
                rooms.append(room)
            if rooms != c.rooms:
                c.rooms = rooms
                c.save(update_fields=["rooms"])


@receiver(user_logged_out)
def disconnect_sockets(sender, request, user, **kwargs):
    if user is not None:
        try:
            client().disconnect(user=str(user.pk), code=4500, reason="logged out")
        except RoomcastError as e:
            # Best effort: a logout never fails because roomcast is away.
            logging.getLogger("chat").warning("could not disconnect %s's sockets: %s", user, e)
