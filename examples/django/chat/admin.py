from django.contrib import admin

from .models import Connection, Message


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "room", "user", "created", "text")
    list_filter = ("room",)


@admin.register(Connection)
class ConnectionAdmin(admin.ModelAdmin):
    list_display = ("conn", "user", "node", "rooms", "connected_at")
