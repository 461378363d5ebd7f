"""Django Channels against roomcast: channels_redis (the PyPI package, both
layers) on a real redis-server, the tutorial project of
examples/channels_chat on daphne and `manage.py runworker`, and roomcast's
URL-per-room endpoints, native clients and HTTP API.

    cargo build -p roomcast-cli
    pip install -r tests/python/requirements.txt
    ROOMCAST_BIN=$PWD/target/debug/roomcast python -m pytest -q tests/python/test_channels.py

Each layer (`core`, `pubsub`) gets its own redis-server, roomcast node,
daphne and worker. Every wait is bounded (STEP); conditions are polled with
a deadline, nothing sleeps for synchronisation. Exactly-once: a client's
frames arrive in order, so once a later "fence" message has arrived,
everything sent before it has too, and the whole list is compared.
"""

import json
import os
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import redis
import requests
import websocket
from asgiref.sync import async_to_sync

import inbox
from clients import NativeSocket
from procs import Process, free_port, poll
from test_emitters import child_env, start_redis

STEP = 10.0
START = 30.0
ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "examples" / "channels_chat"


def tag(prefix):
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def metric(url, name, labels=""):
    text = requests.get(f"{url}/metrics", timeout=STEP).text
    m = re.search(rf"^{re.escape(name + labels)} (\d+)$", text, re.M)
    return int(m.group(1)) if m else None


class Stack:
    def __init__(self, layer, redis_proc, rc, daphne, worker, db):
        self.layer = layer
        self.redis = redis_proc
        self.rc = rc
        self.daphne = daphne
        self.worker = worker
        self.db = db
        self.r = redis.Redis.from_url(redis_proc.url)

    def channel_layer(self):
        """A fresh channels_redis layer as Django's settings configure it."""
        if self.layer == "core":
            from channels_redis.core import RedisChannelLayer

            return RedisChannelLayer(hosts=[self.redis.url], channel_capacity={"specific.roomcast-*": 10000})
        from channels_redis.pubsub import RedisPubSubChannelLayer

        return RedisPubSubChannelLayer(hosts=[self.redis.url])

    def call(self, method, *args):
        """Calls a layer method (group_send, send, group_add) as Django code would, on a fresh layer."""

        async def go():
            layer = self.channel_layer()
            await getattr(layer, method)(*args)
            await close_layer(layer)

        async_to_sync(go)()

    def group_send(self, group, message):
        self.call("group_send", group, message)

    def send(self, channel, message):
        self.call("send", channel, message)

    def group_add(self, group, channel):
        self.call("group_add", group, channel)

    def wait_member(self, room, n=1):
        """Until roomcast is in the group of `room` (and daphne consumers, n in all)."""
        if self.layer == "core":
            poll(f"{n} members of group {room}", lambda: self.r.zcard(f"asgi:group:{room}") >= n)
        else:
            poll(
                f"{n} subscribers of group {room}",
                lambda: dict(self.r.pubsub_numsub(f"asgi__group__{room}")).get(f"asgi__group__{room}".encode(), 0) >= n,
            )

    def logs(self):
        return "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in (self.rc, self.daphne, self.worker))


async def close_layer(layer):
    """Closes the core layer's pools (the pub/sub layer closes with its event loop)."""
    if hasattr(layer, "close_pools"):
        await layer.close_pools()


def django_env(redis_url, layer, db):
    return child_env(
        {
            "DJANGO_SETTINGS_MODULE": "mysite.settings",
            "ROOMCAST_CHANNELS_URL": redis_url,
            "CHANNELS_LAYER": layer,
            "CHAT_DB": db,
            "PYTHONPATH": str(PROJECT),
        }
    )


def start_roomcast(redis_url, layer, workdir, django_url, extra=()):
    binary = os.environ.get("ROOMCAST_BIN")
    if not binary:
        pytest.fail("ROOMCAST_BIN is not set: cargo build -p roomcast-cli, then ROOMCAST_BIN=$PWD/target/debug/roomcast", pytrace=False)
    config = Path(workdir) / "roomcast.toml"
    config.write_text(
        (PROJECT / "roomcast.toml")
        .read_text()
        .replace('listen = "127.0.0.1:8700"', 'listen = "127.0.0.1:0"')
        .replace('url = "redis://127.0.0.1:6379/0"', f'url = "{redis_url}"')
        .replace('layer = "core"', f'layer = "{layer}"')
        .replace("http://127.0.0.1:8000", django_url)
        + '\n[client]\nsend = true\n'
    )
    proc = Process("roomcast", [binary, "serve", "--config", str(config), *extra], child_env({"RUST_LOG": "info"}))
    try:
        proc.url = proc.wait_for_line(r"roomcast listening on (http://127\.0\.0\.1:\d+)", START).group(1)
        poll("roomcast connected to the layer", lambda: metric(proc.url, "roomcast_channels_connected") == 1, START)
    except AssertionError as e:
        proc.stop()
        pytest.fail(f"{e}\n{proc.tail()}", pytrace=False)
    return proc


