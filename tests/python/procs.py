"""Child processes of the client tests (roomcast, redis-server, Django), with
their recent output kept for failure messages (shared by the client tests)."""

import queue
import re
import socket
import subprocess
import threading
import time

#: Bound for a process to exit after SIGTERM, then after SIGKILL (seconds).
EXIT = 10.0


class Process:
    """A child process whose output is kept (last 200 lines) for failure messages."""

    def __init__(self, name, args, env, cwd=None):
        self.name = name
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines = queue.Queue()
        self.output = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))
            del self.output[:-200]
            self.lines.put(line)
        self.lines.put(None)

    def tail(self, n=40):
        return "\n".join(self.output[-n:])

    def wait_for_line(self, pattern, timeout):
        """The match of the first output line matching `pattern`, within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{self.name} printed no line matching {pattern!r} within {timeout} s") from None
            if line is None:
                raise AssertionError(f"{self.name} exited ({self.proc.wait(timeout=EXIT)}) before printing {pattern!r}")
            m = re.search(pattern, line)
            if m:
                return m

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=EXIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=EXIT)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(what, condition, timeout=10.0):
    """The first truthy value of `condition()`, polled until `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # poll interval, bounded by the deadline
