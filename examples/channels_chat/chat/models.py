from django.db import models


class Message(models.Model):
    """A chat line, saved by the channel-mode worker."""

    room = models.CharField(max_length=100)
    user = models.CharField(max_length=150, blank=True)
    text = models.TextField()
    created = models.DateTimeField(auto_now_add=True)
