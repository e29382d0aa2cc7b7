"""Run every benchmark and write bench/RESULTS.md and bench/results.json (what `make bench` runs).

    .venv/bin/python bench/run_all.py [--quick] [--only NAME ...] [--full NAME ...]

Each benchmark runs as its own subprocess (they start their own servers), one after another so they
do not compete for the two cores; its output is echoed and kept in bench/.work/logs/. The figures
come from each benchmark's `--json PATH` (tus_bench, verify_bench, tus_vs_node, small_files_bench,
load); thumbnail_bench.py's are parsed from its printed lines unless its --help offers --json.
`--quick` runs small sizes for a smoke run; `--full NAME` keeps NAME at full size in a quick run
(e.g. `--quick --full load`). The machine's load average is recorded before and after: these
machines are shared, and the figures are only comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
WORK = BENCH / ".work"
LOGS = WORK / "logs"

# name -> (script, full arguments, quick arguments)
BENCHES: dict[str, tuple[str, list[str], list[str]]] = {
    "tus_bench": ("tus_bench.py", [], ["--sizes-mib", "20", "--concurrency", "1", "4", "--sessions", "100"]),
    "tus_vs_node": ("tus_vs_node.py", [], ["--sizes-mib", "50", "--concurrency", "1", "4", "--rounds", "1"]),
    "small_files_bench": ("small_files_bench.py", [],
                          ["--uploads", "48", "--rounds", "1", "--pipeline-uploads", "16"]),
    "verify_bench": ("verify_bench.py", [], ["--sizes-mib", "20", "--rounds", "1"]),
    "parallel_tus_bench": ("parallel_tus_bench.py", [], ["--size-mib", "64", "--rounds", "1"]),
    "thumbnail_bench": ("thumbnail_bench.py", [], ["--rounds", "1"]),
    "load": ("load.py", [], ["--uploads", "8", "--single-rounds", "3"]),
    # The same batch with at most 8 uploads in flight: the pipeline's figures even while 50 at once
    # stalled the gateway (before issue 21 every PATCH held a pool connection; pool of 10).
    "load_8_at_a_time": ("load.py", ["--concurrency", "8", "--single-rounds", "0"],
                         ["--uploads", "8", "--concurrency", "4", "--single-rounds", "0"]),
    "slow_clients_bench": ("slow_clients_bench.py", [],
                           ["--slow", "30", "--slow-size-mib", "8", "--fast", "3", "--fast-size-mib", "20"]),
}


def has_json_option(script: Path) -> bool:
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True).stdout
    return "--json" in help_text


def thumbnail_figures(output: str) -> list[dict]:
    """The figures of thumbnail_bench.py's printed report (it has no --json of its own)."""
    figures: list[dict] = []
    medians = {kind: (float(seconds), rss) for kind, seconds, rss in re.findall(
        r"\b(wand|vips)\s+median ([\d.]+) s.*?peak RSS (\d+) MiB", output)}
    if "wand" in medians and "vips" in medians:
        (ours, our_rss), (theirs, their_rss) = medians["wand"], medians["vips"]
        figures.append({"figure": "24 MP JPEG -> 2560/1280/320 WebP, wall (wand vs pyvips)", "unit": "s",
                        "ours": ours, "baseline": theirs, "ratio": round(ours / theirs, 3), "target": "<= 1.3x",
                        "met": ours / theirs <= 1.3})
        figures.append({"figure": "24 MP JPEG -> 3 WebP variants, peak RSS (wand vs pyvips)", "unit": "MiB",
                        "ours": float(our_rss), "baseline": float(their_rss),
                        "ratio": round(float(our_rss) / float(their_rss), 3), "target": "", "met": None})
    for label, pattern in (("service path (sandbox), 24 MP JPEG", r"service path.*?:\s*([\d.]+) s"),
                           ("1080p 20 s video poster + variants (sandbox)", r"video poster[^:]*:\s*([\d.]+) s"),
                           ("3-page PDF page 1 + variants (sandbox)", r"PDF page 1[^:]*:\s*([\d.]+) s")):
        if match := re.search(pattern, output):
            figures.append({"figure": label, "unit": "s", "ours": float(match.group(1)), "baseline": None,
                            "ratio": None, "target": "", "met": None})
    if not figures:
        figures.append({"figure": "thumbnail_bench (output not recognised; see its log)", "unit": "", "ours": None,
                        "baseline": None, "ratio": None, "target": "", "met": None})
    return figures


