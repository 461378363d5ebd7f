"""``path("roomcast/", include("roomcast.django.urls"))``: the endpoints roomcast calls."""

from django.urls import path

from . import views

app_name = "roomcast"

urlpatterns = [
    path("connect", views.connect, name="connect"),
    path("subscribe", views.subscribe, name="subscribe"),
    path("rpc", views.rpc, name="rpc"),
    path("webhook", views.webhook, name="webhook"),
]
