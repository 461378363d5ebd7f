"""End-to-end tests of examples/socketio_chat.rs with the PyPI python-socketio
sync client (``socketio.Client``), over WebSocket only and polling only.

    cargo build -p roomcast-examples
    pip install -r tests/python/requirements.txt
    SOCKETIO_CHAT_BIN=target/debug/socketio_chat python -m pytest tests/python -q

One server (127.0.0.1, port 0) serves the whole module. Every wait is a
threading.Event / Condition or an ack with a timeout; there are no fixed sleeps.
A negative ("X does not receive Y") is proven with a later fence broadcast:
the server queues to each client in order, so once the fence has arrived, Y
would have arrived before it.
"""

import os
import queue
import re
import subprocess
import threading
import uuid

import pytest
import socketio

import inbox

#: Bound for one expected event, ack or connection (seconds).
STEP = 5.0
#: Bound for the server to print its listening line, and to exit (seconds).
SERVER_START = 20.0
SERVER_EXIT = 10.0

TRANSPORTS = {"websocket": ["websocket"], "polling": ["polling"]}


def token(tag):
    return f"{tag}-{uuid.uuid4()}"


# ---------------------------------------------------------------------------
# The server


@pytest.fixture(scope="module")
def server_url():
    binary = os.environ.get("SOCKETIO_CHAT_BIN")
    if not binary:
        pytest.fail(
            "SOCKETIO_CHAT_BIN is not set: build the server with "
            "`cargo build -p roomcast-examples` and run\n"
            "  SOCKETIO_CHAT_BIN=target/debug/socketio_chat python -m pytest tests/python",
            pytrace=False,
        )
    proc = subprocess.Popen(
        [binary, "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    lines = queue.Queue()
    output = []

    def read():
        for line in proc.stdout:
            output.append(line.rstrip("\n"))
            del output[:-200]
            lines.put(line)
        lines.put(None)  # EOF: the server exited

    threading.Thread(target=read, daemon=True).start()
    url = None
    try:
        while url is None:
            try:
                line = lines.get(timeout=SERVER_START)
            except queue.Empty:
                pytest.fail(f"socketio_chat printed no listening line within {SERVER_START} s", pytrace=False)
            if line is None:
                pytest.fail(
                    f"socketio_chat exited ({proc.wait(timeout=SERVER_EXIT)}) before listening:\n"
                    + "\n".join(output),
                    pytrace=False,
                )
            m = re.search(r"socketio_chat listening on (http://127\.0\.0\.1:\d+)", line)
            if m:
                url = m.group(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=SERVER_EXIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=SERVER_EXIT)


# ---------------------------------------------------------------------------
# Clients


class Inbox(inbox.Inbox):
    """The ``my_response`` messages of one client, with bounded waits."""

    def __init__(self):
        super().__init__("my_response", STEP)

    def data(self, data, timeout=STEP):
        return self.wait_for(lambda m: isinstance(m, dict) and m.get("data") == data, repr(data), timeout)

    def has_data(self, data):
        with self.cond:
            return any(isinstance(m, dict) and m.get("data") == data for m in self.items)


class Chat:
    """A socketio.Client with its inbox and its connect/disconnect record."""

    def __init__(self, url, transports, username):
        self.url = url
        self.transports = transports
        self.username = username
        self.sio = socketio.Client(reconnection=True, reconnection_delay=0.1, reconnection_delay_max=0.5)
        self.inbox = Inbox()
        self.binary_events = queue.Queue()
        self.connects = 0
        self.disconnects = queue.Queue()
        self.sio.on("my_response", self.inbox.push)
        self.sio.on("my_binary", lambda *args: self.binary_events.put(args))
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", lambda reason=None: self.disconnects.put(reason))

    def _on_connect(self):
        self.connects += 1

    def connect(self):
        self.sio.connect(
            self.url,
            auth={"username": self.username},
            transports=self.transports,
            wait_timeout=STEP,
        )
        assert self.sio.connected
        assert self.sio.transport() == self.transports[0]
        hello = self.inbox.data("Connected")
        assert hello == {"data": "Connected", "count": 0}
        return self

    def call(self, event, data=None):
        return self.sio.call(event, data, timeout=STEP)

    def close(self):
        """Disconnects, waiting at most STEP.

        python-engineio 4.15's polling client can lose its close packet: when
        disconnect() runs while a POST is in flight, the write loop sees the
        state change after that POST and exits without sending the queued
        DISCONNECT and CLOSE, and disconnect() then waits for the pending GET,
        which the server answers with its next ping (25 s later). That is the
        client's race, not the server's, so the wait is bounded here; an
        abandoned client's threads end when the server stops.
        """
        done = threading.Event()

        def run():
            try:
                self.sio.shutdown()
            except Exception:  # already gone
                pass
            finally:
                done.set()

        threading.Thread(target=run, daemon=True).start()
        done.wait(STEP)


@pytest.fixture(params=sorted(TRANSPORTS), ids=lambda name: name)
def connect(request, server_url):
    """A factory of connected clients on one transport; all closed after the test."""
    made = []

    def make(username=None):
        c = Chat(server_url, TRANSPORTS[request.param], username or token("user"))
        made.append(c)
        return c.connect()

    yield make
    for c in made:
        c.close()


def fence(sender, receivers):
    """`sender` broadcasts a fresh token and every receiver waits for it."""
    data = token("fence")
    ack = sender.call("my_broadcast_event", {"data": data})
    assert ack["ok"] is True
    for r in receivers:
        r.inbox.data(f"{sender.username}: {data}")


# ---------------------------------------------------------------------------
# Tests


def test_connect_with_auth_username(connect):
    c = connect("pyalice")
    # The username from the CONNECT auth payload prefixes broadcasts.
    msg = token("hi")
    c.call("my_broadcast_event", {"data": msg})
    assert c.inbox.data(f"pyalice: {msg}")["count"] == 1


def test_my_event_with_callback(connect):
    c = connect()
    data = token("echo")
    acked = threading.Event()
    got = []

    def callback(*args):
        got.extend(args)
        acked.set()

    c.sio.emit("my_event", {"data": data}, callback=callback)
    assert acked.wait(STEP), "no ack for my_event"
    assert got == [{"ok": True, "count": 1}]
    assert c.inbox.data(data) == {"data": data, "count": 1}
    # client.call waits for the ack itself.
    data2 = token("call")
    assert c.call("my_event", {"data": data2}) == {"ok": True, "count": 2}
    assert c.inbox.data(data2) == {"data": data2, "count": 2}


def test_room_event_between_two_clients(connect):
    room = token("room")
    alice, bob, carol = connect("alice"), connect("bob"), connect("carol")
    assert alice.call("join", {"room": room})["ok"] is True
    assert bob.call("join", {"room": room})["ok"] is True
    joined = bob.inbox.wait_for(lambda m: m["data"].startswith("In rooms:") and room in m["data"], "join reply")
    assert joined["count"] == 1

    msg = token("room-msg")
    ack = alice.call("my_room_event", {"room": room, "data": msg})
    assert ack == {"ok": True, "count": 2}
    line = f"alice: {msg}"
    assert bob.inbox.data(line) == {"data": line, "count": 2}
    assert alice.inbox.data(line) == {"data": line, "count": 2}
    fence(alice, [alice, bob, carol])
    assert not carol.inbox.has_data(line), "a non-member received a room event"

    # bob leaves: no more room events for him.
    leave = bob.call("leave", {"room": room})
    left = bob.inbox.wait_for(lambda m: m["count"] == leave["count"], "leave reply")
    assert room not in left["data"]
    msg2 = token("after-leave")
    alice.call("my_room_event", {"room": room, "data": msg2})
    alice.inbox.data(f"alice: {msg2}")
    fence(alice, [alice, bob])
    assert not bob.inbox.has_data(f"alice: {msg2}"), "a member that left received a room event"


def test_binary_round_trip_via_call(connect):
    c = connect()
    blob = bytes(range(256)) * 40
    assert c.call("my_binary", blob) == blob
    nested = {"label": "nested", "inner": {"blob": b"\x00\xffhello", "list": [b"\x09", 42]}}
    assert c.call("my_binary", nested) == nested
    # Several arguments come back as a tuple.
    assert c.call("my_binary", (b"one", {"two": b"\x02"}, "three")) == (b"one", {"two": b"\x02"}, "three")
    # Without a callback the echo is a my_binary event.
    c.sio.emit("my_binary", (b"\x01\x02\x03", {"x": b"\x04"}))
    assert c.binary_events.get(timeout=STEP) == (b"\x01\x02\x03", {"x": b"\x04"})
    # Text still works after binary.
    data = token("after-binary")
    assert c.call("my_event", {"data": data})["ok"] is True
    c.inbox.data(data)


def test_broadcast_reaches_everyone(connect):
    alice, bob, carol = connect("alice"), connect("bob"), connect("carol")
    msg = token("all")
    assert alice.call("my_broadcast_event", {"data": msg}) == {"ok": True, "count": 1}
    for c in (alice, bob, carol):
        assert c.inbox.data(f"alice: {msg}") == {"data": f"alice: {msg}", "count": 1}
    assert bob.call("set_username", {"data": "robert"}) == {"ok": True, "count": 1}
    bob.inbox.data("Username set to robert")
    msg2 = token("renamed")
    bob.sio.emit("my_broadcast_event", {"data": msg2})
    for c in (alice, bob, carol):
        assert c.inbox.data(f"robert: {msg2}")["count"] == 2


def test_disconnect_request(connect):
    c = connect("leaver")
    witness = connect("witness")
    c.sio.emit("disconnect_request")
    assert c.inbox.data("Disconnected!") == {"data": "Disconnected!", "count": 1}
    try:
        reason = c.disconnects.get(timeout=STEP)
    except queue.Empty:
        raise AssertionError("no disconnect event after disconnect_request") from None
    assert reason == c.sio.reason.SERVER_DISCONNECT
    assert not c.sio.connected
    # Nothing reconnects it: a later broadcast from another client is not seen
    # by it, and it made no new connection.
    msg = token("while-away")
    witness.call("my_broadcast_event", {"data": msg})
    fence(witness, [witness])
    assert c.connects == 1
    assert not c.sio.connected
    assert not c.inbox.has_data(f"witness: {msg}")
    # The witness is unaffected.
    data = token("still-here")
    assert witness.call("my_event", {"data": data})["ok"] is True