@pytest.fixture(scope="module", params=["core", "pubsub"])
def stack(request):
    layer = request.param
    started = []
    workdir = tempfile.mkdtemp(prefix=f"roomcast-channels-{layer}-")
    db = str(Path(workdir) / "chat.sqlite3")
    try:
        redis_proc = start_redis()
        started.append(redis_proc)
        env = django_env(redis_proc.url, layer, db)
        migrate = Process("migrate", [sys.executable, "manage.py", "migrate", "-v", "0"], env, cwd=PROJECT)
        assert migrate.proc.wait(timeout=START) == 0, migrate.tail()
        port = free_port()
        rc = start_roomcast(redis_proc.url, layer, workdir, f"http://127.0.0.1:{port}")
        started.append(rc)
        daphne = Process("daphne", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "mysite.asgi:application"], env, cwd=PROJECT)
        started.append(daphne)
        daphne.url = f"http://127.0.0.1:{port}"
        daphne.wait_for_line(r"Listening on TCP address", START)
        worker = Process("runworker", [sys.executable, "manage.py", "runworker", "chat.inbound"], env, cwd=PROJECT)
        started.append(worker)
        s = Stack(layer, redis_proc, rc, daphne, worker, db)
        if layer == "pubsub":
            # The pub/sub layer keeps nothing: the worker must listen first.
            poll("the worker on chat.inbound", lambda: dict(s.r.pubsub_numsub("chat.inbound")).get(b"chat.inbound", 0) >= 1, START)
        yield s
    finally:
        for p in reversed(started):
            p.stop()


@pytest.fixture(autouse=True)
def show_logs(stack):
    yield
    print(stack.logs())


class Page:
    """A WebSocket as the tutorial's page opens it; frames land in `inbox`."""

    def __init__(self, url, path, name):
        self.inbox = inbox.Inbox(name, STEP)
        self.closed = inbox.Inbox(f"{name} close", STEP)
        self.ws = websocket.create_connection(url.replace("http", "ws", 1) + path, timeout=STEP)
        self.ws.settimeout(None)
        import threading

        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            while True:
                opcode, data = self.ws.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self.inbox.push(data.decode())
                elif opcode == websocket.ABNF.OPCODE_BINARY:
                    self.inbox.push(bytes(data))
                elif opcode == websocket.ABNF.OPCODE_CLOSE:
                    self.closed.push(int.from_bytes(data[:2], "big") if len(data) >= 2 else None)
                    return
        except Exception:
            self.closed.push(None)

    def send(self, text):
        self.ws.send(text)

    def until(self, *fences):
        """Every frame so far, once a frame holding each of `fences` has arrived."""
        for fence in fences:
            self.inbox.wait_for(lambda f, fence=fence: isinstance(f, str) and fence in f, f"a frame with {fence}")
        return self.inbox.snapshot()

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass


def test_group_send_reaches_endpoint_native_members(stack):
    room = tag("r")
    page = Page(stack.rc.url, f"/ws/chat/{room}/", "endpoint page")
    native = NativeSocket(stack.rc.url, "native", STEP)
    try:
        assert native.send({"type": "join", "room": f"chat_{room}"})["type"] == "ack"
        stack.wait_member(f"chat_{room}")
        stack.group_send(f"chat_{room}", {"type": "chat.message", "message": "hello from django"})
        stack.group_send(f"chat_{room}", {"type": "websocket.send", "text": "raw frame"})
        stack.group_send(f"chat_{room}", {"type": "chat.message", "message": "fence"})
        frames = page.until("fence")
        assert [json.loads(frames[0]), frames[1], json.loads(frames[2])] == [
            {"message": "hello from django"},
            "raw frame",
            {"message": "fence"},
        ], frames
        native.inbox.wait_for(lambda f: f.get("data") == {"message": "fence"}, "the fence")
        events = [(f["event"], f["data"]) for f in native.inbox.snapshot() if f.get("type") == "message"]
        assert events == [
            ("chat.message", {"message": "hello from django"}),
            ("message", "raw frame"),
            ("chat.message", {"message": "fence"}),
        ]
    finally:
        page.close()
        native.ws.close()


