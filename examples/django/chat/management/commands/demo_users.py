"""``manage.py demo_users``: the example's users, alice and bob, and carol (staff)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

DEMO_USERS = (("alice", False), ("bob", False), ("carol", True))


class Command(BaseCommand):
    help = "Creates (or resets the passwords of) the demo users alice, bob and carol (staff)."

    def add_arguments(self, parser):
        parser.add_argument("--password", default="roomcast-demo", help="their password (default: roomcast-demo)")

    def handle(self, *args, password, **options):
        User = get_user_model()
        for username, staff in DEMO_USERS:
            user, created = User.objects.get_or_create(username=username)
            user.is_staff = staff
            user.set_password(password)
            user.save()
            what = "created" if created else "updated"
            self.stdout.write(f"{what} {username}{' (staff)' if staff else ''}")
