"""Slow clients on one gateway (issue 21): 100 tus clients at 256 KiB/s each plus 5 fast ones.

    .venv/bin/python bench/slow_clients_bench.py [--slow 100] [--slow-kib-s 256] [--slow-size-mib 24]
        [--fast 5] [--fast-size-mib 100] [--json PATH]

Starts its own NATS, PostgreSQL and SeaweedFS and one gateway process with its default pool (10
connections); the slow clients reach it through a FaultProxy (in a child process of its own, so
its forwarding does not compete with the clients for this process's interpreter) that caps each
connection at --slow-kib-s. Each slow client sends its whole file in one PATCH; the fast ones
send 5 MiB PATCHes straight to the gateway (rawdrive_devkit.slow_clients). Reports, in the same
run: the fast clients' MiB/s alone (before and after) and while every slow body streams, the
ratio (target >= 0.8x), /readyz answers (target: all 200), 5xx answers (target 0), the pool's
connections in use while the slow bodies stream against its size, acquire timeouts, uploads in
flight at most, and each slow client's KiB/s (every upload completes, near its link's cap).
Per phase, the CPU time and the time waiting for a CPU (/proc/PID/task/*/schedstat) of the
gateway process and of this one (the clients): on a shared machine they say how much of a
slowdown is the machine's, and whether the gateway or the clients ran out of CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bench_stack import JWT_SECRET, bench_stack
from tus_bench import Gateway, figure, free_port

from rawdrive_devkit import slow_clients

MIB = slow_clients.MIB
WORKSPACE = "bench"
PROXY = """
import sys, time
from rawdrive_devkit.devstack.faultproxy import FaultProxy, Faults
proxy = FaultProxy(upstream_port=int(sys.argv[1]), port=int(sys.argv[2]))
proxy.start()
proxy.set_faults(Faults(bandwidth_bytes_s=int(sys.argv[3])))
time.sleep(10**9)
"""


def start_proxy(upstream_port: int, bandwidth_bytes_s: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", PROXY, str(upstream_port), str(port), str(bandwidth_bytes_s)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the fault proxy did not start")


def schedstat_s(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one), summed over the process's threads."""
    on_cpu = waiting = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ran, waited, _ = (int(n) for n in (task / "schedstat").read_text().split())
        except (FileNotFoundError, ValueError):
            continue  # a thread that ended meanwhile
        on_cpu, waiting = on_cpu + ran, waiting + waited
    return on_cpu / 1e9, waiting / 1e9


