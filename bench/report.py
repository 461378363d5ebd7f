#!/usr/bin/env python3
"""Turns the results of `scripts/bench` into docs/benchmarks.md and docs/bench/*.png.

Usage: python3 bench/report.py target/bench/results.jsonl [--out docs/benchmarks.md] [--charts docs/bench]

results.jsonl holds one JSON object per run (roomcast-bench's output plus what
scripts/bench adds: server, label, case, mode, status, bench_cmd, server_cmd,
wall_seconds, server_cpu_pct, server_rss_peak_kb, timeout_s). meta.json next to
it (written by scripts/bench) gives the mode, start time and duration.
"""

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import re
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SERVER_ORDER = [
    "roomcast-native",
    "roomcast-socketio",
    "socketioxide",
    "node-socketio",
    "python-socketio",
    "forwarder",
    "channels",
]
ROOMCASTS = ["roomcast-native", "roomcast-socketio"]
COLORS = {
    "roomcast-native": "#1f5fbf",
    "roomcast-socketio": "#6fa0e8",
    "socketioxide": "#d9822b",
    "node-socketio": "#3a9e4f",
    "python-socketio": "#b8443e",
    "forwarder": "#7f7f7f",
    "channels": "#8a5cb8",
}
DESCRIPTION = {
    "roomcast-native": "roomcast, native JSON protocol at /ws",
    "roomcast-socketio": "roomcast, Socket.IO v5 at /socket.io/ (built-in join/publish events)",
    "socketioxide": "Rust, socketioxide on axum (Socket.IO)",
    "node-socketio": "Node.js, the reference socket.io server",
    "python-socketio": "Python, python-socketio ASGI app under uvicorn (uvloop)",
    "forwarder": "Rust, a plain tokio-tungstenite group-chat forwarder: calibration, the least work a server can do",
    "channels": "Python, Django Channels under daphne, in-memory channel layer (plain group chat)",
}
PROTOCOL_OF = {}
KERNEL_KB_PER_SOCKET = 4.0  # order of the kernel's memory for one idle TCP socket (not in RSS)


# --- small helpers -----------------------------------------------------------------


def sh(*cmd, cwd=None):
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=20)
        return (out.stdout or out.stderr).rstrip().strip("\n")
    except (OSError, subprocess.SubprocessError):
        return ""


def fmt_num(v, digits=0):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def fmt_ms(v):
    if v is None:
        return "–"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_ratio(x):
    if x is None or x <= 0 or math.isinf(x):
        return "–"
    if x >= 10:
        return f"{x:.0f}×"
    if x < 0.1:
        return f"{x:.2g}×"
    return f"{x:.2f}×" if x < 1 else f"{x:.1f}×"


def human_kb(kb):
    if kb >= 1024 * 1024:
        return f"{kb / 1024 / 1024:.1f} GiB"
    if kb >= 1024:
        return f"{kb / 1024:.0f} MiB"
    return f"{kb:.0f} KiB"


def bench_args(rec):
    """The roomcast-bench arguments of a run, from its recorded command."""
    args = {}
    for k, v in re.findall(r"--([a-z-]+) (\S+)", rec.get("bench_cmd", "")):
        args[k] = v
    return args


def server_key(name):
    return SERVER_ORDER.index(name) if name in SERVER_ORDER else len(SERVER_ORDER)


def case_key(case):
    order = ["idle", "fanout-burst", "fanout-latency", "rooms", "churn"]
    kind = next((i for i, p in enumerate(order) if case.startswith(p)), len(order))
    m = re.search(r"(\d+)k\b", case)
    size = int(m.group(1)) * 1000 if m else int((re.findall(r"\d+", case) or [0])[0])
    if kind == 2:
        size = -size  # the larger latency case first
    return (kind, size, case)


def clean(r):
    return is_ok(r) and not r.get("lost")