def test_mixed_room_daphne_and_roomcast_see_each_other_once(stack):
    room = tag("m")
    theirs = Page(stack.daphne.url, f"/ws/chat/{room}/", "daphne page")
    ours = Page(stack.rc.url, f"/ws/chat/{room}/", "roomcast page")
    try:
        stack.wait_member(f"chat_{room}", 2)
        theirs.send(json.dumps({"message": "from daphne"}))
        ours.send(json.dumps({"message": "from roomcast"}))
        # Fences from each side, after which nothing else may have arrived twice.
        theirs.send(json.dumps({"message": "fence-d"}))
        ours.send(json.dumps({"message": "fence-r"}))
        for page in (theirs, ours):
            got = [json.loads(f)["message"] for f in page.until("fence-d", "fence-r")]
            for m in ("from daphne", "from roomcast", "fence-d", "fence-r"):
                assert got.count(m) == 1, (page.inbox.name, got)
    finally:
        theirs.close()
        ours.close()


def test_connection_channel_send_close_and_group_add(stack):
    native = NativeSocket(stack.rc.url, "native", STEP)
    try:
        welcome = native.inbox.wait_for(lambda f: f.get("type") == "welcome", "welcome")
        info = requests.get(f"{stack.rc.url}/api/connections/{welcome['conn']}", timeout=STEP).json()
        channel = info["channel"]
        assert channel.startswith("specific.roomcast-") and channel.endswith("!" + welcome["conn"])
        stack.send(channel, {"type": "notice", "text": "just you"})
        f = native.inbox.wait_for(lambda f: f.get("type") == "message", "the notice")
        assert (f["event"], f["data"]) == ("notice", {"text": "just you"})
        if stack.layer == "core":
            # group_add of a roomcast connection: only the core layer keeps groups in Redis.
            group = tag("alerts")
            stack.group_add(group, channel)
            stack.group_send(group, {"type": "alert", "level": 2})
            f = native.inbox.wait_for(lambda f: f.get("event") == "alert", "the alert")
            assert (f["event"], f["data"]) == ("alert", {"level": 2})
        stack.send(channel, {"type": "websocket.close", "code": 4321})
        assert native.close_code()[0] == 4321
    finally:
        native.ws.close()


def test_channel_mode_runworker_saves_with_the_orm(stack):
    room = tag("w")
    page = Page(stack.rc.url, f"/ws/saved/{room}/", "channel-mode page")
    watcher = Page(stack.rc.url, f"/ws/chat/{room}/", "relay page in the same room")
    try:
        welcome = page.inbox.wait_for(lambda f: "welcome" in f, "the worker's welcome")
        assert json.loads(welcome) == {"welcome": f"chat_{room}"}
        page.send(json.dumps({"message": "persist me"}))
        for p in (page, watcher):
            got = json.loads(p.inbox.wait_for(lambda f: "persist me" in f, "the saved message"))
            assert got["message"] == "persist me" and isinstance(got["id"], int)
        import sqlite3

        rows = sqlite3.connect(stack.db).execute("SELECT room, text FROM chat_message WHERE id = ?", (got["id"],)).fetchall()
        assert rows == [(f"chat_{room}", "persist me")]
        # A frame the worker cannot read: it closes the connection with its own code.
        page.send("not json")
        assert page.closed.wait_for(lambda c: True, "the worker's close") == 4400
    finally:
        page.close()
        watcher.close()


def test_room_names_that_are_not_groups_are_not_bridged(stack):
    native = NativeSocket(stack.rc.url, "native", STEP)
    try:
        assert native.send({"type": "join", "room": "chat:colon"})["type"] == "ack"
        assert stack.r.zcard("asgi:group:chat:colon") == 0
        assert not dict(stack.r.pubsub_numsub("asgi__group__chat:colon")).get(b"asgi__group__chat:colon")
    finally:
        native.ws.close()


def test_malformed_layer_messages_are_counted_not_applied(stack):
    native = NativeSocket(stack.rc.url, "native", STEP)
    try:
        welcome = native.inbox.wait_for(lambda f: f.get("type") == "welcome", "welcome")
        # A connection id's first 6 hex digits are its node's low 24 bits.
        node = "01" + welcome["conn"][:6]
        before = metric(stack.rc.url, "roomcast_channels_messages_total", '{direction="in",result="malformed"}') or 0
        if stack.layer == "core":
            stack.r.zadd(f"asgispecific.roomcast-{node}!", {b"\x00" * 12 + b"\xc1garbage": time.time()})
        else:
            channel = requests.get(f"{stack.rc.url}/api/connections/{welcome['conn']}", timeout=STEP).json()["channel"]
            stack.r.publish(channel, b"\xc1garbage")
        poll(
            "the malformed count",
            lambda: (metric(stack.rc.url, "roomcast_channels_messages_total", '{direction="in",result="malformed"}') or 0) > before,
        )
        # The node still works.
        assert native.send({"type": "join", "room": "after_garbage"})["type"] == "ack"
    finally:
        native.ws.close()


