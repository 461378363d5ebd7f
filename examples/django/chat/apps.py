from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat (roomcast)"

    def ready(self):
        from . import signals  # noqa: F401  (connects the receivers)
