"""Run the Channels benchmark peer under Daphne on 127.0.0.1.

Usage: python3 run.py PORT   (or --port PORT)

Equivalent to `daphne -b 127.0.0.1 -p PORT benchsite.asgi:application`
(without the access log), plus the ready line once the socket is listening.
"""

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchsite.settings")

# Must come first: installs Twisted's asyncio reactor.
from daphne.server import Server  # noqa: E402, I001


def main():
    args = sys.argv[1:]
    port = int(args[1] if args[:1] == ["--port"] else (args[0] if args else 3000))

    from benchsite.asgi import application

    def ready():
        host, bound_port = server.listening_addresses[0]
        print(f"ready on {host}:{bound_port}", flush=True)

    server = Server(
        application=application,
        # Twisted's default listen backlog is 50; use the same order as the
        # other peers' servers (tokio 1024, uvicorn 2048, Node 511).
        endpoints=[f"tcp:port={port}:interface=127.0.0.1:backlog=1024"],
        ready_callable=ready,
    )
    server.run()
    if server.abort_start:  # the endpoint could not listen
        sys.exit(1)


if __name__ == "__main__":
    main()
