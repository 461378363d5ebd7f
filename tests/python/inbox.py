"""What a test client received, with bounded waits (shared by the client tests)."""

import threading


class Inbox:
    """Items pushed by a client's callbacks; ``wait_for`` blocks until one matches."""

    def __init__(self, name, timeout):
        self.name = name
        self.timeout = timeout
        self.items = []
        self.cond = threading.Condition()

    def push(self, item):
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def wait_for(self, pred, what, timeout=None):
        timeout = self.timeout if timeout is None else timeout
        with self.cond:
            found = []

            def check():
                found[:] = [m for m in self.items if pred(m)][:1]
                return bool(found)

            if not self.cond.wait_for(check, timeout=timeout):
                raise AssertionError(f"timed out after {timeout} s: {self.name}: {what}; got {self.items!r}")
            return found[0]

    def snapshot(self):
        with self.cond:
            return list(self.items)