def collapse(rows):
    """One row per (server, case). Repeated runs (all clean) are shown by their median
    run on the case's headline metric; if any repeat was not clean, that run is shown."""
    groups = {}
    for r in rows:
        groups.setdefault((r["server"], r["case"]), []).append(r)
    out = []
    for (_, case), rs in groups.items():
        bad = [r for r in rs if not clean(r)]
        if bad:
            rep = dict(bad[0])
        else:
            _, get, _ = headline(case)
            ordered = sorted(rs, key=lambda r: get(r) or 0)
            rep = dict(ordered[(len(ordered) - 1) // 2])
        rep["_runs"] = rs
        out.append(rep)
    return out


def spread_cell(r, get):
    runs = [x for x in r.get("_runs", []) if clean(x) and get(x) is not None]
    if not is_ok(r):
        return "–"
    if len(r.get("_runs", [])) <= 1:
        return "1 run"
    if len(runs) < len(r["_runs"]):
        return f"{len(r['_runs'])} runs, {len(r['_runs']) - len(runs)} not clean"
    lo, hi = min(get(x) for x in runs), max(get(x) for x in runs)
    return f"{len(runs)} runs: {lo / 1e6:.2f}M – {hi / 1e6:.2f}M" if hi >= 1e5 else f"{len(runs)} runs: {lo:,.0f} – {hi:,.0f}"


def lost_fraction(r):
    exp = r.get("expected") or 0
    return (r.get("lost") or 0) / exp if exp else 0.0


def is_ok(r):
    return r.get("status") == "ok"


def status_cell(r):
    s = r.get("status")
    if s == "ok":
        if r.get("lost"):
            return f"⚠ lost {100 * lost_fraction(r):.1f}%"
        return "ok"
    if s == "timeout":
        return f"⏱ **timeout** ({r.get('timeout_s', 0):.0f} s)"
    if s == "start_failed":
        return "✗ **did not start**"
    if s == "server_died":
        return "✗ **server died**"
    if s == "missing":
        return "✗ missing"
    err = (r.get("error") or "").strip()
    err = err.replace("|", "/").replace("roomcast-bench: ", "")[:80]
    return f"✗ **error**: {err}" if err else "✗ **error**"


def flag_suffix(r):
    if r is None:
        return " (not run)"
    if not is_ok(r):
        return " (" + {"timeout": "timeout", "start_failed": "did not start"}.get(r["status"], r["status"]) + ")"
    if r.get("lost"):
        return f" (lost {100 * lost_fraction(r):.1f}%)"
    return ""


# --- machine and versions ---------------------------------------------------------------


def machine_info():
    cpu = ""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    free = sh("free", "-h")
    return {
        "nproc": sh("nproc"),
        "cpu": cpu or "unknown",
        "kernel": sh("uname", "-sr"),
        "free": free,
    }


def lock_version(lockfile, crate):
    try:
        text = open(lockfile, encoding="utf-8").read()
    except OSError:
        return None
    m = re.search(r'name = "' + re.escape(crate) + r'"\nversion = "([^"]+)"', text)
    return m.group(1) if m else None


def py_version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def node_pkg_version(pkg):
    path = os.path.join(ROOT, "bench/peers/node-socketio/node_modules", pkg, "package.json")
    try:
        return json.load(open(path, encoding="utf-8")).get("version")
    except (OSError, ValueError):
        return None


def versions():
    ws_version = None
    try:
        m = re.search(r'\[workspace\.package\][^\[]*?version = "([^"]+)"', open(os.path.join(ROOT, "Cargo.toml")).read(), re.S)
        ws_version = m.group(1) if m else None
    except OSError:
        pass
    commit = sh("git", "rev-parse", "--short", "HEAD", cwd=ROOT)
    dirty = sh("git", "status", "--porcelain", "--untracked-files=no", cwd=ROOT)
    peers = os.path.join(ROOT, "bench/peers")

    def join(*pairs):
        return ", ".join(f"{n} {v}" for n, v in pairs if v) or "unknown"

    return {
        "toolchain": [
            ("rustc", sh("rustc", "--version")),
            ("node", sh("node", "--version")),
            ("python", sys.version.split()[0] + f" ({sys.executable.replace(ROOT + '/', '')})"),
        ],
        "servers": {
            "roomcast-native": join(("roomcast", ws_version), ("commit", (commit + (" + local changes" if dirty else "")) if commit else None),
                                    ("tokio", lock_version(os.path.join(ROOT, "Cargo.lock"), "tokio")),
                                    ("axum", lock_version(os.path.join(ROOT, "Cargo.lock"), "axum"))),
            "socketioxide": join(("socketioxide", lock_version(f"{peers}/socketioxide/Cargo.lock", "socketioxide")),
                                 ("axum", lock_version(f"{peers}/socketioxide/Cargo.lock", "axum")),
                                 ("tokio", lock_version(f"{peers}/socketioxide/Cargo.lock", "tokio"))),
            "node-socketio": join(("socket.io", node_pkg_version("socket.io")), ("engine.io", node_pkg_version("engine.io")),
                                  ("ws", node_pkg_version("ws")), ("bufferutil", node_pkg_version("bufferutil"))),
            "python-socketio": join(("python-socketio", py_version("python-socketio")), ("python-engineio", py_version("python-engineio")),
                                    ("uvicorn", py_version("uvicorn")), ("uvloop", py_version("uvloop")), ("websockets", py_version("websockets"))),
            "forwarder": join(("tokio-tungstenite", lock_version(f"{peers}/forwarder/Cargo.lock", "tokio-tungstenite")),
                              ("tokio", lock_version(f"{peers}/forwarder/Cargo.lock", "tokio"))),
            "channels": join(("Django", py_version("Django")), ("channels", py_version("channels")), ("daphne", py_version("daphne")),
                             ("Twisted", py_version("Twisted")), ("autobahn", py_version("autobahn"))),
        },
    }


# --- charts ----------------------------------------------------------------------------


def plain_log_axis(axis, lo, hi):
    """Log scale with ticks at 1, 2, 5 × 10^k, labelled as plain numbers."""
    axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_minor_locator(matplotlib.ticker.NullLocator())

    def fmt(x, _):
        if x >= 1e6:
            return f"{x / 1e6:g}M"
        if x >= 1e4:
            return f"{x / 1e3:g}k"
        if x >= 1:
            return f"{x:,.0f}"
        return f"{x:g}"

    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(fmt))


def style_axes(ax):
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.grid(axis="x" if ax.get_xlabel() else "y", alpha=0.3)


def chart_latency(case, rows, path, title):
    """Grouped bars: p50/p90/p99/p99.9/max per server, log scale."""
    qs = [("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p999", "p99.9"), ("max", "max")]
    servers = [r for r in rows if r.get("latency_ms")]
    missing = [r for r in rows if not r.get("latency_ms")]
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    width = 0.8 / max(1, len(servers))
    for i, r in enumerate(servers):
        vals = [max(r["latency_ms"][q], 0.001) for q, _ in qs]
        xs = [j + (i - (len(servers) - 1) / 2) * width for j in range(len(qs))]
        bars = ax.bar(xs, vals, width * 0.95, label=r["label"] + flag_suffix(r), color=COLORS.get(r["server"], None),
                      hatch="//" if (r.get("lost") or not is_ok(r)) else None, edgecolor="white", linewidth=0.3)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v * 1.08, fmt_ms(v), ha="center", va="bottom", fontsize=6.5, rotation=90)
    ax.set_yscale("log")
    allv = [max(r["latency_ms"][q], 0.001) for r in servers for q, _ in qs] or [1.0]
    ax.set_ylim(min(allv) / 1.6, max(allv) * 4)
    plain_log_axis(ax.yaxis, None, None)
    ax.set_xticks(range(len(qs)))
    ax.set_xticklabels([n for _, n in qs])
    ax.set_ylabel("publish → receive latency, ms (log scale)")
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.legend(fontsize=8, loc="upper left", ncol=2, frameon=False)
    if missing:
        ax.text(0.99, 0.98, "no latency figures: " + ", ".join(r["label"] + flag_suffix(r) for r in missing),
                transform=ax.transAxes, ha="right", va="top", fontsize=8, color="#b8443e")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def chart_hbars(rows, value, path, title, xlabel, fmt):
    """Horizontal bars, one per server (top to bottom in server order)."""
    rows = list(rows)
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(rows) + 1.6), dpi=110)
    labels, vals = [], []
    for r in rows:
        v = value(r)
        labels.append(r["label"] + flag_suffix(r))
        vals.append(v if v is not None else 0)
    ys = list(range(len(rows)))[::-1]
    bars = ax.barh(ys, vals, color=[COLORS.get(r["server"], "#999") for r in rows],
                   hatch=None, edgecolor="white")
    for b, r in zip(bars, rows):
        if r.get("lost") or not is_ok(r):
            b.set_hatch("//")
    vmax = max(vals) if vals and max(vals) > 0 else 1
    for y, v, r in zip(ys, vals, rows):
        text = fmt(v) if value(r) is not None else "no result"
        ax.text(v + vmax * 0.01, y, text, va="center", fontsize=9)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=9)
    ax.set_xlim(0, vmax * 1.22)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=11)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
    style_axes(ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def chart_vs_subscribers(series, path, title):
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    for server, pts in series:
        pts = sorted(pts)
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        label = pts[0][2]
        ax.plot(xs, ys, marker="o", label=label, color=COLORS.get(server))
        lo = [p[1] - p[4] for p in pts]
        hi = [p[5] - p[1] for p in pts]
        if any(lo) or any(hi):
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="none", ecolor=COLORS.get(server), capsize=4, alpha=0.7)
        for x, y, _, bad, _, _ in pts:
            if bad:
                ax.plot([x], [y], marker="x", color="#b8443e", markersize=11, mew=2)
    xs_all = sorted({p[0] for _, pts in series for p in pts})
    ys_all = [v for _, pts in series for p in pts for v in (p[4], p[5]) if v > 0] or [1]
    ax.set_xscale("log")
    ax.set_xticks(xs_all)
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.set_xlim(xs_all[0] / 1.3, xs_all[-1] * 1.3)
    if max(ys_all) / min(ys_all) > 8:
        ax.set_yscale("log")
        ax.set_ylim(min(ys_all) / 2, max(ys_all) * 2)
        plain_log_axis(ax.yaxis, None, None)
        ax.set_ylabel("deliveries per second (log scale)")
    else:
        ax.set_ylim(0, max(ys_all) * 1.15)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1e6:g}M" if x >= 1e6 else f"{x:,.0f}"))
        ax.set_ylabel("deliveries per second")
    ax.set_xlabel("subscribers in the room (log scale)")
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="median run;\nbars: min–max of repeats;\nred ×: lost messages", title_fontsize=7.5,
              alignment="left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- the page --------------------------------------------------------------------------


