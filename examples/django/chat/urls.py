from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("online/<str:username>", views.online, name="online"),
    path("roomcast/connect", views.connect, name="roomcast-connect"),
    path("roomcast/subscribe", views.subscribe, name="roomcast-subscribe"),
    path("roomcast/rpc", views.rpc, name="roomcast-rpc"),
    path("roomcast/webhook", views.webhook, name="roomcast-webhook"),
]
