"""Client helpers shared by the Python client tests: a native WebSocket
client (websocket-client) whose frames land in an inbox, and a bounded
shutdown for python-socketio clients."""

import json
import queue
import socket
import threading

import websocket

from inbox import Inbox


def shutdown_sio(sio, timeout):
    """``sio.shutdown()`` in a thread, waited for at most `timeout` seconds."""
    done = threading.Event()

    def run():
        try:
            sio.shutdown()
        except Exception:
            pass
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    done.wait(timeout)


class NativeSocket:
    """A native WebSocket client on ``<url>/ws``: every JSON frame lands in
    ``inbox``; the server's close lands in ``closed`` as ``(code, reason)``."""

    def __init__(self, url, name, timeout, header=None):
        self.name = name
        self.timeout = timeout
        self.inbox = Inbox(f"native client {name}", timeout)
        self.closed = queue.Queue()
        self.ended = threading.Event()
        self.next_id = 1
        self.ws = websocket.create_connection(url.replace("http", "ws", 1) + "/ws", header=header or [], timeout=timeout)
        self.ws.settimeout(None)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            while True:
                opcode, data = self.ws.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self.inbox.push(json.loads(data))
                elif opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                    self.closed.put((code, data[2:].decode("utf-8", "replace")))
                    return
        except Exception:  # the socket was shut down
            self.closed.put((None, ""))
        finally:
            self.ended.set()

    def send(self, command):
        """Sends `command` with a fresh id; returns the ack or error frame answering it."""
        request_id = self.next_id
        self.next_id += 1
        self.ws.send(json.dumps({**command, "id": request_id}))
        return self.inbox.wait_for(
            lambda f: f["type"] in ("ack", "error") and f.get("id") == request_id, f"reply to {command}"
        )

    def close_code(self):
        """``(code, reason)`` of the server's close, within the timeout."""
        try:
            return self.closed.get(timeout=self.timeout)
        except queue.Empty:
            raise AssertionError(f"{self.name}: not closed within {self.timeout} s; got {self.inbox.snapshot()!r}") from None

    def close(self):
        """A clean close (1000), answered by the server, then the socket is shut down."""
        try:
            if not self.ended.is_set():
                self.ws.send_close()
                self.ended.wait(self.timeout)
        except Exception:
            pass
        try:
            self.ws.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader if it still waits
        except Exception:
            pass
        self.ws.shutdown()