def describe_case(case, rows):
    """One sentence saying what a case measures, from the arguments of its runs."""
    a = bench_args(rows[0]) if rows else {}
    n = int(a.get("clients", 0) or 0)
    if case.startswith("idle"):
        return (f"{n:,} WebSocket connections opened (200 at a time) and held for {a.get('hold', '?')} s; the "
                "server's resident memory (RSS, from /proc) is read before the first and after the last; "
                "memory per connection = (after − before) ÷ connections. Socket.IO connections have completed "
                "the namespace handshake; native and plain ones are simply open.")
    if case.startswith("fanout-burst"):
        return (f"One room, {n:,} subscribers, one publisher that sends {a.get('messages', '?')} messages of ~100 bytes as "
                f"fast as it can ({int(a.get('messages', 0) or 0) * n:,} deliveries expected); deliveries/s counts from the "
                f"first publish to the last delivery; the bench waits at most {a.get('drain', '?')} s after the last publish. "
                "Latency here is mostly queueing: it measures how long the burst takes to drain.")
    if case.startswith("fanout-latency"):
        return (f"One room, {n:,} subscribers, one publisher at a steady {a.get('rate', '?')} messages/s for "
                f"{a.get('duration', '?')} s: latency from publish to each subscriber's receipt at a load the server "
                "should keep up with (publisher and subscribers share one process and clock: no skew). When the "
                "server's and the client's CPU add up to nearly 200%, both cores were busy and the latency includes "
                "waiting for a CPU. For a run that lost messages the percentiles cover only what arrived.")
    if case.startswith("rooms"):
        return (f"{a.get('rooms', '?')} rooms of {a.get('members', '?')} members; every member publishes once every "
                f"{int(a.get('interval-ms', 0) or 0) / 1000:g} s (spread evenly) for {a.get('duration', '?')} s, and every "
                "member of the room receives it (the sender too): the chat-application shape.")
    if case.startswith("churn"):
        return (f"A fanout of {n:,} subscribers at {a.get('rate', '?')} messages/s for {a.get('duration', '?')} s while "
                f"{a.get('cycles', '?')} new connections per second connect, join the room and disconnect: does churn "
                "disturb the steady subscribers?")
    return ""


