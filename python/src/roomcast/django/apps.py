from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class RoomcastConfig(AppConfig):
    """``INSTALLED_APPS = [..., "roomcast.django"]``: imports each app's ``sockets`` module,
    where its ``@roomcast.event`` handlers and ``@roomcast.can_join`` hooks live."""

    name = "roomcast.django"
    label = "roomcast"
    verbose_name = "roomcast"

    def ready(self) -> None:
        autodiscover_modules("sockets")
