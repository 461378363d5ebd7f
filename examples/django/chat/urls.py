from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("online/<str:username>", views.online, name="online"),
    # connect, subscribe, rpc and webhook: the endpoints roomcast calls.
    path("roomcast/", include("roomcast.django.urls")),
]
