"""The roomcast Python package (python/src/roomcast) against a running
`roomcast serve` on 127.0.0.1: every API client method, sync and async, with
its errors; tokens `--auth token` accepts; retries; webhook checks.

    cargo build -p roomcast-cli
    ROOMCAST_BIN=$PWD/target/debug/roomcast python -m pytest -q tests/python/test_package.py
"""

import asyncio
import json
import os
import socket
import threading

import httpx
import pytest
import websocket

import roomcast
from clients import NativeSocket
from procs import Process, poll
from test_emitters import child_env

STEP = 10.0
START = 30.0
KEY = "package-test-key"
SECRET = "package-test-jwt-secret-of-32-bytes!"


def start(*args):
    binary = os.environ.get("ROOMCAST_BIN")
    if not binary:
        pytest.fail("ROOMCAST_BIN is not set: cargo build -p roomcast-cli", pytrace=False)
    proc = Process("roomcast", [binary, "serve", "--listen", "127.0.0.1:0", *args], child_env())
    proc.url = proc.wait_for_line(r"roomcast listening on (http://127\.0\.0\.1:\d+)", START).group(1)
    return proc


@pytest.fixture(scope="module")
def server():
    proc = start("--api-key", KEY, "--history-size", "20")
    yield proc
    proc.stop()


@pytest.fixture
def api(server):
    with roomcast.Client(server.url, KEY, timeout=STEP) as c:
        yield c


def native(server, name, user=None):
    c = NativeSocket(server.url, name, STEP)
    c.conn = c.inbox.wait_for(lambda f: f["type"] == "welcome", "welcome")["conn"]
    if user:
        assert c.send({"type": "auth", "user": user})["type"] == "ack"
    return c


def messages(c, fence):
    """`data` of every message `c` got up to the one whose data is `fence`."""
    c.inbox.wait_for(lambda f: f["type"] == "message" and f["data"] == fence, f"fence {fence}")
    got = [f["data"] for f in c.inbox.snapshot() if f["type"] == "message"]
    return got[: got.index(fence)]


def test_publish_send_broadcast_and_idempotency(server, api):
    alice = native(server, "alice", "alice")
    try:
        assert alice.send({"type": "join", "room": "news"})["type"] == "ack"
        assert api.publish("news", "n", {"v": 1}) == roomcast.Delivered(1, False)
        assert api.publish("news", "n", {"v": 2}, idempotency_key="k1") == roomcast.Delivered(1, False)
        assert api.publish("news", "n", {"v": 2}, idempotency_key="k1") == roomcast.Delivered(1, True)
        with pytest.raises(roomcast.BadRequestError) as e:
            api.publish("news", "n", {"v": 3}, idempotency_key="k1")
        assert (e.value.status, e.value.code) == (422, "idempotency_key_reused")
        assert api.publish("news", "n", "x", exclude_conn=alice.conn).delivered == 0
        assert api.send("dm", "to alice", user="alice").delivered == 1
        assert api.send("dm", "to conn", conn=alice.conn).delivered == 1
        assert api.broadcast("all", "everyone").delivered == 1
        api.publish("news", "n", "fence")
        assert messages(alice, "fence") == [{"v": 1}, {"v": 2}, "to alice", "to conn", "everyone"]
        with pytest.raises(ValueError):
            api.send("dm", user="a", conn="b")
    finally:
        alice.close()