def headline(case):
    """(metric name, getter, higher_is_better) for a case's ratio table."""
    if case.startswith("idle"):
        return ("memory per connection", lambda r: r.get("rss_per_conn_kb"), False)
    if case.startswith("fanout-burst"):
        return ("deliveries/s", lambda r: r.get("deliveries_per_sec"), True)
    return ("p99 latency", lambda r: (r.get("latency_ms") or {}).get("p99"), False)


def ratio_table(case, rows, lines):
    name, get, higher = headline(case)
    refs = [r for r in rows if r["server"] in ROOMCASTS and is_ok(r) and get(r)]
    peers = [r for r in rows if r["server"] not in ROOMCASTS]
    if not refs or not peers:
        return
    lines.append("")
    lines.append(f"roomcast ÷ peer, {name} ({'higher' if higher else 'lower'} is better, so "
                 f"{'> 1×' if higher else '< 1×'} means roomcast is ahead):")
    lines.append("")
    lines.append("| peer | " + " | ".join(f"{r['label']} ÷ peer" for r in refs) + " |")
    lines.append("|---|" + "---:|" * len(refs))
    for p in peers:
        cells = []
        for r in refs:
            pv = get(p) if is_ok(p) else None
            if pv is None or pv <= 0:
                cells.append("n/a" + flag_suffix(p))
            else:
                note = " ⚠" if (p.get("lost") or r.get("lost")) else ""
                cells.append(f"{r['label']} ÷ {p['label']} = {fmt_ratio(get(r) / pv)}{note}")
        lines.append(f"| {p['label']}{flag_suffix(p)} | " + " | ".join(cells) + " |")


