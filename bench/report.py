#!/usr/bin/env python3
"""Turns the results of `scripts/bench` into docs/benchmarks.md and docs/bench/*.png.

Usage: python3 bench/report.py [target/bench/results.jsonl] [--cluster target/bench/cluster.jsonl]
                               [--out docs/benchmarks.md] [--charts docs/bench]

results.jsonl holds one JSON object per run (roomcast-bench's output plus what
scripts/bench adds: server, label, case, mode, status, bench_cmd, server_cmd,
wall_seconds, server_cpu_pct, server_rss_peak_kb, timeout_s). meta.json next to
it (written by scripts/bench) gives the mode, start time and duration. It makes
the whole page, keeping the page's "Cluster" section (and its charts) as they are.

cluster.jsonl (from `scripts/bench cluster`, with cluster-meta.json next to it)
adds nodes, setup and redis_cpu_pct to each run; with --cluster the "Cluster"
section and the cluster-*.png charts are made from it. Given alone, --cluster
rewrites only that section of the existing page.
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
    return is_ok(r) and not r.get("lost") and not r.get("server_exited")


def collapse(rows, key=lambda r: (r["server"], r["case"])):
    """One row per (server, case), or per `key`. Repeated runs (all clean) are shown by their
    median run on the case's headline metric; if any repeat was not clean, that run is shown."""
    groups = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = []
    for rs in groups.values():
        bad = [r for r in rs if not clean(r)]
        if bad:
            rep = dict(bad[0])
        else:
            _, get, _ = headline(rs[0]["case"])
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
    if case.startswith("fanout-burst") or case.startswith("cluster-burst"):
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


def load_records(path):
    records = []
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if line:
            records.append(json.loads(line))
    return records


def load_meta(results_path, name):
    """The meta file `name` that scripts/bench wrote next to a results file ({} if none)."""
    path = os.path.join(os.path.dirname(os.path.abspath(results_path)), name)
    if os.path.exists(path):
        return json.load(open(path, encoding="utf-8"))
    return {}


def started_at(meta):
    started = meta.get("started")
    return (datetime.datetime.fromtimestamp(started, datetime.timezone.utc) if started
            else datetime.datetime.now(datetime.timezone.utc))


def took(meta):
    d = meta.get("duration_s")
    return f" (the whole run took {d // 60} min {d % 60} s)" if d else ""


def full_page(opts):
    """The whole page from results.jsonl, without the Cluster section. Returns (lines, charts)."""
    records = load_records(opts.results)
    meta = load_meta(opts.results, "meta.json")
    mode = meta.get("mode") or (records[0].get("mode") if records else "?")
    when = started_at(meta)
    os.makedirs(opts.charts, exist_ok=True)
    for f in os.listdir(opts.charts):
        if f.endswith(".png") and not f.startswith(CLUSTER_CHART_PREFIX):
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
             + took(meta)
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
    return L, len(charts)


# --- the cluster section ---------------------------------------------------------------

CLUSTER_HEADING = "## Cluster"
CLUSTER_CHART_PREFIX = "cluster-"
CLUSTER_PEER = "node-socketio"  # the cluster every roomcast row is compared with


def find_section(lines, heading):
    """The lines of a `## ` section, from its heading to the next `## ` heading (None if absent)."""
    if heading not in lines:
        return None
    i = lines.index(heading)
    j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
    return lines[i:j]


def with_section(lines, heading, section, before):
    """`lines` with the section `heading` replaced by `section`, or inserted before the
    heading `before` (at the end if there is none)."""
    old = find_section(lines, heading)
    if old is not None:
        i = lines.index(heading)
        return lines[:i] + section + lines[i + len(old):]
    i = lines.index(before) if before in lines else len(lines)
    return lines[:i] + section + lines[i:]


def setup_key(setup):
    return -1 if setup == "alone" else int(setup)


def setup_label(setup):
    return "1, no Redis" if setup == "alone" else f"{setup} on Redis"


def cluster_label(server, label_of):
    return label_of.get(server, server) + (" + redis-adapter" if server == CLUSTER_PEER else "")


