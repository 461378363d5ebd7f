#!/usr/bin/env python3
"""Measures what roomcast's security features cost, on this machine, on 127.0.0.1.

    python3 bench/security.py [--out target/bench/security.jsonl] [--runs 3]

Needs target/release/roomcast and target/release/roomcast-bench (scripts/bench-security
builds them). Every case starts a fresh roomcast on a free loopback port and stops it.

- connect: `roomcast-bench idle` opens 2000 native connections (20 at a time, below the listen backlog, so a dropped SYN does not stall the run) to a node in
  open mode (no credentials), then with an HS256, an RS256 and an ES256 token at the
  upgrade; the connect rate of each, and its ratio to open mode in the same run.
- rpc: `roomcast-bench rpc` (50 callers, 5 s per phase) against a backend the generator
  serves: the same calls straight to the backend, then as client events through roomcast's
  event proxy (native and Socket.IO); round trips per second, latency, and the ratio.

One JSON line per run goes to --out; `python3 bench/report.py --security FILE` writes the
"Security features" section of docs/benchmarks.md from it.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOMCAST = os.path.join(ROOT, "target/release/roomcast")
BENCH = os.path.join(ROOT, "target/release/roomcast-bench")


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def signing_input(alg, claims):
    return f"{b64(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}"


def der_to_raw(der, size=32):
    """An ECDSA DER signature (SEQUENCE of two INTEGERs) as r || s."""
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    out = b""
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        v = der[i + 2:i + 2 + n].lstrip(b"\0")
        out += v.rjust(size, b"\0")
        i += 2 + n
    return out


def tokens(tmp):
    """(name, config lines, token) for each algorithm; keys made with openssl."""
    claims = {"sub": "bench", "exp": int(time.time()) + 3600}
    secret = "bench-secret-" + "x" * 32
    si = signing_input("HS256", claims)
    hs = si + "." + b64(hmac.new(secret.encode(), si.encode(), hashlib.sha256).digest())
    rsa, rsa_pub = os.path.join(tmp, "rsa.pem"), os.path.join(tmp, "rsa.pub")
    ec, ec_pub = os.path.join(tmp, "ec.pem"), os.path.join(tmp, "ec.pub")
    subprocess.run(["openssl", "genrsa", "-out", rsa, "2048"], check=True, capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", rsa, "-pubout", "-out", rsa_pub], check=True, capture_output=True)
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", ec + ".sec1"],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", ec + ".sec1", "-out", ec],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "ec", "-in", ec, "-pubout", "-out", ec_pub], check=True, capture_output=True)

    def sign(alg, key):
        si = signing_input(alg, claims)
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=si.encode(),
                             check=True, capture_output=True).stdout
        return si + "." + b64(der_to_raw(sig) if alg == "ES256" else sig)

    return [
        ("open", [], None),
        ("HS256", ['algorithm = "HS256"', f'secret = "{secret}"'], hs),
        ("RS256", ['algorithm = "RS256"', f'public_key_file = "{rsa_pub}"'], sign("RS256", rsa)),
        ("ES256", ['algorithm = "ES256"', f'public_key_file = "{ec_pub}"'], sign("ES256", ec)),
    ]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """A roomcast process on a free port, with a config file."""

    def __init__(self, tmp, config_lines, env=None):
        self.port = free_port()
        path = os.path.join(tmp, f"node-{self.port}.toml")
        with open(path, "w") as f:
            f.write(f'listen = "127.0.0.1:{self.port}"\nlog = "warn"\n' + "\n".join(config_lines) + "\n")
        self.proc = subprocess.Popen([ROOMCAST, "serve", "--config", path], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})}, text=True)
        line = self.proc.stdout.readline()
        if "listening" not in line:
            raise SystemExit(f"roomcast did not start: {line!r}")
        self.addr = f"127.0.0.1:{self.port}"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def bench(*args):
    out = subprocess.run([BENCH, *args], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        return {"status": "failed", "stderr": out.stderr.strip()[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "target/bench/security.jsonl"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", type=int, default=2000)
    opts = ap.parse_args()
    os.makedirs(os.path.dirname(opts.out), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, open(opts.out, "w") as out:
        cases = tokens(tmp)
        for run in range(opts.runs):
            for name, jwt, token in cases:
                lines = ['[auth]', 'mode = "token"', '[auth.jwt]', *jwt] if jwt else []
                node = Node(tmp, lines)
                try:
                    args = ["idle", "--addr", node.addr, "--clients", str(opts.clients), "--hold", "0.2",
                            "--connect-concurrency", "20", "--pid", str(node.proc.pid), "--label", name]
                    if token:
                        args += ["--token", token]
                    r = bench(*args)
                finally:
                    node.stop()
                r.update(case="connect", auth=name, run=run)
                out.write(json.dumps(r) + "\n")
                out.flush()
                print(f"connect {name:6} run {run}: {r.get('connect_rate', r.get('status'))}", file=sys.stderr)
            for proto in ("native", "socketio"):
                backend = free_port()
                node = Node(tmp, ["[proxy]", f'rpc_url = "http://127.0.0.1:{backend}/rpc"'])
                try:
                    r = bench("rpc", "--addr", node.addr, "--backend", f"127.0.0.1:{backend}", "--clients", "50",
                              "--duration", "5", "--protocol", proto, "--label", "roomcast " + proto)
                finally:
                    node.stop()
                r.update(case="rpc", run=run)
                out.write(json.dumps(r) + "\n")
                out.flush()
                print(f"rpc {proto:8} run {run}: {r.get('proxied', {}).get('calls_per_sec', r.get('status'))}",
                      file=sys.stderr)
    print(f"wrote {os.path.relpath(opts.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
