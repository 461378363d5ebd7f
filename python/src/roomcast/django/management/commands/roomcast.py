"""``python manage.py roomcast``: runs the bundled roomcast server for
development, configured from ``ROOMCAST``: its proxies and webhooks point back
at this Django (``BACKEND_URL``), with the shared secret and the API key.
``ROOMCAST["SERVER"]`` adds any other roomcast.toml setting (``rooms``,
``limits``, ``broker``...). ``--print-config`` shows the file instead."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from typing import Any
from urllib.parse import urlparse

from django.core.management.base import BaseCommand, CommandError

from ....server import executable
from ... import conf


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise CommandError(f"ROOMCAST['SERVER']: cannot write {v!r} in TOML")


def to_toml(config: dict[str, Any]) -> str:
    """A TOML document of ``config``: scalars, then tables, then arrays of tables (``rooms``)."""
    lines: list[str] = []
    scalars = {k: v for k, v in config.items() if not isinstance(v, dict) and not _tables(v)}
    for k, v in scalars.items():
        lines.append(f"{k} = {toml_value(v)}")
    for k, v in config.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            for kk, vv in v.items():
                if isinstance(vv, dict):
                    lines.append(f"{kk} = {toml_value(vv)}")
                else:
                    lines.append(f"{kk} = {toml_value(vv)}")
    for k, v in config.items():
        if _tables(v):
            for item in v:
                lines.append(f"\n[[{k}]]")
                lines.extend(f"{kk} = {toml_value(vv)}" for kk, vv in item.items())
    return "\n".join(lines) + "\n"


def _tables(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def server_config(listen: str) -> dict[str, Any]:
    """roomcast's configuration for this Django."""
    backend = str(conf.get("BACKEND_URL")).rstrip("/") + "/"
    api_key = conf.get("API_KEY")
    config: dict[str, Any] = {
        "listen": listen,
        "auth": {"mode": "proxy", "anonymous": "allow" if conf.get("ANONYMOUS") else "deny"},
        "proxy": {
            "secret": conf.secret(),
            "connect_url": backend + "connect",
            "subscribe_url": backend + "subscribe",
            "rpc_url": backend + "rpc",
            "webhook_url": backend + "webhook",
        },
    }
    if api_key:
        config["api"] = {"key": api_key}
    for key, value in dict(conf.get("SERVER")).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


class Command(BaseCommand):
    help = "Runs the bundled roomcast server, its proxies and webhooks pointing at this Django (development)."

    def add_arguments(self, parser: Any) -> None:
        default = urlparse(str(conf.get("URL")))
        parser.add_argument(
            "--listen",
            default=f"{default.hostname or '127.0.0.1'}:{default.port or 8700}",
            help="address to listen on (default: the host and port of ROOMCAST['URL'])",
        )
        parser.add_argument("--print-config", action="store_true", help="print roomcast.toml and exit")

    def handle(self, *args: Any, **options: Any) -> None:
        text = to_toml(server_config(options["listen"]))
        if options["print_config"]:
            self.stdout.write(text)
            return
        with tempfile.NamedTemporaryFile("w", suffix=".toml", prefix="roomcast-", delete=False) as f:
            f.write(text)
        # The package's own variables are not server settings.
        env = {k: v for k, v in os.environ.items() if k not in ("ROOMCAST_BIN", "ROOMCAST_URL")}
        server = subprocess.Popen([executable(), "serve", "--config", f.name], env=env)

        def stop(signum: int, frame: Any) -> None:
            # Stopping this command stops the server (it drains and exits)
            # instead of leaving it running without a parent.
            server.terminate()

        previous = signal.signal(signal.SIGTERM, stop)
        try:
            code = server.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the server too (same process group): let it drain.
            code = server.wait()
            code = 0
        finally:
            signal.signal(signal.SIGTERM, previous)
            if server.poll() is None:
                server.kill()
                server.wait()
            os.unlink(f.name)
        if code:
            sys.exit(code)
