from django.conf import settings
from django.db import models


class Message(models.Model):
    """A chat message, saved by the ``chat.send`` event before roomcast publishes it."""

    room = models.CharField(max_length=200)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_messages")
    text = models.TextField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["room", "-id"], name="chat_message_room_recent")]

    def __str__(self):
        return f"{self.room} {self.user}: {self.text[:40]}"

    def as_json(self):
        return {
            "id": self.id,
            "room": self.room,
            "user": self.user.username,
            "text": self.text,
            "created": self.created.isoformat(),
        }


class ConnectionQuerySet(models.QuerySet):
    def of(self, user):
        return self.filter(user=user)


class Connection(models.Model):
    """One live roomcast connection, kept up to date by roomcast's webhooks.

    A row is created by the ``connect`` webhook and deleted by ``disconnect``;
    ``join`` and ``leave`` keep ``rooms``. A user is online while they have a
    row (a browser tab, a phone, ...): see ``is_online`` and ``sids``.
    """

    conn = models.CharField(max_length=32, primary_key=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="roomcast_connections"
    )
    node = models.CharField(max_length=64, blank=True)
    rooms = models.JSONField(default=list, blank=True)
    connected_at = models.DateTimeField()

    objects = ConnectionQuerySet.as_manager()

    def __str__(self):
        return f"{self.conn} ({self.user or 'anonymous'})"


def sids(user):
    """The roomcast connection ids of `user`, oldest first."""
    return list(Connection.objects.of(user).order_by("connected_at", "conn").values_list("conn", flat=True))


def is_online(user):
    return Connection.objects.of(user).exists()
