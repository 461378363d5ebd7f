"""Who is online, kept from roomcast's webhooks by the package's signals."""

from django.dispatch import receiver

from roomcast.django import signals

from .models import Player


@receiver(signals.user_online)
def came_online(sender, user, **kwargs):
    Player.objects.filter(login=user).update(online=True)


@receiver(signals.user_offline)
def went_offline(sender, user, **kwargs):
    Player.objects.filter(login=user).update(online=False, conn="")