def test_two_nodes_on_redis_with_endpoint_members_on_both(stack):
    """Two roomcast nodes share a broker and the layer, with a daphne consumer in the room:
    every member gets each group_send and each frame once, whichever node or side it came from."""
    room = tag("n")
    group = f"chat_{room}"
    nodes, clients = [], []
    try:
        for name in ("a", "b"):
            workdir = tempfile.mkdtemp(prefix=f"roomcast-channels-node-{name}-")
            node = start_roomcast(stack.redis.url, stack.layer, workdir, stack.daphne.url, ["--broker", stack.redis.url])
            node.name = f"roomcast {name}"
            nodes.append(node)
            poll(f"node {name} on the broker", lambda: metric(node.url, "roomcast_redis_connected") == 1, START)
        theirs = Page(stack.daphne.url, f"/ws/chat/{room}/", "daphne page")
        clients.append(theirs)
        # A native member per node: its join's ack comes once the node is subscribed to the room.
        natives = [NativeSocket(n.url, f"native {n.name}", STEP) for n in nodes]
        clients.extend(natives)
        for native in natives:
            assert native.send({"type": "join", "room": group})["type"] == "ack"
        pages = [Page(n.url, f"/ws/chat/{room}/", f"page on {n.name}") for n in nodes]
        clients.extend(pages)
        # Each page is in its room once its hello reached the native member of the other node.
        for i, page in enumerate(pages):
            page.send(json.dumps({"message": f"hello-{i}"}))
        for native in natives:
            for i in range(2):
                native.inbox.wait_for(lambda f, i=i: f.get("data") == {"message": f"hello-{i}"}, f"hello-{i}")
        stack.wait_member(group, 3)  # both nodes and the daphne consumer

        stack.group_send(group, {"type": "chat.message", "message": "from django"})
        pages[0].send(json.dumps({"message": "from a"}))
        pages[1].send(json.dumps({"message": "from b"}))
        theirs.send(json.dumps({"message": "from daphne"}))
        sent = ["from django", "from a", "from b", "from daphne"]
        fences = ["fence-django", "fence-a", "fence-b", "fence-daphne"]
        stack.group_send(group, {"type": "chat.message", "message": fences[0]})
        pages[0].send(json.dumps({"message": fences[1]}))
        pages[1].send(json.dumps({"message": fences[2]}))
        theirs.send(json.dumps({"message": fences[3]}))
        for page in [theirs, *pages]:
            got = [json.loads(f)["message"] for f in page.until(*fences)]
            for m in sent + fences:
                assert got.count(m) == 1, (page.inbox.name, m, got)
        for native in natives:
            for fence in fences:
                native.inbox.wait_for(lambda f, fence=fence: f.get("data") == {"message": fence}, fence)
            got = [f["data"]["message"] for f in native.inbox.snapshot() if f.get("type") == "message"]
            for m in sent + fences:
                assert got.count(m) == 1, (native.name, m, got)
    finally:
        for c in clients:
            c.close() if isinstance(c, Page) else c.ws.close()
        for n in nodes:
            print(f"--- {n.name} ---\n{n.tail()}")
            n.stop()


def test_history_rooms_publish_to_groups_too(stack):
    """In a room with history, publications go through the history store, not the broker:
    they still reach the group once; what comes in from the layer is not stored."""
    room = tag("h")
    group = f"chat_{room}"
    node = start_roomcast(stack.redis.url, stack.layer, tempfile.mkdtemp(prefix="roomcast-channels-history-"), stack.daphne.url, ["--history-size", "20"])
    theirs = ours = None
    try:
        theirs = Page(stack.daphne.url, f"/ws/chat/{room}/", "daphne page")
        ours = Page(node.url, f"/ws/chat/{room}/", "roomcast page")
        stack.wait_member(group, 2)
        ours.send(json.dumps({"message": "stored"}))
        theirs.send(json.dumps({"message": "from daphne"}))
        ours.send(json.dumps({"message": "fence-r"}))
        theirs.send(json.dumps({"message": "fence-d"}))
        for page in (theirs, ours):
            got = [json.loads(f)["message"] for f in page.until("fence-r", "fence-d")]
            for m in ("stored", "from daphne", "fence-r", "fence-d"):
                assert got.count(m) == 1, (page.inbox.name, m, got)
        history = requests.get(f"{node.url}/api/history/{group}", timeout=STEP).json()
        assert [p["data"]["message"] for p in history["publications"]] == ["stored", "fence-r"], history
    finally:
        for page in (theirs, ours):
            if page:
                page.close()
        print(f"--- roomcast with history ---\n{node.tail()}")
        node.stop()
