from django.db import models


class Player(models.Model):
    """A player who logged in with the `login` event; online while roomcast says so."""

    login = models.CharField(max_length=64, unique=True)
    picture = models.CharField(max_length=200, blank=True)
    conn = models.CharField(max_length=32, blank=True)
    online = models.BooleanField(default=False)


class Shout(models.Model):
    """A message to the lobby, published once its transaction commits."""

    player = models.ForeignKey(Player, on_delete=models.CASCADE)
    text = models.CharField(max_length=500)
