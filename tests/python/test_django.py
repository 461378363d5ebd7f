"""End-to-end tests of examples/django: a real Django (runserver, SQLite) behind
a real roomcast in proxy mode, with python-socketio and native WebSocket
(websocket-client) clients logged in through Django's own login form.

    cargo build -p roomcast-cli
    pip install -r tests/python/requirements.txt
    ROOMCAST_BIN=$PWD/target/debug/roomcast python -m pytest -q tests/python/test_django.py

The module migrates a fresh SQLite file, creates the demo users (alice, bob,
carol who is staff) with ``manage.py demo_users``, starts roomcast on a free
port with examples/django/roomcast.toml (its Django URLs, secret and API key
rewritten for this run), then ``manage.py runserver --noreload`` on a free
port. Clients send the ``sessionid`` cookie Django set at login with their
handshake; roomcast forwards it to Django on every call about the connection.

Every wait is bounded (STEP); events, acks and frames are awaited, and the
one eventually-consistent state (Django's online rows, kept by webhooks) is
polled against a deadline. A negative ("X does not receive Y") is proven by
a later message to the same client: roomcast queues to each client in order.
"""

import os
import re
import secrets
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
import socketio

import inbox
from clients import NativeSocket, shutdown_sio
from procs import Process, free_port

#: Bound for one expected event, ack, frame, HTTP answer or state change (seconds).
STEP = 10.0
#: Bound for a process to start: print its line, answer HTTP (seconds).
START = 30.0

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "examples" / "django"
PASSWORD = "e2e-" + secrets.token_hex(8)


def token(tag):
    return f"{tag}-{uuid.uuid4().hex[:8]}"


def wait_until(check, what, timeout=STEP, interval=0.05):
    """Polls `check()` until it returns something truthy; bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {value!r}")
        time.sleep(interval)  # poll interval, bounded by the deadline


# ---------------------------------------------------------------------------
# Processes


def base_env():
    """This environment without roomcast settings: the config file decides."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}


def manage(env, *args):
    out = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=SITE,
        env=env,
        capture_output=True,
        text=True,
        timeout=START * 2,
    )
    assert out.returncode == 0, f"manage.py {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out.stdout


def roomcast_config(django_url, secret, api_key):
    """examples/django/roomcast.toml, pointed at this run's Django, secret and API key."""
    text = (SITE / "roomcast.toml").read_text()
    for old, new in (
        ("http://127.0.0.1:8000/", f"{django_url}/"),
        ('secret = "s3cret"', f'secret = "{secret}"'),
        ('key = "dev-api-key"', f'key = "{api_key}"'),
    ):
        assert old in text, f"examples/django/roomcast.toml no longer has {old!r}"
        text = text.replace(old, new)
    return text


def start_roomcast(config_path):
    binary = os.environ.get("ROOMCAST_BIN")
    if not binary:
        pytest.fail(
            "ROOMCAST_BIN is not set: build with `cargo build -p roomcast-cli` and run\n"
            "  ROOMCAST_BIN=$PWD/target/debug/roomcast python -m pytest tests/python/test_django.py",
            pytrace=False,
        )
    proc = Process(
        "roomcast",
        [binary, "serve", "--config", str(config_path), "--listen", "127.0.0.1:0"],
        {**base_env(), "NO_COLOR": "1", "RUST_LOG": "info"},
    )
    try:
        proc.url = proc.wait_for_line(r"roomcast listening on (http://127\.0\.0\.1:\d+)", START).group(1)
    except AssertionError as e:
        proc.stop()
        pytest.fail(f"{e}:\n{proc.tail()}", pytrace=False)
    return proc


