from django.apps import AppConfig


class GameConfig(AppConfig):
    name = "game"

    def ready(self):
        from . import signals  # noqa: F401  (connects the receivers)
