"""Every 2 s, publishes the online players (login and picture) to the lobby."""

import time

from django.core.management.base import BaseCommand

from game.models import Player
from roomcast.django import client


class Command(BaseCommand):
    help = "Pushes the online players to everyone in the lobby every 2 seconds."

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=2.0)
        parser.add_argument("--once", action="store_true", help="push once and exit")

    def handle(self, *args, interval, once, **options):
        while True:
            players = [{"login": p.login, "picture": p.picture} for p in Player.objects.filter(online=True).order_by("login")]
            delivered = client().publish("lobby", "online", players).delivered
            self.stdout.write(f"pushed {len(players)} players to {delivered} connections")
            if once:
                return
            time.sleep(interval)
