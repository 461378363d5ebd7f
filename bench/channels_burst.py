"""A `group_send` burst from Django code into a room of N members, on roomcast
(relay endpoint, [channels] core layer) and on Django Channels (daphne with the
tutorial consumer of examples/channels_chat, channels_redis), in the same run.

    cargo build --release -p roomcast-cli
    pip install -r bench/requirements.txt -r tests/python/requirements.txt
    python3 bench/channels_burst.py --members 1000 --messages 100 --runs 3

Each run starts a private redis-server on a free loopback port, then for each
server: opens N WebSockets at /ws/chat/bench/, waits until the group holds
them, sends the burst with channels_redis's `group_send` (what Django code
calls), and counts what every client received until 5 s pass without a frame.
Prints one JSON line per server and run: deliveries/s (received frames over the
time from the first send to the last frame) and lost (expected minus received).
The load client is Python asyncio on the same 2 cores, so roomcast's figure is
bounded by the client; daphne's losses are channels_redis dropping a group
message over a process queue's capacity (100 by default).
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import websockets
from channels_redis.core import RedisChannelLayer

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ROOT / "examples" / "channels_chat"
sys.path.insert(0, str(ROOT / "tests" / "python"))
from procs import Process, free_port  # noqa: E402

IDLE = 5.0


def start_redis():
    port = free_port()
    p = Process("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], dict(os.environ))
    r = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            r.ping()
            break
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    p.url = f"redis://127.0.0.1:{port}/0"
    return p


def start_roomcast(url, workdir):
    config = Path(workdir) / "roomcast.toml"
    config.write_text(
        f'listen = "127.0.0.1:0"\n[limits]\nmax_queue_bytes = 16777216\nmax_connections = 20000\n'
        f'[channels]\nurl = "{url}"\n[[endpoints]]\npath = "/ws/chat/{{room}}/"\nroom = "chat_{{room}}"\n'
    )
    p = Process("roomcast", [str(ROOT / "target/release/roomcast"), "serve", "--config", str(config)], {**os.environ, "RUST_LOG": "warn"})
    p.url = p.wait_for_line(r"roomcast listening on (http://127\.0\.0\.1:\d+)", 20).group(1)
    return p


def start_daphne(url):
    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mysite.settings", "ROOMCAST_CHANNELS_URL": url, "PYTHONPATH": str(PROJECT), "CHAT_DB": ":memory:"}
    p = Process("daphne", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "mysite.asgi:application"], env, cwd=PROJECT)
    p.wait_for_line(r"Listening on TCP address", 30)
    p.url = f"http://127.0.0.1:{port}"
    return p


async def burst(server_url, redis_url, members, messages, expected_group_members):
    r = redis.Redis.from_url(redis_url)
    received = [0] * members
    last = [0.0]

    async def reader(i, ws):
        async for _ in ws:
            received[i] += 1
            last[0] = time.monotonic()

    uri = server_url.replace("http", "ws", 1) + "/ws/chat/bench/"
    conns = []
    for _ in range(members):
        conns.append(await websockets.connect(uri, max_queue=None))
    deadline = time.monotonic() + 30
    while r.zcard("asgi:group:chat_bench") < expected_group_members:
        if time.monotonic() > deadline:
            raise SystemExit("the group never filled")
        await asyncio.sleep(0.02)
    tasks = [asyncio.create_task(reader(i, ws)) for i, ws in enumerate(conns)]
    layer = RedisChannelLayer(hosts=[redis_url])
    start = time.monotonic()
    for i in range(messages):
        await layer.group_send("chat_bench", {"type": "chat.message", "message": f"m{i}"})
    sent = time.monotonic()
    while True:
        before = sum(received)
        await asyncio.sleep(IDLE)  # drain: stop once nothing arrived for IDLE seconds
        if sum(received) == before:
            break
    for t in tasks:
        t.cancel()
    for ws in conns:
        await ws.close()
    await layer.close_pools()
    r.delete("asgi:group:chat_bench")
    total = sum(received)
    elapsed = max(last[0] - start, 1e-9)
    return {"members": members, "messages": messages, "deliveries_per_sec": round(total / elapsed), "lost": members * messages - total, "send_s": round(sent - start, 3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    for run in range(a.runs):
        red = start_redis()
        try:
            for name in ("roomcast", "daphne"):
                workdir = tempfile.mkdtemp()
                p = start_roomcast(red.url, workdir) if name == "roomcast" else start_daphne(red.url)
                try:
                    expected = 1 if name == "roomcast" else a.members
                    res = asyncio.run(burst(p.url, red.url, a.members, a.messages, expected))
                    print(json.dumps({"server": name, "run": run, **res}), flush=True)
                finally:
                    p.stop()
        finally:
            red.stop()


if __name__ == "__main__":
    main()
