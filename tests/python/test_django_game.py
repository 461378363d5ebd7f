"""examples/django_game end to end: the seed-style lobby on the roomcast
package's Django app. Django (runserver, SQLite) behind roomcast started with
``manage.py roomcast``, a private redis-server as roomcast's broker, and
python-socketio clients as the page's socket.io-client would be.

    cargo build -p roomcast-cli
    ROOMCAST_BIN=$PWD/target/debug/roomcast python -m pytest -q tests/python/test_django_game.py

Handlers are plain decorated Django functions (game/sockets.py); who is
online comes from the package's signals. Every wait is bounded; the one
eventually-consistent state (rows kept by webhooks) is polled with a deadline.
"""

import os
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import requests
import socketio

import inbox
from clients import shutdown_sio
from procs import Process, free_port, poll
from test_emitters import child_env, start_redis

STEP = 10.0
START = 30.0
ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "examples" / "django_game"
SECRET = "game-test-" + uuid.uuid4().hex
KEY = "game-key-" + uuid.uuid4().hex


def wait_until(check, what, timeout=STEP):
    return poll(what, check, timeout)


class Site:
    def __init__(self, redis_proc, django, rc, env, db):
        self.redis, self.django, self.rc, self.env, self.db = redis_proc, django, rc, env, db

    def manage(self, *args):
        out = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=SITE, env=self.env, capture_output=True, text=True, timeout=START
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    def rows(self, sql, *params):
        with sqlite3.connect(self.db) as c:
            return c.execute(sql, params).fetchall()

    def logs(self):
        return "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in (self.django, self.rc))


@pytest.fixture(scope="module")
def site():
    if not os.environ.get("ROOMCAST_BIN"):
        pytest.fail("ROOMCAST_BIN is not set: cargo build -p roomcast-cli", pytrace=False)
    started = []
    db = str(Path(tempfile.mkdtemp(prefix="roomcast-game-")) / "game.sqlite3")
    try:
        redis_proc = start_redis()
        started.append(redis_proc)
        dport, rport = free_port(), free_port()
        env = child_env(
            {
                "ROOMCAST_BIN": os.environ["ROOMCAST_BIN"],
                "PYTHONPATH": os.pathsep.join([str(ROOT / "python" / "src"), str(SITE)]),
                "DJANGO_SETTINGS_MODULE": "gamesite.settings",
                "GAME_DB": db,
                "ROOMCAST_URL": f"http://127.0.0.1:{rport}",
                "ROOMCAST_API_KEY": KEY,
                "ROOMCAST_PROXY_SECRET": SECRET,
                "BACKEND_URL": f"http://127.0.0.1:{dport}/roomcast/",
                "REDIS_URL": redis_proc.url,
                "RUST_LOG": "info",
            }
        )
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=SITE, env=env, check=True, timeout=START)
        django = Process("runserver", [sys.executable, "manage.py", "runserver", f"127.0.0.1:{dport}", "--noreload"], env, cwd=SITE)
        started.append(django)
        django.url = f"http://127.0.0.1:{dport}"
        wait_until(lambda: _answers(django.url), "Django to answer", START)
        rc = Process("manage.py roomcast", [sys.executable, "manage.py", "roomcast"], env, cwd=SITE)
        started.append(rc)
        rc.url = rc.wait_for_line(r"roomcast listening on (http://127\.0\.0\.1:\d+)", START).group(1)
        wait_until(lambda: "roomcast_redis_connected 1" in requests.get(rc.url + "/metrics", timeout=STEP).text, "the broker", START)
        s = Site(redis_proc, django, rc, env, db)
        yield s
        print(s.logs())
    finally:
        for p in reversed(started):
            p.stop()


