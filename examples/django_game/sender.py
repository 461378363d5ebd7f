"""The seed's sender, unchanged in spirit: python-socketio's RedisManager,
write-only, emitting `ping` to every client. roomcast relays it when it runs
with `broker.emitters = "python-socketio"` (REDIS_URL in settings)."""

import os
import sys

import socketio

url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
mgr = socketio.RedisManager(url, write_only=True)
mgr.emit("ping", data={"text": sys.argv[1] if len(sys.argv) > 1 else "ping"})
