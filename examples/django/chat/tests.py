"""The roomcast endpoints (the roomcast package's views running this app's
handlers and receivers) through Django's test client (``manage.py test chat``).

These post what roomcast posts; tests/python/test_django.py runs the same
views behind a real roomcast.
"""

import json
from unittest import mock

from django.contrib.auth import get_user_model
from django.test import TestCase, override_settings

from .models import Connection, Message, is_online, sids

SECRET = "test-secret"
ROOMCAST = {
    "SECRET": SECRET,
    "URL": "http://roomcast.invalid",
    "ROOMS": ["chat:lobby"],
    "ANONYMOUS": False,
    "INFO": "chat.sockets.public_info",
    "SESSION": "chat.sockets.public_info",
}


@override_settings(ROOMCAST=ROOMCAST)
class RoomcastEndpointTests(TestCase):
    @classmethod
    def setUpTestData(cls):
        User = get_user_model()
        cls.alice = User.objects.create_user("alice", password="pw-alice-1")
        cls.carol = User.objects.create_user("carol", password="pw-carol-1", is_staff=True)

    def post(self, path, body, secret=SECRET):
        headers = {"HTTP_X_ROOMCAST_SECRET": secret} if secret is not None else {}
        return self.client.post(path, json.dumps(body), content_type="application/json", **headers)

    def call(self, path, body):
        r = self.post(path, body)
        self.assertEqual(r.status_code, 200, r.content)
        return r.json()

    def rpc(self, user, event, data, rooms=("chat:lobby",)):
        return self.call(
            "/roomcast/rpc",
            {
                "event": event,
                "data": data,
                "conn": "02a3f40000000001",
                "user": str(user.pk) if user else None,
                "session": {},
                "rooms": list(rooms),
                "transport": "socketio",
                "namespace": "/",
            },
        )

    # -- the secret ---------------------------------------------------------

    def test_every_endpoint_needs_the_secret(self):
        for path in ("/roomcast/connect", "/roomcast/subscribe", "/roomcast/rpc", "/roomcast/webhook"):
            for secret in (None, "", "wrong", SECRET + "x"):
                with self.subTest(path=path, secret=secret), self.assertLogs("roomcast.django", "WARNING"):
                    self.assertEqual(self.post(path, {}, secret=secret).status_code, 403)

    def test_no_configured_secret_refuses_everything(self):
        with self.settings(ROOMCAST={**ROOMCAST, "SECRET": ""}), self.assertLogs("roomcast.django", "WARNING"):
            self.assertEqual(self.post("/roomcast/connect", {}, secret="").status_code, 403)

    def test_a_body_that_is_not_an_object_is_400(self):
        r = self.client.post("/roomcast/rpc", "[1]", content_type="application/json", HTTP_X_ROOMCAST_SECRET=SECRET)
        self.assertEqual(r.status_code, 400)

    def test_get_is_not_allowed(self):
        self.assertEqual(self.client.get("/roomcast/connect", HTTP_X_ROOMCAST_SECRET=SECRET).status_code, 405)

    # -- connect ------------------------------------------------------------

    def test_connect_with_a_session_names_the_user(self):
        self.client.force_login(self.alice)
        answer = self.call("/roomcast/connect", {"conn": "c1", "transport": "websocket", "data": None})
        self.assertEqual(answer["user"], str(self.alice.pk))
        self.assertEqual(answer["rooms"], ["chat:lobby"])
        self.assertEqual(answer["session"], {"username": "alice"})

    def test_connect_without_a_session_is_refused(self):
        answer = self.call("/roomcast/connect", {"conn": "c1", "transport": "websocket", "data": None})
        self.assertEqual(answer["error"]["code"], "unauthenticated")

    # -- subscribe ----------------------------------------------------------

    def subscribe(self, user, room):
        if user:
            self.client.force_login(user)
        body = {"room": room, "conn": "c1", "user": str(user.pk) if user else None, "session": {}}
        return self.call("/roomcast/subscribe", {**body, "transport": "websocket", "namespace": None})

    def test_subscribe_staff_room_only_for_staff(self):
        self.assertEqual(self.subscribe(self.alice, "chat:random"), {})
        self.assertEqual(self.subscribe(self.alice, "chat:staff")["error"]["code"], "forbidden")
        self.assertEqual(self.subscribe(self.carol, "chat:staff"), {})

    def test_subscribe_refuses_other_names_and_anonymous(self):
        self.assertEqual(self.subscribe(self.alice, "chat:Bad Name")["error"]["code"], "invalid_room")
        self.client.logout()
        self.assertEqual(self.subscribe(None, "chat:lobby")["error"]["code"], "unauthenticated")

    def test_subscribe_needs_the_session_of_the_connection_user(self):
        self.client.force_login(self.carol)
        body = {"room": "chat:lobby", "conn": "c1", "user": str(self.alice.pk), "session": {}}
        self.assertEqual(self.call("/roomcast/subscribe", body)["error"]["code"], "unauthenticated")

    # -- events -------------------------------------------------------------

    def test_chat_send_saves_and_publishes(self):
        self.client.force_login(self.alice)
        with self.assertLogs("chat", "INFO"):
            answer = self.rpc(self.alice, "chat.send", {"room": "chat:lobby", "text": "hello"})
        message = Message.objects.get()
        self.assertEqual((message.room, message.user, message.text), ("chat:lobby", self.alice, "hello"))
        self.assertEqual(answer["result"], {"id": message.id})
        self.assertEqual(
            answer["actions"],
            [{"type": "publish", "room": "chat:lobby", "event": "message", "data": message.as_json()}],
        )

    def test_chat_send_refusals(self):
        self.client.force_login(self.alice)
        cases = [
            ({"room": "chat:lobby", "text": "  "}, "invalid"),
            ({"room": "chat:lobby", "text": "x" * 2001}, "invalid"),
            ({"room": "lobby", "text": "hi"}, "invalid_room"),
            ({"room": "chat:random", "text": "hi"}, "not_a_member"),
            ({"room": "chat:staff", "text": "hi"}, "forbidden"),
        ]
        for data, code in cases:
            with self.subTest(data=data):
                self.assertEqual(self.rpc(self.alice, "chat.send", data)["error"]["code"], code)
        self.assertEqual(self.rpc(self.alice, "chat.send", "hi")["error"]["code"], "invalid")
        self.assertFalse(Message.objects.exists())

    def test_events_need_a_live_session(self):
        answer = self.rpc(self.alice, "chat.send", {"room": "chat:lobby", "text": "hi"})
        self.assertEqual(answer["error"]["code"], "unauthenticated")

    def test_unknown_event(self):
        self.client.force_login(self.alice)
        self.assertEqual(self.rpc(self.alice, "chat.nope", {})["error"]["code"], "unknown_event")

    def test_history_returns_the_last_messages_oldest_first(self):
        self.client.force_login(self.alice)
        for i in range(5):
            Message.objects.create(room="chat:lobby", user=self.alice, text=f"m{i}")
        Message.objects.create(room="chat:random", user=self.alice, text="elsewhere")
        result = self.rpc(self.alice, "chat.history", {"room": "chat:lobby", "limit": 3})["result"]
        self.assertEqual([m["text"] for m in result["messages"]], ["m2", "m3", "m4"])
        answer = self.rpc(self.alice, "chat.history", {"room": "chat:lobby", "limit": 0})
        self.assertEqual(answer["error"]["code"], "invalid")

    def test_room_join_is_a_join_action_when_allowed(self):
        self.client.force_login(self.alice)
        answer = self.rpc(self.alice, "room.join", {"room": "chat:random"})
        self.assertEqual(answer["result"], {"room": "chat:random", "joined": True})
        self.assertEqual(answer["actions"], [{"type": "join", "room": "chat:random"}])
        self.assertEqual(self.rpc(self.alice, "room.join", {"room": "chat:staff"})["error"]["code"], "forbidden")
        self.client.force_login(self.carol)
        answer = self.rpc(self.carol, "room.join", {"room": "chat:staff"})
        self.assertEqual(answer["actions"], [{"type": "join", "room": "chat:staff"}])

    def test_room_leave(self):
        self.client.force_login(self.alice)
        answer = self.rpc(self.alice, "room.leave", {"room": "chat:lobby"})
        self.assertEqual(answer["result"], {"room": "chat:lobby", "left": True})
        self.assertEqual(answer["actions"], [{"type": "leave", "room": "chat:lobby"}])

    # -- webhooks -----------------------------------------------------------

    def hook(self, n, kind, conn, user=None, **extra):
        body = {"id": f"n1-{n}", "type": kind, "time_ms": 1700000000000 + n, "node": "n1", "conn": conn, "user": user}
        self.assertEqual(self.call("/roomcast/webhook", {**body, **extra}), {})

    def online(self, username):
        r = self.client.get(f"/online/{username}")
        self.assertEqual(r.status_code, 200)
        return r.json()

    def test_webhooks_keep_the_online_state(self):
        uid = str(self.alice.pk)
        self.assertFalse(self.online("alice")["online"])
        self.hook(1, "connect", "c1", uid)
        self.hook(1, "connect", "c1", uid)  # a retried delivery changes nothing
        self.hook(2, "join", "c1", uid, room="chat:lobby")
        self.hook(3, "connect", "c2", uid)
        state = self.online("alice")
        self.assertEqual((state["online"], state["sids"]), (True, ["c1", "c2"]))
        self.assertEqual(state["connections"][0]["rooms"], ["chat:lobby"])
        self.assertEqual((is_online(self.alice), sids(self.alice)), (True, ["c1", "c2"]))

        self.hook(4, "leave", "c1", uid, room="chat:lobby")
        self.assertEqual(Connection.objects.get(conn="c1").rooms, [])
        self.hook(5, "disconnect", "c1", uid, reason="client closed")
        self.hook(6, "disconnect", "c2", uid, reason="client closed")
        self.hook(6, "disconnect", "c2", uid, reason="client closed")
        self.assertEqual(self.online("alice"), {"username": "alice", "online": False, "sids": [], "connections": []})

    def test_online_of_an_unknown_user_is_404(self):
        self.assertEqual(self.client.get("/online/nobody").status_code, 404)

    # -- logout -------------------------------------------------------------

    def test_logout_disconnects_the_users_sockets(self):
        self.client.force_login(self.alice)
        with mock.patch("chat.signals.client") as client:
            self.client.post("/accounts/logout/")
        client.return_value.disconnect.assert_called_once_with(user=str(self.alice.pk), code=4500, reason="logged out")
