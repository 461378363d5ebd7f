"""Socket.IO benchmark peer (contract A) on python-socketio + uvicorn.

Usage: python3 server.py PORT   (or --port PORT)
"""

import sys

import socketio
import uvicorn

# Defaults: path "/socket.io/", ping_interval 25 s, ping_timeout 20 s,
# max_http_buffer_size 1_000_000, no logging.
sio = socketio.AsyncServer(async_mode="asgi")
app = socketio.ASGIApp(sio)


@sio.event
async def join(sid, data):
    await sio.enter_room(sid, data["room"])
    return {"ok": True}  # sent as the ack


@sio.event
async def publish(sid, data):
    await sio.emit(data["event"], data["data"], to=data["room"])
    return {"ok": True}  # sent as the ack if the client asked for one


class Server(uvicorn.Server):
    async def startup(self, sockets=None):
        await super().startup(sockets)
        if self.started:
            print(f"ready on {self.config.host}:{self.config.port}", flush=True)


def main():
    args = sys.argv[1:]
    port = int(args[1] if args[:1] == ["--port"] else (args[0] if args else 3000))
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        # Socket.IO servers do not compress WebSocket frames by default (socket.io's
        # perMessageDeflate is false); uvicorn would otherwise negotiate it.
        ws_per_message_deflate=False,
        log_level="warning",
        access_log=False,
    )
    Server(config).run()


if __name__ == "__main__":
    main()