def start_django(env, port):
    proc = Process(
        "django",
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        env,
        cwd=SITE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START
    while proc.proc.poll() is None:
        try:
            if requests.get(f"{url}/accounts/login/", timeout=1).status_code == 200:
                proc.url = url
                return proc
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            proc.stop()
            pytest.fail(f"Django did not answer on {url} within {START} s:\n{proc.tail()}", pytrace=False)
        time.sleep(0.05)  # poll interval, bounded by the deadline
    pytest.fail(f"Django exited ({proc.proc.returncode}) before answering:\n{proc.tail()}", pytrace=False)


class Site:
    """The running pair: Django (``django``) and roomcast (``roomcast``) and the shared settings."""

    def __init__(self, django, roomcast, db, secret):
        self.django = django
        self.roomcast = roomcast
        self.db = db
        self.secret = secret
        self.url = roomcast.url

    def logs(self):
        return f"--- roomcast ---\n{self.roomcast.tail()}\n--- django ---\n{self.django.tail()}"

    def sql(self, query, *args):
        with sqlite3.connect(self.db, timeout=STEP) as db:
            rows = db.execute(query, args).fetchall()
        db.close()
        return rows

    def online(self, username):
        r = requests.get(f"{self.django.url}/online/{username}", timeout=STEP)
        r.raise_for_status()
        return r.json()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("django")
    db = tmp / "db.sqlite3"
    secret = secrets.token_hex(16)
    api_key = secrets.token_hex(16)
    django_port = free_port()
    started = []
    try:
        config = tmp / "roomcast.toml"
        config.write_text(roomcast_config(f"http://127.0.0.1:{django_port}", secret, api_key))
        rc = start_roomcast(config)
        started.append(rc)
        env = {
            **base_env(),
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "chatsite.settings",
            "DJANGO_DB": str(db),
            "DJANGO_DEBUG": "0",
            "ROOMCAST_PROXY_SECRET": secret,
            "ROOMCAST_URL": rc.url,
            # The roomcast package, from the repository.
            "PYTHONPATH": str(ROOT / "python" / "src"),
            "ROOMCAST_API_KEY": api_key,
            "ROOMCAST_PUBLIC_URL": rc.url,
        }
        manage(env, "migrate", "--noinput")
        manage(env, "demo_users", "--password", PASSWORD)
        dj = start_django(env, django_port)
        started.append(dj)
        yield Site(dj, rc, db, secret)
    finally:
        for p in reversed(started):
            p.stop()


@pytest.fixture(autouse=True)
def server_logs(site):
    """Prints both servers' recent output after each test (pytest shows it when the test fails)."""
    yield
    print(site.logs())


# ---------------------------------------------------------------------------
# Logging in through Django


class Login:
    """A requests session logged in through Django's login form (with the CSRF dance)."""

    def __init__(self, site, username, password=PASSWORD):
        self.site = site
        self.username = username
        self.http = requests.Session()
        url = f"{site.django.url}/accounts/login/"
        page = self.http.get(url, timeout=STEP)
        page.raise_for_status()
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        r = self.http.post(
            url,
            data={"username": username, "password": password, "csrfmiddlewaretoken": csrf},
            allow_redirects=False,
            timeout=STEP,
        )
        assert r.status_code == 302, f"login of {username} failed: HTTP {r.status_code}"
        self.session_key = self.http.cookies["sessionid"]
        self.user_id = str(site.sql("SELECT id FROM auth_user WHERE username = ?", username)[0][0])

    @property
    def cookie(self):
        """The Cookie header a browser would send with the WebSocket handshake."""
        return "; ".join(f"{c.name}={c.value}" for c in self.http.cookies)

    def logout(self):
        r = self.http.post(
            f"{self.site.django.url}/accounts/logout/",
            headers={"X-CSRFToken": self.http.cookies["csrftoken"]},
            allow_redirects=False,
            timeout=STEP,
        )
        assert r.status_code == 302, f"logout of {self.username} failed: HTTP {r.status_code}"


# ---------------------------------------------------------------------------
# Clients


class Inbox(inbox.Inbox):
    def __init__(self, name):
        super().__init__(name, STEP)


class SioClient:
    """A python-socketio client sending the login's cookie with its handshake."""

    def __init__(self, site, cookie=None, transports=("websocket",), name="sio"):
        self.name = name
        self.inbox = Inbox(f"python-socketio client {name}")
        self.errors = Inbox(f"python-socketio client {name} connect errors")
        self.disconnects = Inbox(f"python-socketio client {name} disconnects")
        self.sio = socketio.Client(reconnection=False)
        self.sio.on("*", lambda event, *args: self.inbox.push((event, args)))
        self.sio.on("connect_error", lambda data=None: self.errors.push(data))
        self.sio.on("disconnect", lambda reason=None: self.disconnects.push(reason))
        self.headers = {"Cookie": cookie} if cookie else {}
        self.transports = list(transports)
        self.site = site

    def connect(self):
        self.sio.connect(self.site.url, headers=self.headers, transports=self.transports, wait_timeout=STEP)
        self.id = self.sio.get_sid("/")
        return self

    def call(self, event, data):
        return self.sio.call(event, data, timeout=STEP)

    def receive(self, event, pred=lambda data: True, what=""):
        return self.inbox.wait_for(
            lambda m: m[0] == event and len(m[1]) == 1 and pred(m[1][0]), f"event {event} {what}"
        )[1][0]

    def received(self, event):
        return [args[0] for e, args in self.inbox.snapshot() if e == event]

    def close(self):
        shutdown_sio(self.sio, STEP)


class NativeClient(NativeSocket):
    """A native WebSocket client sending the login's cookie."""

    def __init__(self, site, cookie=None, name="native"):
        super().__init__(site.url, name, STEP, [f"Cookie: {cookie}"] if cookie else [])

    def welcome(self):
        return self.inbox.wait_for(lambda f: f["type"] == "welcome", "welcome")

    def rpc(self, event, data):
        return self.send({"type": "rpc", "event": event, "data": data})

    def message(self, room, event, pred=lambda data: True, what=""):
        return self.inbox.wait_for(
            lambda f: f["type"] == "message" and f.get("room") == room and f["event"] == event and pred(f["data"]),
            f"message {event} in {room} {what}",
        )

    def messages(self, event):
        return [f for f in self.inbox.snapshot() if f["type"] == "message" and f["event"] == event]


@pytest.fixture
def clients(site):
    """Makes clients (``clients.sio(login)``, ``clients.native(login)``); closes them after the test."""
    made = []

    class Clients:
        @staticmethod
        def sio(login=None, **kw):
            c = SioClient(site, login.cookie if login else None, name=login.username if login else "anonymous", **kw)
            made.append(c)
            return c.connect()

        @staticmethod
        def native(login=None, cookie=None):
            name = login.username if login else "anonymous"
            c = NativeClient(site, login.cookie if login else cookie, name=name)
            made.append(c)
            return c

    try:
        yield Clients()
    finally:
        for c in made:
            c.close()


@pytest.fixture
def alice(site):
    return Login(site, "alice")


@pytest.fixture
def bob(site):
    return Login(site, "bob")


@pytest.fixture
def carol(site):
    return Login(site, "carol")


def is_text(text):
    return lambda data: isinstance(data, dict) and data.get("text") == text


# ---------------------------------------------------------------------------
# The endpoints are roomcast's only


@pytest.mark.parametrize("endpoint", ["connect", "subscribe", "rpc", "webhook"])
def test_django_endpoints_refuse_a_wrong_or_missing_secret(site, alice, endpoint):
    url = f"{site.django.url}/roomcast/{endpoint}"
    body = {"conn": "0000000000000001", "event": "chat.history", "data": {"room": "chat:lobby"}}
    for headers in ({}, {"X-Roomcast-Secret": "wrong"}, {"X-Roomcast-Secret": site.secret + "x"}):
        # Even with a logged-in user's cookies: only roomcast may call these.
        r = alice.http.post(url, json=body, headers=headers, timeout=STEP)
        assert r.status_code == 403, (headers, r.status_code, r.text)
    r = requests.post(url, json=body, headers={"X-Roomcast-Secret": site.secret}, timeout=STEP)
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------------------
# Connecting with Django's session


def test_logged_in_users_connect_as_their_django_user(site, clients, alice):
    native = clients.native(alice)
    welcome = native.welcome()
    assert welcome["user"] == alice.user_id, welcome
    sio = clients.sio(alice)
    assert sio.sio.connected
    # Both joined the connect answer's room: the presence lists alice once, with her info.
    presence = native.send({"type": "presence", "room": "chat:lobby"})
    users = {u["user"]: u for u in presence["users"]}
    assert users[alice.user_id]["connections"] >= 2, presence
    assert users[alice.user_id].get("info") == {"username": "alice"}, presence


def test_anonymous_connections_get_djangos_refusal(site, clients):
    message = "log in first: this connection has no Django session"

    native = clients.native()
    frame = native.inbox.wait_for(lambda f: f["type"] == "disconnect", "disconnect frame")
    assert frame["code"] == 4502 and frame["reason"] == message and frame["reconnect"] is False, frame
    assert native.close_code() == (4502, message)

    sio = SioClient(site, name="anonymous")
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            sio.connect()
    finally:
        sio.close()
    error = sio.errors.wait_for(lambda e: True, "connect_error")
    assert error["message"] == message, error
    assert error.get("data", {}).get("code") == "auth_failed", error

    # A session cookie Django does not know is refused the same way.
    forged = clients.native(cookie="sessionid=" + "x" * 32)
    assert forged.close_code() == (4502, message)


# ---------------------------------------------------------------------------
# Events handled by Django


def test_chat_send_is_saved_and_delivered_to_the_room(site, clients, alice, bob):
    sender = clients.sio(alice)
    native = clients.native(bob)
    native.welcome()
    other_sio = clients.sio(bob)

    text = token("hello from alice")
    ack = sender.call("chat.send", {"room": "chat:lobby", "text": text})
    assert set(ack) == {"id"} and isinstance(ack["id"], int), ack

    # Saved by Django's ORM in its database, as alice.
    rows = site.sql(
        "SELECT m.room, m.text, u.username FROM chat_message m JOIN auth_user u ON u.id = m.user_id WHERE m.id = ?",
        ack["id"],
    )
    assert rows == [("chat:lobby", text, "alice")]

    # Published by roomcast to the room: Socket.IO and native members alike, the sender too.
    expected = {"id": ack["id"], "room": "chat:lobby", "user": "alice", "text": text}
    frame = native.message("chat:lobby", "message", is_text(text))
    assert {k: frame["data"][k] for k in expected} == expected, frame
    # Django's actions run as the calling connection.
    assert frame["from"] == {"conn": sender.id, "user": alice.user_id}, frame
    for c in (other_sio, sender):
        data = c.receive("message", is_text(text))
        assert {k: data[k] for k in expected} == expected, data

    # The other way round: bob's native event, acked with the id, reaches alice.
    reply = native.rpc("chat.send", {"room": "chat:lobby", "text": text + " back"})
    assert reply["type"] == "ack" and isinstance(reply["result"]["id"], int), reply
    data = sender.receive("message", is_text(text + " back"))
    assert data["user"] == "bob" and data["id"] == reply["result"]["id"], data


def test_chat_send_over_long_polling(site, clients, alice, bob):
    """The cookie of a polling handshake reaches Django too."""
    native = clients.native(bob)
    native.welcome()
    sio = clients.sio(alice, transports=["polling"])
    assert sio.sio.transport() == "polling"
    text = token("polled")
    ack = sio.call("chat.send", {"room": "chat:lobby", "text": text})
    assert "id" in ack, ack
    assert native.message("chat:lobby", "message", is_text(text))["data"]["user"] == "alice"


def test_chat_history_returns_what_was_sent(site, clients, alice):
    sio = clients.sio(alice)
    assert sio.call("room.join", {"room": "chat:random"}) == {"room": "chat:random", "joined": True}
    texts = [token(f"history {i}") for i in range(3)]
    ids = [sio.call("chat.send", {"room": "chat:random", "text": t})["id"] for t in texts]
    history = sio.call("chat.history", {"room": "chat:random", "limit": 3})
    assert history["room"] == "chat:random", history
    got = [(m["id"], m["text"], m["user"]) for m in history["messages"]]
    assert got == [(i, t, "alice") for i, t in zip(ids, texts)], history

    native = clients.native(alice)
    native.welcome()
    reply = native.rpc("chat.history", {"room": "chat:random", "limit": 1})
    assert reply["type"] == "ack" and [m["id"] for m in reply["result"]["messages"]] == ids[-1:], reply


def test_djangos_refusals_reach_the_client_as_errors(site, clients, alice):
    sio = clients.sio(alice)
    native = clients.native(alice)
    native.welcome()

    cases = [
        ("chat.send", {"room": "chat:lobby", "text": "   "}, "invalid"),
        ("chat.send", {"room": "chat:random", "text": "not joined"}, "not_a_member"),
        ("chat.send", {"room": "lobby", "text": "hi"}, "invalid_room"),
        ("chat.nope", {}, "unknown_event"),
    ]
    for event, data, code in cases:
        ack = sio.call(event, data)
        assert set(ack) == {"error"} and ack["error"]["code"] == code and ack["error"]["message"], (event, ack)
        reply = native.rpc(event, data)
        assert reply["type"] == "error" and reply["code"] == code, (event, reply)
        assert reply["message"] == ack["error"]["message"], (reply, ack)
    # An event emitted without an ack gets its error as a roomcast:error event.
    sio.sio.emit("chat.send", {"room": "chat:lobby", "text": ""})
    _, (error,) = sio.inbox.wait_for(lambda m: m[0] == "roomcast:error", "roomcast:error")
    assert error == {"event": "chat.send", "error": {"code": "invalid", "message": "text must be a non-empty string"}}
    assert site.sql("SELECT count(*) FROM chat_message WHERE text IN ('', '   ', 'not joined', 'hi')") == [(0,)]


def test_an_ended_django_session_stops_events(site, clients, alice):
    """The forwarded cookie is checked on every event: a session that ended refuses them."""
    native = clients.native(alice)
    native.welcome()
    assert native.rpc("chat.history", {"room": "chat:lobby"})["type"] == "ack"
    # The session expires (or is cleared) on Django's side; the socket stays open.
    site.sql("DELETE FROM django_session WHERE session_key = ?", alice.session_key)
    reply = native.rpc("chat.send", {"room": "chat:lobby", "text": "after the session ended"})
    assert reply["type"] == "error" and reply["code"] == "unauthenticated", reply


def test_logging_out_of_django_closes_the_users_sockets(site, clients, alice, bob):
    sio = clients.sio(alice)
    native = clients.native(alice)
    native.welcome()
    bystander = clients.native(bob)
    bystander.welcome()

    alice.logout()
    frame = native.inbox.wait_for(lambda f: f["type"] == "disconnect", "disconnect frame")
    assert frame["code"] == 4500 and frame["reason"] == "logged out", frame
    assert native.close_code()[0] == 4500
    assert sio.disconnects.wait_for(lambda r: True, "disconnect") == sio.sio.reason.SERVER_DISCONNECT
    # Only alice's sockets: bob's goes on.
    assert bystander.rpc("chat.history", {"room": "chat:lobby", "limit": 1})["type"] == "ack"
    assert bystander.closed.empty()


# ---------------------------------------------------------------------------
# Rooms Django decides


def test_the_staff_room_is_for_staff_only(site, clients, bob, carol):
    # A native join of a `join = "proxy"` room asks Django's subscribe endpoint.
    native_bob = clients.native(bob)
    native_bob.welcome()
    reply = native_bob.send({"type": "join", "room": "chat:staff"})
    assert reply["type"] == "error" and reply["code"] == "forbidden", reply
    assert reply["message"] == "chat:staff is for staff only", reply
    assert native_bob.send({"type": "join", "room": "chat:random"})["type"] == "ack"

    # Through the event proxy: room.join answers with a join action only when allowed.
    sio_bob = clients.sio(bob)
    ack = sio_bob.call("room.join", {"room": "chat:staff"})
    assert ack == {"error": {"code": "forbidden", "message": "chat:staff is for staff only"}}, ack
    ack = sio_bob.call("chat.send", {"room": "chat:staff", "text": "let me in"})
    assert ack["error"]["code"] == "forbidden", ack

    native_carol = clients.native(carol)
    native_carol.welcome()
    assert native_carol.send({"type": "join", "room": "chat:staff"}) == {
        "type": "ack",
        "id": 1,
        "room": "chat:staff",
        "joined": True,
    }
    sio_carol = clients.sio(carol)
    assert sio_carol.call("room.join", {"room": "chat:staff"}) == {"room": "chat:staff", "joined": True}

    secret = token("staff only")
    assert "id" in sio_carol.call("chat.send", {"room": "chat:staff", "text": secret})
    native_carol.message("chat:staff", "message", is_text(secret))
    # bob gets the next lobby message but never the staff one before it.
    fence = token("fence")
    assert "id" in sio_carol.call("chat.send", {"room": "chat:lobby", "text": fence})
    sio_bob.receive("message", is_text(fence))
    native_bob.message("chat:lobby", "message", is_text(fence))
    assert [d for d in sio_bob.received("message") if d["room"] == "chat:staff"] == []
    assert [f for f in native_bob.messages("message") if f["room"] == "chat:staff"] == []

    # Clients publish nowhere directly: chat rooms say `publish = "none"`.
    reply = native_carol.send({"type": "publish", "room": "chat:staff", "event": "message", "data": {}})
    assert reply["type"] == "error" and reply["code"] == "forbidden", reply


# ---------------------------------------------------------------------------
# Webhooks: Django's online state


def test_webhooks_keep_djangos_online_state(site, clients, bob):
    sio = clients.sio(bob)
    native = clients.native(bob)
    conn = native.welcome()["conn"]

    def rooms():
        """bob's connections and their rooms, as Django knows them."""
        return {c["conn"]: c["rooms"] for c in site.online("bob")["connections"]}

    # connect, then join of the connect answer's room, for each connection.
    wait_until(
        lambda: (r := rooms()).get(conn) == ["chat:lobby"] and r.get(sio.id) == ["chat:lobby"] and r,
        "both of bob's connections, in chat:lobby, in /online/bob",
    )
    assert site.online("bob")["online"] is True

    # Joins and leaves, from the client and from Django's own actions, are posted too.
    assert native.send({"type": "join", "room": "chat:random"})["type"] == "ack"
    assert sio.call("room.leave", {"room": "chat:lobby"}) == {"room": "chat:lobby", "left": True}
    wait_until(
        lambda: (r := rooms()).get(conn) == ["chat:lobby", "chat:random"] and r.get(sio.id) == [] and r,
        "the join and the leave in /online/bob",
    )

    # One connection gone: still online; both gone: offline.
    sio.close()
    wait_until(lambda: sio.id not in (r := rooms()) and conn in r and r, "the Socket.IO connection gone")
    assert site.online("bob")["online"] is True
    native.close()
    wait_until(lambda: not site.online("bob")["online"], "bob offline")
    assert site.sql("SELECT count(*) FROM chat_connection WHERE conn IN (?, ?)", sio.id, conn) == [(0,)]


# ---------------------------------------------------------------------------
# Django's own tests of the example


def test_the_examples_own_django_tests_pass(tmp_path):
    out = subprocess.run(
        [sys.executable, "manage.py", "test", "chat", "-v", "1"],
        cwd=SITE,
        env={
            **base_env(),
            "DJANGO_SETTINGS_MODULE": "chatsite.settings",
            "DJANGO_DB": str(tmp_path / "db.sqlite3"),
            "PYTHONPATH": str(ROOT / "python" / "src"),
        },
        capture_output=True,
        text=True,
        timeout=START * 4,
    )
    assert out.returncode == 0, f"manage.py test chat failed:\n{out.stdout}\n{out.stderr}"