def test_membership_bind_and_queries(server, api):
    anon = native(server, "anon")
    bob = native(server, "bob", "bob")
    try:
        assert api.join("team", conn=anon.conn) == 1
        assert api.join("team", user="bob") == 1
        bound = api.bind(conn=anon.conn, user="carol")
        assert bound == roomcast.Bound(anon.conn, "carol", True)
        assert api.bind(conn=anon.conn, user="carol").bound is False
        with pytest.raises(roomcast.BadRequestError) as e:
            api.bind(conn=anon.conn, user="dave")
        assert (e.value.status, e.value.code) == (409, "already_bound")
        p = api.presence("team")
        assert (p.room, p.connections, p.anonymous) == ("team", 2, 0)
        assert [(u.user, u.connections) for u in p.users] == [("bob", 1), ("carol", 1)]
        assert {r.room: (r.connections, r.users) for r in api.rooms()}["team"] == (2, 2)
        page = api.users(limit=1)
        assert ([u.user for u in page.users], page.next_cursor) == (["bob"], "bob")
        rest = api.users(limit=10, cursor=page.next_cursor)
        assert [u.user for u in rest.users] == ["carol"] and rest.next_cursor is None
        status = api.user("carol")
        assert status.online and status.connections == [anon.conn]
        assert api.user("nobody").online is False
        info = api.connection(anon.conn)
        assert (info.online, info.user, info.rooms) == (True, "carol", ["team"])
        assert api.connection("00000001ffffffff").online is False
        assert api.leave("team", user="bob") == 1
        assert api.close_room("team") == 1
        assert api.disconnect(user="carol", code=4601, reason="bye") == 1
        assert anon.close_code() == (4601, "bye")
        # The close frame goes out before the server has dropped the connection.
        poll("the connection to be gone", lambda: not api.connection(anon.conn).online)
        with pytest.raises(roomcast.NotFoundError) as e:
            api.bind(conn=anon.conn, user="carol")
        assert e.value.code == "no_connection"
    finally:
        anon.close()
        bob.close()


def test_history_stats_health(server, api):
    api.publish("log", "line", 1)
    api.publish("log", "line", 2)
    h = api.history("log")
    assert [p.data for p in h.publications] == [1, 2] and h.complete and h.offset == 2
    assert [p.offset for p in api.history("log", since=1).publications] == [2]
    assert api.history("log", limit=1).publications[0].data == 1
    assert api.delete_history("log") is True
    assert api.history("log").publications == []
    s = api.stats()
    assert s.node["id"] and isinstance(s.nodes, list) and s.connections >= 0
    assert api.health() == roomcast.Health("ok") and api.health().ok


def test_errors(server):
    with roomcast.Client(server.url, "wrong-key") as c, pytest.raises(roomcast.UnauthorizedError) as e:
        c.rooms()
    assert (e.value.status, e.value.code) == (401, "unauthorized")
    with roomcast.Client(server.url, KEY) as c:
        with pytest.raises(roomcast.BadRequestError) as e:
            c.publish("bad room!", "e")
        assert (e.value.code, e.value.field) == ("invalid_room", "room")
        with pytest.raises(roomcast.BadRequestError) as e:
            c.users(limit=0)
        assert e.value.field == "limit"
    # Nothing listens there: a transport error, after the retries of a safe call.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with roomcast.Client(f"http://127.0.0.1:{port}", retries=1, backoff=0.01) as c, pytest.raises(
        roomcast.TransportError
    ):
        c.health()


def test_a_server_that_does_not_answer_is_a_timeout():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with roomcast.Client(url, timeout=0.3, retries=0) as c, pytest.raises(roomcast.Timeout):
            c.health()
    finally:
        stop.set()
        t.join(STEP)
        for s in held:
            s.close()
        listener.close()


def test_safe_calls_and_keyed_publishes_are_retried_others_not():
    seen = []

    def flaky(request):
        seen.append(request.url.path)
        if seen.count(request.url.path) == 1:
            return httpx.Response(503, json={"error": {"code": "backend_unavailable", "message": "redis"}})
        return httpx.Response(200, json={"delivered": 2} if "publish" in request.url.path else {"status": "ok"})

    with roomcast.Client("http://roomcast.test", transport=httpx.MockTransport(flaky), backoff=0) as c:
        assert c.health().ok
        assert c.publish("r", "e", idempotency_key="k").delivered == 2
    assert seen == ["/healthz", "/healthz", "/api/publish", "/api/publish"]
    seen.clear()
    with roomcast.Client("http://roomcast.test", transport=httpx.MockTransport(flaky), backoff=0) as c:
        with pytest.raises(roomcast.ServerError) as e:
            c.publish("r", "e")
        assert (e.value.status, e.value.code) == (503, "backend_unavailable")
    assert seen == ["/api/publish"]


def test_async_client(server):
    async def go():
        async with roomcast.AsyncClient(server.url, KEY, timeout=STEP) as c:
            assert (await c.health()).ok
            assert (await c.publish("async", "e", 1)).delivered == 0
            assert (await c.user("nobody")).online is False
            with pytest.raises(roomcast.UnauthorizedError):
                await roomcast.AsyncClient(server.url, "wrong").rooms()
            return await c.users()

    assert isinstance(asyncio.run(go()), roomcast.UsersPage)