def run_one(name: str, quick: bool) -> dict:
    script, full_args, quick_args = BENCHES[name]
    path = BENCH / script
    json_path = WORK / f"{name}.json"
    json_path.unlink(missing_ok=True)
    use_json = name != "thumbnail_bench" or has_json_option(path)
    command = [sys.executable, str(path), *(quick_args if quick else full_args)]
    if use_json:
        command += ["--json", str(json_path)]
    print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
    log = LOGS / f"{name}.log"
    started = time.monotonic()
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=BENCH.parent)
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            print(line, end="", flush=True)
            sink.write(line)
            lines.append(line)
        code = process.wait()
    output = "".join(lines)
    outcome = {"bench": name, "command": " ".join(["python", *command[1:]]).replace(str(BENCH.parent) + "/", ""),
               "exit_code": code, "seconds": round(time.monotonic() - started, 1), "log": str(log.relative_to(BENCH.parent)),
               "output": output}
    if use_json and json_path.exists():
        outcome["figures"] = json.loads(json_path.read_text())["figures"]
    elif not use_json:
        outcome["figures"] = thumbnail_figures(output)
    else:
        outcome["figures"] = []
    if code != 0:
        outcome["figures"].append({"figure": f"{name} FAILED (exit {code}; see {outcome['log']})", "unit": "",
                                   "ours": None, "baseline": None, "ratio": None, "target": "", "met": False})
    return outcome


def fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def git_commit() -> str:
    answer = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "bench", "services", "libs"], capture_output=True,
                           text=True, cwd=BENCH).stdout.strip()
    return answer.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def write_report(results: list[dict], meta: dict) -> None:
    rows = ["| bench | figure | unit | ours | baseline | ratio | target | met? |",
            "|---|---|---|---|---|---|---|---|"]
    for result in results:
        for f in result["figures"]:
            met = {True: "yes", False: "**no**", None: ""}[f.get("met")]
            ratio = f"{f['ratio']:.2f}x" if f.get("ratio") is not None else ""
            rows.append(f"| {result['bench']} | {f['figure']} | {f.get('unit', '')} | {fmt(f.get('ours'))} | "
                        f"{fmt(f.get('baseline'))} | {ratio} | {f.get('target', '')} | {met} |")
    runs = "\n".join(f"- `{r['command']}`: exit {r['exit_code']}, {r['seconds']:.0f} s" for r in results)
    outputs = "\n\n".join(f"### {r['bench']}\n\n```\n{r['output'].rstrip()}\n```" for r in results)
    text = f"""# Benchmark results

Written by `bench/run_all.py{' --quick' if meta['quick'] else ''}` on {meta['started']} (UTC), commit
{meta['commit']}; {meta['cpus']} CPUs, {meta['platform']}, Python {meta['python']}.
Mode: {meta['mode']}.

**Machine load:** load average (1/5/15 min) {meta['load_start']} at the start and {meta['load_end']} at
the end. These machines are shared with other engineers' test runs, and the servers, our code and
every baseline share the same {meta['cpus']} cores: read each figure against its baseline from this
same run, not against figures from another run.

Each baseline is measured in the same run against the same servers; ratio = ours / baseline (for
times and memory, lower is better; for rates, higher is better; the target says which).

{chr(10).join(rows)}

## Runs

{runs}

## Output of each benchmark

{outputs}
"""
    (BENCH / "RESULTS.md").write_text(text)
    document = {**meta, "results": [{k: v for k, v in r.items() if k != "output"} for r in results]}
    (BENCH / "results.json").write_text(json.dumps(document, indent=2) + "\n")


def load_average() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--only", nargs="+", choices=list(BENCHES), help="run only these")
    parser.add_argument("--full", nargs="+", choices=list(BENCHES), default=[],
                        help="with --quick: run these at full size anyway")
    args = parser.parse_args()
    LOGS.mkdir(parents=True, exist_ok=True)
    names = args.only or list(BENCHES)
    started = datetime.now(timezone.utc)
    meta = {"started": started.strftime("%Y-%m-%d %H:%M"), "commit": git_commit(), "cpus": os.cpu_count(),
            "platform": platform.platform(terse=True), "python": platform.python_version(), "quick": args.quick,
            "load_start": load_average()}
    full = [n for n in names if not args.quick or n in args.full]
    quick = [n for n in names if n not in full]
    meta["mode"] = ", ".join(part for part in (
        f"full size: {', '.join(full)}" if full else "", f"quick (small sizes): {', '.join(quick)}" if quick else "") if part)
    results = [run_one(name, quick=name in quick) for name in names]
    meta["load_end"] = load_average()
    meta["seconds"] = round((datetime.now(timezone.utc) - started).total_seconds())
    write_report(results, meta)
    print(f"\nwrote {BENCH / 'RESULTS.md'} and {BENCH / 'results.json'} ({meta['seconds']} s; "
          f"load average {meta['load_start']} -> {meta['load_end']})")
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
