"""The Python client's call overhead against raw HTTP: N publishes to a room
nobody is in, through roomcast.Client and through a bare httpx.Client (one
keep-alive connection each), alternated, median of 5 runs.

    cargo build --release -p roomcast-cli
    python3 bench/python_client.py [--calls 2000]
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python" / "src"))
import roomcast  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    proc = subprocess.Popen(
        [str(ROOT / "target/release/roomcast"), "serve", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        url = line.split("http://")[1].split()[0]
        url = "http://" + url
        client = roomcast.Client(url)
        raw = httpx.Client(base_url=url)
        body = {"room": "bench", "event": "e", "data": {"n": 1}}

        def via_client():
            for _ in range(a.calls):
                client.publish("bench", "e", {"n": 1})

        def via_raw():
            for _ in range(a.calls):
                r = raw.post("/api/publish", json=body)
                r.raise_for_status()
                r.json()

        times = {"roomcast.Client": [], "httpx": []}
        for _ in range(a.runs):
            for name, f in (("roomcast.Client", via_client), ("httpx", via_raw)):
                t = time.perf_counter()
                f()
                times[name].append((time.perf_counter() - t) / a.calls * 1e6)
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, v in times.items():
            print(f"{k:16} median {med[k]:7.1f} µs/call  runs {', '.join(f'{x:.1f}' for x in v)}")
        print(f"overhead: {med['roomcast.Client'] - med['httpx']:+.1f} µs/call, ratio {med['roomcast.Client'] / med['httpx']:.3f}")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