def test_from_env(server, monkeypatch):
    monkeypatch.setenv("ROOMCAST_URL", server.url)
    monkeypatch.setenv("ROOMCAST_API_KEY", KEY)
    with roomcast.Client.from_env() as c:
        assert c.stats().node["id"]


def close_code(url, token):
    """The close code a native connection with `token` gets."""
    ws = websocket.create_connection(url.replace("http", "ws", 1) + f"/ws?token={token}", timeout=STEP)
    try:
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return int.from_bytes(data[:2], "big")
    finally:
        ws.close()


def test_tokens_are_what_auth_token_accepts():
    proc = start("--auth", "token", "--jwt-secret", SECRET)
    try:
        token = roomcast.make_token("erin", secret=SECRET, rooms=["lobby"], info={"name": "Erin"})
        # The token goes in the URL, as pages do.
        ws = websocket.create_connection(proc.url.replace("http", "ws", 1) + f"/ws?token={token}", timeout=STEP)
        welcome = json.loads(ws.recv())
        assert welcome["type"] == "welcome" and welcome["user"] == "erin", welcome
        with roomcast.Client(proc.url) as api:
            info = api.connection(welcome["conn"])
        ws.close()
        # An expired token, or one signed with another key, is refused: 4504, 4502.
        expired = roomcast.make_token("erin", secret=SECRET, expires_in=-3600)
        assert close_code(proc.url, expired) == 4504
        wrong = roomcast.make_token("erin", secret="another-secret-also-32-bytes-long")
        assert close_code(proc.url, wrong) == 4502
        assert info.user == "erin" and info.info == {"name": "Erin"} and "lobby" in info.rooms
    finally:
        proc.stop()
    with pytest.raises(ValueError):
        roomcast.make_token("x", algorithm="RS256", secret="s")
    with pytest.raises(ValueError):
        roomcast.make_token("", secret="s")


def test_webhook_helpers():
    assert roomcast.verify_secret("s3cret", "s3cret")
    assert not roomcast.verify_secret("s3cre", "s3cret")
    assert not roomcast.verify_secret(None, "s3cret") and not roomcast.verify_secret("", "")
    assert roomcast.verify_request({"x-roomcast-secret": "s"}, "s")
    assert not roomcast.verify_request({"other": "s"}, "s")
    e = roomcast.parse_webhook(
        b'{"id":"n-1","type":"join","time_ms":5,"node":"n","conn":"c","user":"u","room":"r"}'
    )
    assert (e.id, e.type, e.room, e.user, e.time_ms) == ("n-1", "join", "r", "u", 5)
    for bad in (b"nope", b"[]", b'{"id":"x"}'):
        with pytest.raises(ValueError):
            roomcast.parse_webhook(bad)


def test_executable_is_roomcast_bin_when_set():
    assert roomcast.executable() == os.environ["ROOMCAST_BIN"]


def test_two_nodes_share_users_binds_and_idempotency_keys():
    """Two roomcast nodes on a private redis-server, driven through the package."""
    from test_emitters import start_redis

    redis_proc = start_redis()
    nodes = []
    try:
        for _ in range(2):
            nodes.append(start("--broker", redis_proc.url, "--api-key", KEY))
        apis = [roomcast.Client(n.url, KEY, timeout=STEP) for n in nodes]
        for api in apis:
            poll("a node's Redis link (degraded until then)", lambda api=api: api.health().ok)
        bob = native(nodes[1], "bob", "bob")
        anon = native(nodes[1], "anon")
        try:
            assert bob.send({"type": "join", "room": "news"})["type"] == "ack"
            assert apis[0].bind(conn=anon.conn, user="carol").bound is True
            poll("node 1 to apply the bind", lambda: apis[0].connection(anon.conn).user == "carol")
            for api in apis:
                assert [u.user for u in api.users().users] == ["bob", "carol"]
            first = apis[0].publish("news", "n", "once", idempotency_key="two-node-key")
            again = apis[1].publish("news", "n", "once", idempotency_key="two-node-key")
            assert (again.delivered, again.replayed) == (first.delivered, True)
            apis[1].publish("news", "n", "fence")
            assert messages(bob, "fence") == ["once"]
        finally:
            bob.close()
            anon.close()
            for api in apis:
                api.close()
    finally:
        for n in nodes:
            n.stop()
        redis_proc.stop()