def chart_cluster(rows, setups, servers, label_of, path, title):
    """Two panels over the setups: burst deliveries/s (median, min–max) and paced p99."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110)
    width = 0.8 / max(1, len(servers))
    for i, s in enumerate(servers):
        xs, dps, lo, hi, p99 = [], [], [], [], []
        for j, st in enumerate(setups):
            x = j + (i - (len(servers) - 1) / 2) * width
            b = rows.get((s, st, "burst"))
            if b is not None and is_ok(b) and b.get("deliveries_per_sec"):
                vals = [r["deliveries_per_sec"] for r in b["_runs"] if clean(r)] or [b["deliveries_per_sec"]]
                xs.append(x)
                dps.append(b["deliveries_per_sec"])
                lo.append(b["deliveries_per_sec"] - min(vals))
                hi.append(max(vals) - b["deliveries_per_sec"])
            p = rows.get((s, st, "latency"))
            if p is not None and is_ok(p) and p.get("latency_ms"):
                p99.append((x, p["latency_ms"]["p99"], bool(p.get("lost"))))
        color = COLORS.get(s)
        label = cluster_label(s, label_of)
        ax1.bar(xs, dps, width * 0.95, color=color, label=label)
        if xs:
            ax1.errorbar(xs, dps, yerr=[lo, hi], fmt="none", ecolor="#333", capsize=3, linewidth=0.8)
        for x, v, h in zip(xs, dps, hi):
            ax1.text(x, (v + h) * 1.02, f"{v / 1000:,.0f}k", ha="center", va="bottom", fontsize=7, rotation=90)
        bars = ax2.bar([x for x, _, _ in p99], [v for _, v, _ in p99], width * 0.95, color=color, label=label)
        for b, (x, v, lost) in zip(bars, p99):
            if lost:
                b.set_hatch("//")
            ax2.text(x, v * 1.01, fmt_ms(v), ha="center", va="bottom", fontsize=7, rotation=90)
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(setups)))
        ax.set_xticklabels([setup_label(st) for st in setups], fontsize=8.5)
        ax.set_xlabel("nodes")
        ax.spines["top"].set_visible(False)
        ax.spines["right"].set_visible(False)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.15)
    ax1.set_ylabel("deliveries per second (burst; higher is better)")
    ax1.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:,.0f}k"))
    ax2.set_ylabel("p99 latency, ms (paced; lower is better)")
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8.5, frameon=False, loc="lower center", ncol=len(labels))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def cluster_section(opts):
    """The Cluster section from cluster.jsonl, and its charts. Returns (lines, charts)."""
    records = load_records(opts.cluster)
    meta = load_meta(opts.cluster, "cluster-meta.json")
    redis = next((r for r in records if r.get("case") == "(redis)"), {})
    runs = [r for r in records if (r.get("case") or "").startswith("cluster-")]
    PROTOCOL_OF.update({r["server"]: r.get("protocol") for r in runs})
    label_of = {r["server"]: r.get("label", r["server"]) for r in runs}
    rows = {}
    for r in collapse(runs, key=lambda r: (r["server"], r.get("setup"), r["case"])):
        kind = next((k for k in ("burst", "latency", "rooms") if k in r["case"]), r["case"])
        rows[(r["server"], r.get("setup"), kind)] = r
    servers = sorted({r["server"] for r in runs}, key=server_key)
    setups = sorted({r.get("setup") for r in runs}, key=setup_key)
    burst_args = bench_args(next((r for r in runs if "burst" in r["case"]), {}))
    paced_args = bench_args(next((r for r in runs if "latency" in r["case"]), {}))
    ver = versions()
    chart_rel = os.path.relpath(opts.charts, os.path.dirname(os.path.abspath(opts.out)))
    os.makedirs(opts.charts, exist_ok=True)
    for f in os.listdir(opts.charts):
        if f.startswith(CLUSTER_CHART_PREFIX) and f.endswith(".png"):
            os.remove(os.path.join(opts.charts, f))

    def get(server, setup, kind):
        return rows.get((server, setup, kind))

    def dps(r):
        return r.get("deliveries_per_sec") if r is not None and is_ok(r) else None

    def p99(r):
        return (r.get("latency_ms") or {}).get("p99") if r is not None and is_ok(r) else None

    def ratio(a, b, lost):
        if a is None or b is None or b <= 0:
            return "–"
        return fmt_ratio(a / b) + (" ⚠" if lost else "")

    def pct(r, k):
        return f"{r[k]:.0f}%" if r is not None and r.get(k) not in (None, "") else "–"

    def order_cell(r):
        n = (r or {}).get("out_of_order")
        if n is None or not is_ok(r):
            return "–"
        return f"**{n:,}** ({100 * n / max(1, r.get('delivered') or 1):.1f}%)" if n else "0"

    def lost_cell(r):
        if r is None:
            return "not run"
        if not is_ok(r):
            return status_cell(r)
        return f"**{r['lost']:,}** ({100 * lost_fraction(r):.1f}%)" if r.get("lost") else "0"

    n_subs = int(burst_args.get("clients", 0) or 0)
    L = [CLUSTER_HEADING, ""]
    L.append(f"Generated by `scripts/bench cluster` on {started_at(meta):%Y-%m-%d %H:%M} UTC{took(meta)}, then "
             "`python3 bench/report.py --cluster target/bench/cluster.jsonl` (which rewrites only this section).")
    L.append("")
    L.append("roomcast (native protocol and Socket.IO, `--broker redis://…`) and Node socket.io with "
             "`@socket.io/redis-adapter` (the peer in bench/peers/node-socketio with `REDIS_URL` set), each run as "
             "one node alone (no Redis, as in the tables above) and as 1, 2 and 3 nodes on one redis-server"
             + (f" {redis['redis_version']}" if redis.get("redis_version") else "")
             + " that the script starts for this run (a free loopback port, persistence off, emptied with FLUSHALL "
             f"before every run). One room, {n_subs:,} subscribers spread round-robin over the nodes (subscriber *i* "
             "on node *i* mod N), the publisher on node 1, so with N nodes (N−1)/N of the deliveries cross Redis. "
             f"**Burst**: {burst_args.get('messages', '?')} messages of ~100 bytes as fast as the publisher can send "
             f"them ({int(burst_args.get('messages', 0) or 0) * n_subs:,} deliveries; repeated while clean, the table "
             f"shows the median run). **Paced**: {paced_args.get('rate', '?')} messages/s for "
             f"{paced_args.get('duration', '?')} s, well under what every setup delivers, for latency. The bench "
             f"waits at most {burst_args.get('drain', '?')} s for stragglers; *lost* is what had not arrived by then.")
    L.append("")
    L.append("**Everything shares the same 2 cores**: every node, redis-server and the load generator (which "
             "alone uses most of a core reading the deliveries). More nodes here means more processes competing "
             "for the same CPUs, not more CPU, so these figures show what clustering *costs* — the Redis hop, the "
             "encoding, the extra processes — and not how a cluster on separate machines scales.")
    L.append("")
    problems = [r for r in rows.values()
                if not is_ok(r) or r.get("lost") or r.get("out_of_order") or r.get("server_exited")]
    if problems:
        L.append("Runs that did not complete cleanly, or delivered out of order:")
        L.append("")
        for r in sorted(problems, key=lambda r: (server_key(r["server"]), setup_key(r.get("setup")), r["case"])):
            what = status_cell(r).replace("**", "")
            if is_ok(r) and r.get("lost"):
                what += f" ({r['lost']:,} of {r['expected']:,} deliveries)"
            if is_ok(r) and r.get("out_of_order"):
                what = ("" if what == "ok" else what + "; ") + \
                    f"{r['out_of_order']:,} of {r['delivered']:,} deliveries out of publish order"
            if r.get("server_exited"):
                tag = f"{r['server']}.{r['case']}." + (f"{r['setup']}-nodes." if r.get("setup") != "alone" else "")
                what = ("" if what == "ok" else what + "; ") + \
                    "a node exited during the run, after the bench had its figures (`target/bench/logs/" \
                    f"{tag}*.server*.log`)"
            L.append(f"- {cluster_label(r['server'], label_of)}, {setup_label(r.get('setup'))}, {r['case']}: {what}")
        L.append("")

    peer = cluster_label(CLUSTER_PEER, label_of)
    L.append(f"Ratios: *÷ one node* divides by the same server alone (no Redis); *roomcast ÷ {peer}* divides by "
             "that cluster at the same node count (deliveries/s: higher is better, > 1× means roomcast is ahead; "
             "p99: lower is better, < 1× means roomcast is ahead).")
    L.append("")
    L.append("*Out of order*: deliveries that reached a subscriber after a later message of the same publisher "
             "(the messages carry the publisher's sequence number; a subscriber should see it rise).")
    L.append("")
    L.append(f"| server | nodes | deliveries/s (burst) | lost (burst) | out of order (burst) | p50 ms (paced) "
             f"| p99 ms (paced) | lost (paced) | out of order (paced) | deliveries/s ÷ one node | p99 ÷ one node "
             f"| deliveries/s, roomcast ÷ {peer} | p99, roomcast ÷ {peer} |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in servers:
        for st in setups:
            b, p = get(s, st, "burst"), get(s, st, "latency")
            if b is None and p is None:
                continue
            one_b, one_p = get(s, "alone", "burst"), get(s, "alone", "latency")
            peer_b, peer_p = get(CLUSTER_PEER, st, "burst"), get(CLUSTER_PEER, st, "latency")
            lat = (p.get("latency_ms") or {}) if p is not None and is_ok(p) else {}
            cells = [cluster_label(s, label_of), setup_label(st),
                     fmt_num(dps(b)) + (f" ({spread_cell(b, lambda x: x.get('deliveries_per_sec'))})" if b is not None and is_ok(b) else "")
                     + (" ⚠ a node exited" if (b or {}).get("server_exited") else ""),
                     lost_cell(b), order_cell(b), fmt_ms(lat.get("p50")), fmt_ms(lat.get("p99")), lost_cell(p),
                     order_cell(p)]
            lost_b = bool((b or {}).get("lost") or (one_b or {}).get("lost"))
            lost_p = bool((p or {}).get("lost") or (one_p or {}).get("lost"))
            cells += ["1×" if st == "alone" else ratio(dps(b), dps(one_b), lost_b),
                      "1×" if st == "alone" else ratio(p99(p), p99(one_p), lost_p)]
            if s == CLUSTER_PEER:
                cells += ["", ""]
            else:
                cells += [ratio(dps(b), dps(peer_b), lost_b or bool((peer_b or {}).get("lost"))),
                          ratio(p99(p), p99(peer_p), lost_p or bool((peer_p or {}).get("lost")))]
            L.append("| " + " | ".join(cells) + " |")
    L.append("")

    path = os.path.join(opts.charts, f"{CLUSTER_CHART_PREFIX}fanout.png")
    chart_cluster(rows, setups, servers, label_of, path,
                  f"One room, {n_subs:,} subscribers spread over the nodes, publisher on node 1 (all on 2 shared cores)")
    L.append(f"![Cluster fanout: deliveries per second and p99 latency by node count]({chart_rel}/{os.path.basename(path)})")
    L.append("")

    # Latency per node: the publisher's own node delivers locally; the others through Redis.
    most = max((setup_key(st) for st in setups), default=0)
    if most > 1:
        L.append("Paced latency by the node the subscriber is on (node 1 holds the publisher: its subscribers get "
                 "the message without Redis in roomcast; the others get it through Redis):")
        L.append("")
        L.append("| server | nodes | " + " | ".join(f"node {i} p50 / p99 ms" for i in range(1, most + 1)) + " |")
        L.append("|---|---|" + "---:|" * most)
        for s in servers:
            for st in setups:
                p = get(s, st, "latency")
                per = (p or {}).get("per_target") or []
                if len(per) < 2:
                    continue
                cells = []
                for i in range(most):
                    lat = per[i].get("latency_ms") if i < len(per) else None
                    cells.append(f"{fmt_ms(lat['p50'])} / {fmt_ms(lat['p99'])}" if lat else "")
                L.append(f"| {cluster_label(s, label_of)} | {setup_label(st)} | " + " | ".join(cells) + " |")
        L.append("")

    # Where the CPU went.
    L.append("CPU and memory of the fanout runs (CPU: time used over the run's wall time, connecting included; "
             "100% = one core; *nodes* is the sum over every node of the setup):")
    L.append("")
    L.append("| server | nodes | burst: nodes CPU | burst: Redis CPU | burst: client CPU | paced: nodes CPU "
             "| paced: Redis CPU | paced: client CPU | peak RSS, all nodes (burst) |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")

    for s in servers:
        for st in setups:
            b, p = get(s, st, "burst"), get(s, st, "latency")
            if b is None and p is None:
                continue
            L.append("| " + " | ".join([
                cluster_label(s, label_of), setup_label(st),
                pct(b, "server_cpu_pct"), pct(b, "redis_cpu_pct") if st != "alone" else "–", pct(b, "client_cpu_pct"),
                pct(p, "server_cpu_pct"), pct(p, "redis_cpu_pct") if st != "alone" else "–", pct(p, "client_cpu_pct"),
                human_kb(b["server_rss_peak_kb"]) if b is not None and b.get("server_rss_peak_kb") else "–",
            ]) + " |")
    L.append("")

    # Many rooms, each on one node: what Redis sends to nodes that have no member of the room.
    rooms_runs = [r for r in rows.values() if "rooms" in r["case"]]
    if rooms_runs:
        a = bench_args(rooms_runs[0])
        n_rooms, n_members = int(a.get("rooms", 0) or 0), int(a.get("members", 0) or 0)
        interval = int(a.get("interval-ms", 0) or 0) / 1000
        L.append(f"**Many rooms, each on one node.** {n_rooms:,} rooms of {n_members} members, every member of room "
                 f"*r* on node *r* mod N (`--whole-rooms`); every member publishes once every {interval:g} s for "
                 f"{a.get('duration', '?')} s, and every member of the room receives it. No delivery needs another "
                 "node, so whatever Redis sends a node for rooms it has no member in is pure overhead. *Redis → nodes "
                 "per publish* is the growth of Redis's `total_net_output_bytes` over the run ÷ its `PUBLISH` "
                 "calls (connecting is included: joins and presence replies add a little for roomcast).")
        L.append("")
        L.append("| server | nodes | publishes/s | deliveries/s | lost | p50 ms | p99 ms | nodes CPU | Redis CPU "
                 "| client CPU | PUBLISH calls | Redis → nodes per publish |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for s_ in servers:
            for st in setups:
                r = get(s_, st, "rooms")
                if r is None:
                    continue
                lat = (r.get("latency_ms") or {}) if is_ok(r) else {}
                pubs, out = r.get("redis_publishes"), r.get("redis_out_bytes")
                per_pub = f"{out / pubs:,.0f} bytes" if st != "alone" and pubs and out is not None else "–"
                L.append("| " + " | ".join([
                    cluster_label(s_, label_of), setup_label(st), fmt_num(r.get("publishes_per_sec")),
                    fmt_num(r.get("deliveries_per_sec")), lost_cell(r), fmt_ms(lat.get("p50")), fmt_ms(lat.get("p99")),
                    pct(r, "server_cpu_pct"), pct(r, "redis_cpu_pct") if st != "alone" else "–",
                    pct(r, "client_cpu_pct"), fmt_num(pubs) if st != "alone" else "–", per_pub,
                ]) + " |")
        L.append("")

    # Hand-kept notes on what these numbers mean.
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster-notes.md")
    if os.path.exists(notes):
        with open(notes, encoding="utf-8") as f:
            L.append(f.read().rstrip())
            L.append("")

    L.append("### Cluster setup, versions and commands")
    L.append("")
    node_versions = ", ".join(f"{n} {v}" for n, v in [
        ("socket.io", node_pkg_version("socket.io")),
        ("@socket.io/redis-adapter", node_pkg_version("@socket.io/redis-adapter")),
        ("redis", node_pkg_version("redis"))] if v)
    L.append(f"- roomcast: {ver['servers']['roomcast-native']}")
    L.append(f"- Node socket.io + redis-adapter: {node_versions}; `createAdapter(pubClient, subClient)` with its "
             "defaults (a `redis` client and its `duplicate()`)")
    L.append(f"- redis-server: {redis.get('redis_version', 'unknown')}, defaults except persistence")
    L.append("")
    L.append("```sh")
    L.append("scripts/bench cluster   # builds and installs, runs everything below, then:")
    L.append("python3 bench/report.py --cluster target/bench/cluster.jsonl")
    L.append("")
    L.append("# Redis, once for the whole run")
    L.append(redis.get("server_cmd", "redis-server"))
    seen = set()
    for r in sorted(runs, key=lambda r: server_key(r["server"])):
        if r.get("server_cmd") and r["server"] not in seen:
            seen.add(r["server"])
            alone, _, clustered = r["server_cmd"].partition("\n")
            L.append(f"# {label_of[r['server']]}: one node alone")
            L.append(alone)
            if clustered:
                L.append(f"# {label_of[r['server']]}: each of the N nodes (N = 1, 2, 3), on its own free port")
                L.append(clustered)
    L.append("```")
    L.append("")
    L.append("<details><summary>Load-generator commands, one per setup</summary>")
    L.append("")
    L.append("```sh")
    shown = set()
    for r in sorted(runs, key=lambda r: (server_key(r["server"]), setup_key(r.get("setup")), r["case"])):
        if r.get("bench_cmd") and r["bench_cmd"] not in shown:
            shown.add(r["bench_cmd"])
            L.append(r["bench_cmd"])
    L.append("```")
    L.append("")
    L.append("</details>")
    L.append("")
    L.append("Raw results: `target/bench/cluster.jsonl` (not committed; each run's `per_target` has the deliveries "
             "and latency of every node), logs in `target/bench/logs/`.")
    L.append("")
    return L, 1


# --- the security section ---------------------------------------------------------------

SECURITY_HEADING = "## Security features"
HISTORY_HEADING = "## History"


def median(values):
    v = sorted(values)
    return v[len(v) // 2] if v else None


def security_section(path):
    """The "Security features" section from bench/security.py's results."""
    records = load_records(path)
    connect = [r for r in records if r.get("case") == "connect" and r.get("connect_rate")]
    rpc = [r for r in records if r.get("case") == "rpc" and r.get("proxied")]
    runs = max([r.get("run", 0) for r in records] + [0]) + 1
    L = [SECURITY_HEADING, ""]
    L.append(
        f"Measured by `scripts/bench-security` (`python3 bench/security.py`), {runs} run(s), medians shown; "
        "each case on a fresh roomcast process on 127.0.0.1, on the same 2-core machine as the generator."
    )
    L.append("")
    L.append(
        f"**Connecting with a token.** {connect[0]['clients'] if connect else 0:,} native connections opened "
        "20 at a time, each presenting the same JWT at the upgrade (`?token=`), against open mode in the same run. "
        "The difference is the signature check (jsonwebtoken with its pure-Rust `rust_crypto` backend)."
    )
    L.append("")
    L.append("| authentication | connects/s (median) | range | ÷ open mode |")
    L.append("|---|---:|---:|---:|")
    by = {}
    for r in connect:
        by.setdefault(r["auth"], []).append(r["connect_rate"])
    base = median(by.get("open", []))
    for name in ("open", "HS256", "RS256", "ES256"):
        if name not in by:
            continue
        m = median(by[name])
        L.append(
            f"| {'none (open mode)' if name == 'open' else name + ' token'} | {fmt_num(m)} | "
            f"{fmt_num(min(by[name]))}–{fmt_num(max(by[name]))} | {m / base:.2f}× |"
        )
    L.append("")
    L.append(
        "**Client events through the event proxy.** `roomcast-bench rpc`: 50 callers, each with one call in flight, "
        "5 s per phase, against a backend the generator serves (`POST /rpc` echoes the data). *Direct*: the callers "
        "POST straight to the backend over keep-alive HTTP. *Through roomcast*: the callers are WebSocket clients "
        "sending events (`{\"type\":\"rpc\"}` or a Socket.IO event with an ack); roomcast posts each to the backend "
        "and acks with its answer. The generator, roomcast and the backend share the two cores."
    )
    L.append("")
    L.append("| protocol | direct calls/s | through roomcast calls/s | ÷ direct | p50 / p99 ms (through roomcast) | errors |")
    L.append("|---|---:|---:|---:|---:|---:|")
    byp = {}
    for r in rpc:
        byp.setdefault(r["protocol"], []).append(r)
    for proto in ("native", "socketio"):
        rs = byp.get(proto)
        if not rs:
            continue
        mid = sorted(rs, key=lambda r: r["proxied"]["calls_per_sec"])[len(rs) // 2]
        d, pr = mid["direct"], mid["proxied"]
        L.append(
            f"| {proto} | {fmt_num(d['calls_per_sec'])} | {fmt_num(pr['calls_per_sec'])} | "
            f"{pr['calls_per_sec'] / d['calls_per_sec']:.2f}× | {fmt_ms(pr['latency_ms']['p50'])} / "
            f"{fmt_ms(pr['latency_ms']['p99'])} | {sum(r['proxied']['errors'] for r in rs)} |"
        )
    L.append("")
    L.append(
        "A client publication now also looks up the room's rule and, for `publish = \"members\"`, checks that the "
        "sender is in the room: work per publication, not per delivery. The bench's fanout publisher is not a member, "
        "so its room has a rule allowing that (`bench/roomcast.toml`)."
    )
    L.append("")
    return L


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", help="results.jsonl of `scripts/bench quick|full`: makes the whole page")
    ap.add_argument("--cluster", metavar="CLUSTER_JSONL",
                    help="cluster.jsonl of `scripts/bench cluster`: makes the Cluster section (alone: only that section)")
    ap.add_argument("--security", metavar="SECURITY_JSONL",
                    help="security.jsonl of `scripts/bench-security`: makes the Security features section")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/benchmarks.md"))
    ap.add_argument("--charts", default=os.path.join(ROOT, "docs/bench"))
    opts = ap.parse_args()
    if not opts.results and not opts.cluster and not opts.security:
        ap.error("give results.jsonl, --cluster cluster.jsonl, --security security.jsonl, or several")

    previous = None
    if os.path.exists(opts.out):
        with open(opts.out, encoding="utf-8") as f:
            previous = f.read().split("\n")
    n_charts = 0
    section = None
    if opts.cluster:
        section, n = cluster_section(opts)
        n_charts += n
    elif previous is not None:
        section = find_section(previous, CLUSTER_HEADING)
    if opts.results:
        page, n = full_page(opts)
        n_charts += n
    elif previous is not None:
        page = previous
    else:
        ap.error(f"{opts.out} does not exist yet: give results.jsonl too")
    if section:
        page = with_section(page, CLUSTER_HEADING, section, before="## Machine and versions")
    security = None
    if opts.security:
        security = security_section(opts.security)
    elif previous is not None:
        security = find_section(previous, SECURITY_HEADING)
    if security:
        page = with_section(page, SECURITY_HEADING, security, before="## Machine and versions")
    # The History section comes from scripts/bench-history and is kept as it is.
    history = find_section(previous, HISTORY_HEADING) if previous is not None else None
    if history:
        page = with_section(page, HISTORY_HEADING, history, before="## Machine and versions")

    os.makedirs(os.path.dirname(os.path.abspath(opts.out)), exist_ok=True)
    with open(opts.out, "w", encoding="utf-8") as f:
        f.write("\n".join(page))
    print(f"wrote {os.path.relpath(opts.out)} and {n_charts} charts in {os.path.relpath(opts.charts)}/")


if __name__ == "__main__":
    main()
