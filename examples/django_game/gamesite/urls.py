from django.urls import include, path

from game import views

urlpatterns = [
    path("", views.index),
    path("roomcast/", include("roomcast.django.urls")),
]
