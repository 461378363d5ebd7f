#!/usr/bin/env python3
"""Measures what room history costs on the fanout scenario, on this machine, on 127.0.0.1.

    python3 bench/history.py [--out target/bench/history.jsonl] [--runs 3]

Needs target/release/roomcast and target/release/roomcast-bench (scripts/bench-history
builds them) and redis-server. Every case starts a fresh roomcast (and, for the Redis
cases, a fresh redis-server on a free port, persistence off) and stops it.

For the memory backend (one node) and the Redis backend (one node on Redis), for the
native protocol and Socket.IO, without and with history (`history.size = 1000`; for
Socket.IO also `socketio.recovery_ms`, so events carry their offset):

- burst: `roomcast-bench fanout`, 3000 subscribers, 300 messages of 100 B published as
  fast as possible: deliveries per second;
- steady: the same room at 100 messages per second for 10 s (300,000 deliveries per
  second): delivery latency, p50 and p99.

Runs alternate without/with history so that drift on the machine hits both. One JSON
line per run goes to --out; the summary (medians, ratio with/without) is printed as a
Markdown table for docs/benchmarks.md.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from security import Node, bench, free_port  # noqa: E402  (the same process helpers)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {
    "ROOMCAST_SOCKETIO_BUILTIN_EVENTS": "true",
    "ROOMCAST_SOCKETIO_EVENT_PREFIX": "",
    "ROOMCAST_LIMITS_MAX_QUEUE_BYTES": str(16 << 20),
}


class Redis:
    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)  # poll interval, bounded by the deadline
        raise SystemExit("redis-server did not answer PING")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def wait_connected(node):
    """Polls /metrics until the node's Redis subscriber is up (bounded)."""
    import urllib.request
    deadline = time.time() + 10
    while time.time() < deadline:
        with urllib.request.urlopen(f"http://{node.addr}/metrics", timeout=2) as r:
            if "roomcast_redis_connected 1" in r.read().decode():
                return
        time.sleep(0.05)  # poll interval, bounded by the deadline
    raise SystemExit("roomcast did not connect to redis")


def config(backend, history, redis_url):
    lines = []
    if backend == "redis":
        lines += ["[broker]", f'url = "{redis_url}"']
    if history:
        lines += ["[history]", "size = 1000"]
    lines += ["[[rooms]]", 'pattern = "bench"', 'publish = "anyone"']
    return lines


def run_case(tmp, backend, proto, history, load):
    redis = Redis() if backend == "redis" else None
    env = dict(ENV)
    if history and proto == "socketio":
        env["ROOMCAST_SOCKETIO_RECOVERY_MS"] = "120000"
    node = Node(tmp, config(backend, history, f"redis://127.0.0.1:{redis.port}/0" if redis else ""), env)
    try:
        if backend == "redis":
            wait_connected(node)
        args = ["fanout", "--addr", node.addr, "--protocol", proto, "--clients", "3000", "--drain", "20",
                "--label", f"{backend} {proto} {'history' if history else 'none'}"]
        if load == "burst":
            args += ["--messages", "300"]
        else:
            args += ["--rate", "100", "--duration", "10", "--messages", "1000"]
        return bench(*args)
    finally:
        node.stop()
        if redis:
            redis.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "target/bench/history.jsonl"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--backends", default="memory,redis")
    opts = ap.parse_args()
    os.makedirs(os.path.dirname(opts.out), exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, open(opts.out, "w") as out:
        for run in range(opts.runs):
            for backend in opts.backends.split(","):
                for proto in ("native", "socketio"):
                    for load in ("burst", "steady"):
                        for history in (False, True):
                            r = run_case(tmp, backend, proto, history, load)
                            r.update(backend=backend, proto=proto, history=history, load=load, run=run)
                            out.write(json.dumps(r) + "\n")
                            out.flush()
                            rows.append(r)
                            lat = r.get("latency_ms", {})
                            print(f"{backend:6} {proto:8} {load:6} history={history!s:5} run {run}: "
                                  f"{r.get('deliveries_per_sec', 0):,.0f}/s p99 {lat.get('p99', 0):.1f} ms "
                                  f"lost {r.get('lost')} ooo {r.get('out_of_order')} {r.get('status', '')}",
                                  file=sys.stderr)

    def med(sel, get):
        vals = [get(r) for r in rows if all(r.get(k) == v for k, v in sel.items()) and "status" not in r]
        return statistics.median(vals) if vals else float("nan")

    print("| backend | protocol | burst deliveries/s: none → history (ratio) | steady p50 ms: none → history | steady p99 ms: none → history | lost, out of order |")
    print("|---|---|---|---|---|---|")
    for backend in opts.backends.split(","):
        for proto in ("native", "socketio"):
            s = dict(backend=backend, proto=proto)
            d0 = med({**s, "load": "burst", "history": False}, lambda r: r["deliveries_per_sec"])
            d1 = med({**s, "load": "burst", "history": True}, lambda r: r["deliveries_per_sec"])
            p = {h: (med({**s, "load": "steady", "history": h}, lambda r: r["latency_ms"]["p50"]),
                     med({**s, "load": "steady", "history": h}, lambda r: r["latency_ms"]["p99"]))
                 for h in (False, True)}
            bad = sum((r.get("lost") or 0) + (r.get("out_of_order") or 0) for r in rows
                      if r["backend"] == backend and r["proto"] == proto)
            name = "Socket.IO" if proto == "socketio" else "native"
            print(f"| {backend} | {name} | {d0 / 1e6:.2f} M → {d1 / 1e6:.2f} M ({d1 / d0:.2f}×) | "
                  f"{p[False][0]:.1f} → {p[True][0]:.1f} | {p[False][1]:.1f} → {p[True][1]:.1f} | {bad} |")


if __name__ == "__main__":
    main()
