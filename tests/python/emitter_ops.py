"""Runs a list of python-socketio ``RedisManager(url, write_only=True)`` calls,
the way an external process (a Django view, a Celery task) pushes to
Socket.IO clients, with whatever python-socketio is first on ``sys.path``.

test_emitters.py runs it with ``PYTHONPATH=$PY_SOCKETIO_513`` to publish in
the pickle format of python-socketio 5.13 and older:

    python3 emitter_ops.py REDIS_URL < ops.json

``ops.json`` is a JSON list of calls, each ``[method, args, kwargs]`` with
``method`` one of ``emit``, ``enter_room``, ``leave_room``, ``close_room``,
``disconnect``. A value ``{"tuple": [...]}`` in args or kwargs is passed as a
tuple (python-socketio sends a tuple as several arguments). Prints one JSON
line: the python-socketio version and where it was imported from.
"""

import json
import sys
from importlib import metadata

import socketio


class NoLocalServer:
    """Stands in for the server a write-only manager does not have.

    ``RedisManager.disconnect`` first disconnects the socket on its own server
    (``self.server.disconnect(...)``) and only then publishes; a write-only
    manager has no server, so without this the call fails before publishing.
    """

    def disconnect(self, sid=None, namespace=None, **kwargs):
        pass


def value(v):
    if isinstance(v, dict) and set(v) == {"tuple"}:
        return tuple(value(x) for x in v["tuple"])
    if isinstance(v, list):
        return [value(x) for x in v]
    if isinstance(v, dict):
        return {k: value(x) for k, x in v.items()}
    return v


def main():
    url = sys.argv[1]
    ops = json.load(sys.stdin)
    mgr = socketio.RedisManager(url, write_only=True)
    mgr.server = NoLocalServer()
    for method, args, kwargs in ops:
        if method not in ("emit", "enter_room", "leave_room", "close_room", "disconnect"):
            raise SystemExit(f"unknown method {method!r}")
        getattr(mgr, method)(*value(args), **value(kwargs))
    print(json.dumps({"version": metadata.version("python-socketio"), "file": socketio.__file__}))


if __name__ == "__main__":
    main()