def _answers(url):
    try:
        return requests.get(url + "/", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


class Player:
    """A python-socketio client, as the page's socket.io-client: websocket transport, events in an inbox."""

    def __init__(self, url, name):
        self.name = name
        self.inbox = inbox.Inbox(name, STEP)
        self.sio = socketio.Client(reconnection=False)
        self.disconnected = inbox.Inbox(f"{name} disconnect", STEP)
        self.sio.on("*", lambda event, *args: self.inbox.push((event, args[0] if len(args) == 1 else args)))
        self.sio.on("disconnect", lambda *a: self.disconnected.push(a))
        self.sio.connect(url, transports=["websocket"], wait_timeout=STEP)

    def call(self, event, data=None):
        return self.sio.call(event, data, timeout=STEP)

    def got(self, event, match=lambda d: True):
        return self.inbox.wait_for(lambda e: e[0] == event and match(e[1]), f"{event} for {self.name}")[1]

    def events(self, event):
        return [d for e, d in self.inbox.snapshot() if e == event]

    def close(self):
        shutdown_sio(self.sio, STEP)


@pytest.fixture
def players(site):
    made = []

    def make(name):
        p = Player(site.rc.url, name)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def api(site, method, path, **kw):
    r = requests.request(method, site.rc.url + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=STEP, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def test_login_binds_the_socket_and_the_orm_records_it(site, players):
    alice = players("alice")
    ack = alice.call("login", {"login": "alice", "picture": "/a.png"})
    assert ack == {"ok": True, "login": "alice"}, site.logs()
    conn = site.rows("select conn from game_player where login = 'alice'")[0][0]
    assert api(site, "GET", f"/api/connections/{conn}")["user"] == "alice"
    assert [u["user"] for u in api(site, "GET", "/api/users")["users"]] == ["alice"]
    # user_online came through the webhook and the package's signal.
    wait_until(lambda: site.rows("select online from game_player where login = 'alice'") == [(1,)], "alice online")
    # Bad input and a second login are refused with their codes, as acks.
    assert alice.call("login", {"login": ""})["error"]["code"] == "invalid"
    assert alice.call("login", {"login": "mallory"})["error"]["code"] == "already_logged_in"
    assert alice.call("nope", {})["error"]["code"] == "unknown_event"


def test_online_list_is_pushed_and_the_seed_sender_still_reaches_pages(site, players):
    bob = players("bob")
    bob.call("login", {"login": "bob", "picture": "/b.png"})
    wait_until(lambda: site.rows("select online from game_player where login = 'bob'") == [(1,)], "bob online")
    out = site.manage("push_online", "--once")
    assert "players to" in out
    online = bob.got("online")
    assert {"login": "bob", "picture": "/b.png"} in online
    tag = uuid.uuid4().hex
    subprocess.run([sys.executable, "sender.py", tag], cwd=SITE, env=site.env, check=True, timeout=START)
    assert bob.got("ping", lambda d: d == {"text": tag}) == {"text": tag}


def test_publish_on_commit_publishes_only_what_commits(site, players):
    carol = players("carol")
    assert carol.call("login", {"login": "carol"}) == {"ok": True, "login": "carol"}, site.logs()
    assert carol.call("shout", {"text": "rolled back", "undo": True}) == {"saved": False}
    assert carol.call("shout", {"text": "kept"})["saved"] is True
    assert carol.got("shout")["text"] == "kept"
    assert [d["text"] for d in carol.events("shout")] == ["kept"]
    assert site.rows("select text from game_shout") == [("kept",)]


def test_the_classic_python_socketio_events_as_django_handlers(site, players):
    dave, erin = players("dave"), players("erin")
    for p in (dave, erin):
        p.call("login", {"login": p.name})
    assert dave.call("my_event", {"data": "hi"}) == {"data": "hi"}
    assert dave.call("my_broadcast_event", {"data": "to all"}) == {"ok": True}
    for p in (dave, erin):
        assert p.got("my_response", lambda d: d == {"data": "to all"})
    assert dave.call("join", {"room": "r1"}) == {"data": "In rooms: lobby, r1"}
    erin.call("join", {"room": "r1"})
    dave.call("my_room_event", {"room": "r1", "data": "in r1"})
    assert erin.got("my_response", lambda d: d == {"data": "in r1"})
    assert dave.call("leave", {"room": "r1"}) == {"data": "In rooms: lobby"}
    erin.call("close_room", {"room": "r1"})
    assert erin.got("my_response", lambda d: d == {"data": "Room r1 is closing."})
    assert api(site, "GET", "/api/presence/r1")["connections"] == 0
    dave.sio.emit("disconnect_request", {})
    dave.disconnected.wait_for(lambda a: True, "dave disconnected")
    wait_until(lambda: site.rows("select online from game_player where login = 'dave'") == [(0,)], "dave offline")


def test_the_proxies_refuse_calls_without_the_secret(site):
    for path in ("connect", "subscribe", "rpc", "webhook"):
        r = requests.post(f"{site.django.url}/roomcast/{path}", json={}, timeout=STEP)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"]["code"] == "forbidden"
    r = requests.post(
        f"{site.django.url}/roomcast/subscribe",
        json={"room": "game:1", "conn": "c", "user": None},
        headers={"X-Roomcast-Secret": SECRET},
        timeout=STEP,
    )
    assert r.json()["error"]["code"] == "forbidden"
    r = requests.post(
        f"{site.django.url}/roomcast/subscribe",
        json={"room": "game:1", "conn": "c", "user": "alice"},
        headers={"X-Roomcast-Secret": SECRET},
        timeout=STEP,
    )
    assert r.json() == {}
    r = requests.get(f"{site.django.url}/roomcast/rpc", headers={"X-Roomcast-Secret": SECRET}, timeout=STEP)
    assert r.status_code == 405
