from django.urls import include, path

from chat import views

urlpatterns = [
    path("chat/", include("chat.urls")),
    # Log in, so that roomcast's connections carry a Django user.
    path("accounts/", include("django.contrib.auth.urls")),
    # roomcast's connect proxy (proxy.connect_url in roomcast.toml).
    path("roomcast/connect", views.roomcast_connect),
]