def case_table(case, rows, lines):
    if case.startswith("idle"):
        lines.append("| server | protocol | status | connections | connects/s | RSS before | RSS after | "
                     "RSS per connection | + kernel ≈ per connection |")
        lines.append("|---|---|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            pc = r.get("rss_per_conn_kb")
            lines.append("| " + " | ".join([
                r["label"], r.get("protocol", ""), status_cell(r), fmt_num(r.get("clients")),
                fmt_num(r.get("connect_rate")),
                human_kb(r["rss_before_kb"]) if r.get("rss_before_kb") else "–",
                human_kb(r["rss_after_kb"]) if r.get("rss_after_kb") else "–",
                f"{pc:.1f} KB" if pc is not None else "–",
                f"{pc + KERNEL_KB_PER_SOCKET:.1f} KB" if pc is not None else "–",
            ]) + " |")
        return
    churn = case.startswith("churn")
    rooms = case.startswith("rooms")
    head = ["server", "protocol", "status", "deliveries/s", "delivered / expected", "lost",
            "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "server CPU", "client CPU", "server RSS"]
    if not rooms:
        head.append("RSS Δ per subscriber")
    if rooms:
        head.insert(3, "publishes/s")
    burst = case.startswith("fanout-burst")
    if churn:
        head.append("churn cycles/s")
    if burst:
        head.insert(4, "deliveries/s over runs")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|---|---|---|" + "---:|" * (len(head) - 3))
    for r in rows:
        lat = r.get("latency_ms") or {}
        rss_after = r.get("rss_after_kb")
        rss_before = r.get("rss_before_kb")
        n = r.get("clients") or 0
        delta = None
        if rss_after and n:
            # rooms has no "before": the server's start-up RSS is small next to 10k members
            delta = (rss_after - (rss_before or 0)) / n if rss_before else None
        cells = [r["label"], r.get("protocol", ""), status_cell(r)]
        if rooms:
            cells.append(fmt_num(r.get("publishes_per_sec")))
        cells.append(fmt_num(r.get("deliveries_per_sec")))
        if burst:
            cells.append(spread_cell(r, lambda x: x.get("deliveries_per_sec")))
        cells += [
            f"{fmt_num(r.get('delivered'))} / {fmt_num(r.get('expected'))}" if r.get("expected") is not None else "–",
            (f"**{r['lost']:,}**" if r.get("lost") else "0") if r.get("expected") is not None else "–",
        ]
        cells += [fmt_ms(lat.get(q)) for q in ("p50", "p90", "p99", "p999", "max")]
        cells += [
            f"{r['server_cpu_pct']:.0f}%" if r.get("server_cpu_pct") is not None else "–",
            f"{r['client_cpu_pct']:.0f}%" if r.get("client_cpu_pct") is not None else "–",
            human_kb(rss_after) if rss_after else "–",
        ]
        if not rooms:
            cells.append(f"{delta:.1f} KB" if delta is not None else "–")
        if churn:
            cells.append(fmt_num(r.get("churn_cycles_per_sec"), 1))
        lines.append("| " + " | ".join(cells) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/benchmarks.md"))
    ap.add_argument("--charts", default=os.path.join(ROOT, "docs/bench"))
    opts = ap.parse_args()

    records = []
    for line in open(opts.results, encoding="utf-8"):
        line = line.strip()
        if line:
            records.append(json.loads(line))
    meta = {}
    meta_path = os.path.join(os.path.dirname(os.path.abspath(opts.results)), "meta.json")
    if os.path.exists(meta_path):
        meta = json.load(open(meta_path, encoding="utf-8"))
    mode = meta.get("mode") or (records[0].get("mode") if records else "?")
    started = meta.get("started")
    when = (datetime.datetime.fromtimestamp(started, datetime.timezone.utc) if started
            else datetime.datetime.now(datetime.timezone.utc))
    os.makedirs(opts.charts, exist_ok=True)
    for f in os.listdir(opts.charts):
        if f.endswith(".png"):
            os.remove(os.path.join(opts.charts, f))
    chart_rel = os.path.relpath(opts.charts, os.path.dirname(os.path.abspath(opts.out)))

    runs = collapse([r for r in records if r.get("case") and r.get("case") != "(all)"])
    missing = [r for r in records if r.get("status") == "missing"]
    cases = sorted({r["case"] for r in runs}, key=case_key)
    by_case = {c: sorted([r for r in runs if r["case"] == c], key=lambda r: server_key(r["server"])) for c in cases}
    servers = sorted({r["server"] for r in records}, key=server_key)
    label_of = {r["server"]: r.get("label", r["server"]) for r in records}
    PROTOCOL_OF.update({r["server"]: r.get("protocol") for r in records})

    mi = machine_info()
    ver = versions()
    L = []
    L.append("# Benchmarks")
    L.append("")
    L.append(f"Generated by `scripts/bench {mode}` on {when:%Y-%m-%d %H:%M} UTC"
             + (f" (the whole run took {meta['duration_s'] // 60} min {meta['duration_s'] % 60} s)" if meta.get("duration_s") else "")
             + f", then `python3 bench/report.py target/bench/results.jsonl`. **Mode: {mode}**"
             + (" — small sizes that finish in a few minutes; run `scripts/bench full` for the 10k-connection figures."
                if mode == "quick" else " — the full sizes (10k subscribers, 10k–15k idle connections)."))
    L.append("")
    L.append("roomcast is measured twice — with its native protocol and with Socket.IO — next to servers that do "
             "the same job. Every server ran alone, one run at a time, as a fresh process per run, on 127.0.0.1, "
             "with the load generator `roomcast-bench` (crates/roomcast-bench) on the same machine.")
    L.append("")
    L.append("**Read these numbers as a comparison, not as capacity.** This machine has "
             f"{mi['nproc']} cores, shared by the server and the load generator: the generator's own CPU time "
             "(the *client CPU* column; 100% = one core) competes with the server's, so the fastest servers are "
             "partly limited by the client, and on a bigger machine every absolute figure would be higher.")
    L.append("")

    # problems first
    problems = [r for r in runs if not is_ok(r) or r.get("lost")]
    if problems or missing:
        L.append("**Runs that did not complete cleanly** (marked ⚠/⏱/✗ in the tables; the charts hatch or flag them). "
                 "*Lost* means deliveries that had not arrived when the bench stopped waiting (its `--drain` bound): "
                 "the server fell that far behind, or dropped them; the latency figures of such a run cover only what "
                 "arrived, and its deliveries/s only what it managed to deliver. *Timeout* means the run hit its hard "
                 "time limit and produced no figures.")
        L.append("")
        for r in missing:
            L.append(f"- {r['label']}: not run — its server was missing when the benchmark ran.")
        for r in problems:
            what = status_cell(r).replace("**", "")
            extra = ""
            if is_ok(r) and r.get("lost"):
                extra = f" ({r['lost']:,} of {r['expected']:,} deliveries)"
            L.append(f"- {r['label']}, {r['case']}: {what}{extra}")
        L.append("")

    # summary
    L.append("## Summary")
    L.append("")
    burst = [c for c in cases if c.startswith("fanout-burst")]
    latency = [c for c in cases if c.startswith("fanout-latency")]
    idle = [c for c in cases if c.startswith("idle") and c != "idle-15k"]
    cols = []
    if burst:
        cols.append((f"{burst[-1]}: deliveries/s", burst[-1], lambda r: fmt_num(r.get("deliveries_per_sec"))))
    for c in latency:
        cols.append((f"{c}: p50 / p99 ms", c, lambda r: f"{fmt_ms(r['latency_ms']['p50'])} / {fmt_ms(r['latency_ms']['p99'])}"
                     if r.get("latency_ms") else "–"))
    for c in [c for c in cases if c.startswith("rooms")]:
        cols.append((f"{c}: p99 ms", c, lambda r: fmt_ms(r["latency_ms"]["p99"]) if r.get("latency_ms") else "–"))
    if idle:
        cols.append((f"{idle[-1]}: KB per idle connection", idle[-1],
                     lambda r: f"{r['rss_per_conn_kb']:.1f}" if r.get("rss_per_conn_kb") is not None else "–"))
    if cols:
        L.append("| server | " + " | ".join(c[0] for c in cols) + " |")
        L.append("|---|" + "---:|" * len(cols))
        for s in servers:
            cells = []
            for _, c, f in cols:
                r = next((x for x in by_case.get(c, []) if x["server"] == s), None)
                if r is None:
                    no_rooms = PROTOCOL_OF.get(s) == "plain" and (c.startswith("rooms") or c.startswith("churn"))
                    cells.append("n/a (no rooms)" if no_rooms else "not run")
                elif not is_ok(r):
                    cells.append(status_cell(r).split(":")[0])
                else:
                    cells.append(f(r) + (" ⚠ lost" if r.get("lost") else ""))
            L.append(f"| {label_of[s]} | " + " | ".join(cells) + " |")
        L.append("")
        L.append("Plain-WebSocket peers (forwarder, channels) have no rooms: they run only the idle and fanout "
                 "scenarios. The forwarder is the calibration: it forwards every frame unchanged to every other "
                 "connection, with no protocol, no rooms and no bounded queues — roughly the least work a server "
                 "can do per delivery.")
        L.append("")

    # charts
    charts = []
    for c in latency:
        a = bench_args(by_case[c][0])
        p = os.path.join(opts.charts, f"latency-{c}.png")
        chart_latency(c, by_case[c], p, f"Fanout latency: {int(a.get('clients', 0)):,} subscribers, "
                                        f"{a.get('rate')} msg/s for {a.get('duration')} s ({mode} mode)")
        charts.append((c, f"latency-{c}.png", f"Latency percentiles, {c}"))
    if burst:
        c = burst[-1]
        a = bench_args(by_case[c][0])
        chart_hbars(by_case[c], lambda r: r.get("deliveries_per_sec") if is_ok(r) else None,
                    os.path.join(opts.charts, f"deliveries-{c}.png"),
                    f"Fanout burst: {int(a.get('clients', 0)):,} subscribers × {a.get('messages')} messages ({mode} mode)",
                    "deliveries per second (higher is better)", lambda v: f"{v:,.0f}/s")
        charts.append((c, f"deliveries-{c}.png", f"Deliveries per second, {c}"))
        if len(burst) > 1:
            series = []
            for s in servers:
                pts = []
                for c2 in burst:
                    for r in by_case[c2]:
                        if r["server"] == s and is_ok(r) and r.get("deliveries_per_sec"):
                            vals = [x["deliveries_per_sec"] for x in r["_runs"] if clean(x)] or [r["deliveries_per_sec"]]
                            pts.append((r["clients"], r["deliveries_per_sec"], r["label"], bool(r.get("lost")),
                                        min(vals), max(vals)))
                if pts:
                    series.append((s, pts))
            chart_vs_subscribers(series, os.path.join(opts.charts, "deliveries-vs-subscribers.png"),
                                 f"Fanout burst: deliveries/s vs subscribers ({mode} mode)")
            charts.append(("fanout-burst", "deliveries-vs-subscribers.png", "Deliveries per second vs subscribers"))
    if idle:
        c = idle[-1]
        rows = by_case[c]
        chart_hbars(rows, lambda r: r.get("rss_per_conn_kb") if is_ok(r) else None,
                    os.path.join(opts.charts, f"memory-{c}.png"),
                    f"Server memory per idle connection, {int(bench_args(rows[0]).get('clients', 0)):,} connections ({mode} mode)",
                    "KB of server RSS per connection (lower is better; kernel socket memory not included)",
                    lambda v: f"{v:.1f} KB")
        charts.append((c, f"memory-{c}.png", f"Memory per idle connection, {c}"))
    if charts:
        L.append("## Charts")
        L.append("")
        for _, f, alt in charts:
            L.append(f"![{alt}]({chart_rel}/{f})")
            L.append("")

    # per-case tables
    L.append("## Results by scenario")
    L.append("")
    L.append("Columns: *deliveries/s* — messages received by all subscribers per second, from the first publish to "
             "the last delivery; *lost* — expected deliveries that had not arrived when the bench stopped waiting; "
             "latency — publish to receipt, in ms, over every delivery; *server CPU* — the server process's CPU time "
             "over the run's wall time (100% = one core; the run includes connecting); *client CPU* — the same for "
             "roomcast-bench during the publish phase; *server RSS* — resident memory after the run; "
             "*RSS Δ per subscriber* — its growth over the run ÷ connections (includes queued messages). "
             "The burst runs are short and vary by tens of percent from one run to the next on this shared "
             "2-core machine, so each is repeated (3 times, unless a run fails or loses messages) and the table "
             "shows the median run with the range; other scenarios ran once.")
    L.append("")
    for c in cases:
        rows = by_case[c]
        L.append(f"### {c}")
        L.append("")
        L.append(describe_case(c, rows))
        L.append("")
        case_table(c, rows, L)
        ratio_table(c, rows, L)
        L.append("")

    # memory extrapolation
    idle_all = [r for c in cases if c.startswith("idle") for r in by_case[c] if is_ok(r) and r.get("rss_per_conn_kb") is not None]
    if idle_all:
        best = {}
        for r in idle_all:  # the largest idle run of each server
            if r["server"] not in best or r["clients"] > best[r["server"]]["clients"]:
                best[r["server"]] = r
        L.append("## Memory at larger connection counts")
        L.append("")
        L.append("What one connection costs has two parts. The server's user-space memory — its task, buffers, "
                 "protocol state — is what RSS shows, measured above per connection. The kernel's part is not in RSS: "
                 f"an idle TCP socket with empty buffers costs roughly {KERNEL_KB_PER_SOCKET:.0f} KB (socket, sock and "
                 "inode structures, the file, the epoll entry); its send and receive buffers grow while data is in "
                 "flight (up to `net.ipv4.tcp_wmem`/`tcp_rmem`). For idle connections the total is therefore about "
                 f"*RSS per connection + {KERNEL_KB_PER_SOCKET:.0f} KB*, on top of the process's start-up RSS. "
                 "Extrapolating linearly from the measured figure (an estimate: allocators and hash tables grow in "
                 "steps, and a busy connection holds more):")
        L.append("")
        L.append("| server | measured at | user-space per connection | + kernel ≈ | 100,000 connections | 1,000,000 connections |")
        L.append("|---|---:|---:|---:|---:|---:|")
        for s in sorted(best, key=server_key):
            r = best[s]
            pc = r["rss_per_conn_kb"]
            total = pc + KERNEL_KB_PER_SOCKET
            base = r.get("rss_before_kb") or 0
            L.append(f"| {r['label']} | {r['clients']:,} | {pc:.1f} KB | {total:.1f} KB | "
                     f"≈ {human_kb(base + 100_000 * total)} | ≈ {human_kb(base + 1_000_000 * total)} |")
        L.append("")
        L.append(f"These counts cannot be run on this machine as it is: a process may hold at most "
                 f"{meta.get('nofile', 20000):,} open files here (the hard `ulimit -n`), and every connection is one "
                 "file descriptor in the server and one in the load generator. 100k connections need a higher "
                 "`ulimit -n` (and `fs.nr_open`); 1M also needs `fs.file-max`, enough source addresses or ports on the "
                 "client side (roomcast-bench spreads its connections over 127.x.y.z for that), and memory for the "
                 "clients as well — in practice several client machines.")
        L.append("")

    # machine and versions
    L.append("## Machine and versions")
    L.append("")
    L.append(f"- CPU: {mi['cpu']}, `nproc` = {mi['nproc']}")
    L.append(f"- kernel: {mi['kernel']}")
    L.append(f"- open files per process: {meta.get('nofile', '?')} (`ulimit -n`, set by scripts/bench)")
    L.append("- memory (`free -h`):")
    L.append("")
    L.append("  ```")
    for line in mi["free"].splitlines():
        L.append("  " + line)
    L.append("  ```")
    L.append("")
    for n, v in ver["toolchain"]:
        L.append(f"- {n}: {v or 'not found'}")
    L.append("")
    L.append("| server | what it is | versions |")
    L.append("|---|---|---|")
    for s in servers:
        vkey = "roomcast-native" if s in ROOMCASTS else s
        L.append(f"| {label_of[s]} | {DESCRIPTION.get(s, '')} | {ver['servers'].get(vkey, 'unknown')} |")
    L.append("")

    # commands
    L.append("## Exact commands")
    L.append("")
    L.append("```sh")
    L.append(f"scripts/bench {mode}   # builds and installs, runs everything below, then:")
    L.append("python3 bench/report.py target/bench/results.jsonl")
    L.append("```")
    L.append("")
    L.append("Every run starts the server fresh on a free port PORT (its pid is PID), waits for its ready line, runs "
             "one roomcast-bench command under a hard `timeout`, and stops the server (SIGTERM to its process group, "
             "SIGKILL after 10 s). Servers, with `ulimit -n` as above:")
    L.append("")
    L.append("```sh")
    seen = set()
    for r in sorted(records, key=lambda r: server_key(r["server"])):
        if r.get("server_cmd") and r["server"] not in seen:
            seen.add(r["server"])
            L.append(f"# {r.get('label', r['server'])}")
            L.append(r["server_cmd"])
    L.append("```")
    L.append("")
    L.append("<details><summary>Load-generator commands, one per run</summary>")
    L.append("")
    L.append("```sh")
    for c in cases:
        L.append(f"# {c}")
        for r in by_case[c]:
            L.append(r.get("bench_cmd", ""))
    L.append("```")
    L.append("")
    L.append("</details>")
    L.append("")
    L.append("Raw results: `target/bench/results.jsonl` (one JSON object per run; not committed), server logs in "
             "`target/bench/logs/`.")
    L.append("")

    # What we found and changed while measuring: kept by hand in bench/findings.md.
    findings = os.path.join(os.path.dirname(os.path.abspath(__file__)), "findings.md")
    if os.path.exists(findings):
        with open(findings, encoding="utf-8") as f:
            L.append(f.read().rstrip())
            L.append("")

    os.makedirs(os.path.dirname(os.path.abspath(opts.out)), exist_ok=True)
    with open(opts.out, "w", encoding="utf-8") as f:
        f.write("\n".join(L))
    print(f"wrote {os.path.relpath(opts.out)} and {len(charts)} charts in {os.path.relpath(opts.charts)}/")


if __name__ == "__main__":
    main()