class Phases:
    """CPU and CPU wait per phase of the scenario, of the gateway and of this process (the clients)."""

    def __init__(self, pid: int) -> None:
        self.pids = (pid, os.getpid())
        self.marks: list[tuple[str, float, tuple[float, ...]]] = []  # (phase, wall, cpu and wait of each)

    def __call__(self, name: str) -> None:
        self.marks.append((name, time.monotonic(), sum((schedstat_s(pid) for pid in self.pids), ())))

    def rows(self) -> list[tuple[str, float, list[float]]]:
        return [(name, wall2 - wall, [b - a for a, b in zip(stats, stats2)])
                for (name, wall, stats), (_, wall2, stats2) in zip(self.marks, self.marks[1:])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow", type=int, default=100)
    parser.add_argument("--slow-kib-s", type=int, default=256)
    parser.add_argument("--slow-size-mib", type=int, default=24)
    parser.add_argument("--fast", type=int, default=5)
    parser.add_argument("--fast-size-mib", type=int, default=100)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here (for run_all.py)")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    with bench_stack("slow-clients-bench-") as (work, s3, env):
        gateway = Gateway(env, work / "gateway.log")
        proxy, proxy_url = start_proxy(gateway.port, args.slow_kib_s * 1024)
        phases = Phases(gateway.process.pid)
        try:
            report = asyncio.run(slow_clients.run(
                gateway.url, proxy_url, secret=JWT_SECRET, workspace=WORKSPACE, slow=args.slow,
                slow_size=args.slow_size_mib * MIB, fast=args.fast, fast_size=args.fast_size_mib * MIB,
                phase=phases,
            ))
        finally:
            proxy.kill()
            gateway.stop()
    observed = report.observed
    done = [u for u in report.slow if u.status == 204]
    slow_kib_s = sorted(u.mib_s * 1024 for u in done)
    before, after = report.unloaded_mib_s
    print(f"{args.slow} slow clients at {args.slow_kib_s} KiB/s x {args.slow_size_mib} MiB (one PATCH each), "
          f"{args.fast} fast x {args.fast_size_mib} MiB (5 MiB PATCHes), one gateway, pool of {observed.pool_max:.0f}")
    print(f"fast clients alone: {before:.1f} MiB/s before, {after:.1f} MiB/s after; "
          f"while the slow bodies stream: {report.loaded_mib_s:.1f} MiB/s -> {report.fast_ratio:.2f}x (target >= 0.8x)")
    print(f"slow bodies still streaming when the loaded round ended: {report.slow_streaming_when_loaded_ended}"
          f"/{args.slow} (the loaded figure counts only if this is {args.slow})")
    print(f"/readyz (every 0.5 s, 3 s timeout): {dict(observed.readyz)}, at most "
          f"{observed.readyz_failures_in_a_row} failures in a row (the probe turns unready at 2); 5xx answers: {observed.server_errors}; every answer: "
          f"{dict(sorted(observed.statuses.items()))}; client errors: {len(observed.errors)}")
    print(f"pool in use while the slow bodies streamed: at most {report.pool_in_use_max_while_streaming:.0f} of "
          f"{observed.pool_max:.0f}; acquire timeouts: {observed.acquire_timeouts:.0f}; "
          f"uploads in flight at most: {observed.in_flight_max:.0f}")
    if slow_kib_s:
        print(f"slow uploads completed: {len(done)}/{args.slow}; KiB/s each: min {slow_kib_s[0]:.0f}, "
              f"median {statistics.median(slow_kib_s):.0f}, max {slow_kib_s[-1]:.0f} (link cap {args.slow_kib_s})")
    # "slow-7: AssertionError('tus creation: 503 {...')" -> "AssertionError('tus creation: 503", counted.
    kinds = Counter(error.split(": ", 1)[-1].split(" {")[0][:100] for error in observed.errors)
    for kind, count in kinds.most_common():
        print(f"  client errors: {count} x {kind}")
    print("per phase: wall s | gateway: CPU s (cores), s waiting for a CPU | clients (this process): the same")
    for name, wall, (cpu, wait, client_cpu, client_wait) in phases.rows():
        print(f"  {name:<15} {wall:7.1f} | {cpu:6.1f} ({cpu / wall:.2f}) {wait:6.1f} | "
              f"{client_cpu:6.1f} ({client_cpu / wall:.2f}) {client_wait:6.1f}")
    print(f"load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")

    ready = observed.readyz_failures_in_a_row < 2
    figures = [
        figure(f"fast tus clients while {args.slow} slow ones stream (vs alone)", "MiB/s", report.loaded_mib_s,
               sum(report.unloaded_mib_s) / 2, ">= 0.8x", report.fast_ratio >= 0.8),
        figure("/readyz failures in a row (3 s timeout)", "answers", float(observed.readyz_failures_in_a_row), None,
               "< 2 (the probe's threshold)", ready),
        figure("5xx answers to clients", "answers", float(observed.server_errors), None, "0",
               observed.server_errors == 0),
        figure("pool connections in use while the slow bodies stream", "connections",
               report.pool_in_use_max_while_streaming, observed.pool_max, "< pool size",
               report.pool_in_use_max_while_streaming < observed.pool_max),
        figure("slow uploads completed", "uploads", float(len(done)), float(args.slow), "all", len(done) == args.slow),
    ]
    if args.json:
        args.json.write_text(json.dumps({"bench": "slow_clients_bench", "figures": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
