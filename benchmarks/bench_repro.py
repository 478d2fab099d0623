"""Time the pipeline stage by stage: wall seconds and peak resident memory of each.

    python benchmarks/bench_repro.py --out benchmarks/results/repro.json [STAGE ...]

Runs ``dvc repro --single-item`` for every stage in the pipeline's dependency order (or for the
given stages and everything upstream of them), each under ``/usr/bin/time -v``, and writes one
row per stage: ``seconds`` (wall), ``peak_rss_gib`` (the largest process, as ``time -v`` reports)
and ``ran`` (False when DVC found it up to date: a row measured earlier is then kept). The JSON
is rewritten after every stage, so an interrupted run keeps what it measured. Stages of a
``foreach`` are timed one item at a time.

``--jobs N`` (N > 1) runs the stages as ``make repro`` does (:mod:`bat.stages.repro`: up to N
at a time, ``cores // N`` threads each, the changed ones and what is downstream of them, recorded
by ``dvc commit``), each under ``time -v``, with its log in ``results/repro_logs``. ``--force``
runs every stage, changed or not: the pipeline of a fresh clone.

With ``--jobs`` > 1 the summary's ``total_minutes`` is wall time, not the sum of the stages.
Several invocations may share the file (parts of the pipeline run one after another or side by
side), under a lock. Each invocation keeps its interval and the stages it measured (each row
names its ``invocation``), and ``machine_peak_gib``: the memory in use on the machine above its
level at the start, sampled every second (the summary keeps the largest). Invocations none of
whose rows are current any more are dropped, their peaks with them. An invocation whose
rows are all still current counts with its whole interval (overlaps once); one whose rows were
partly measured again later counts only its current rows' seconds, as if run one after another.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from bat.stages.repro import DVC, ROOT, pipeline_graph, run_side_by_side, stage_order


def peak_gib(time_report: str) -> float | None:
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_report)
    return round(int(peak.group(1)) / 2**20, 2) if peak else None


def run_stage(name: str, force: bool) -> dict:
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", DVC, "repro", "--single-item",
                           *(["--force"] if force else []), name],
                          cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"error: stage {name} failed (exit {done.returncode})")
    return {"stage": name, "seconds": round(seconds, 1), "peak_rss_gib": peak_gib(done.stderr),
            "ran": "didn't change" not in done.stdout and "is cached" not in done.stdout}


def memory_in_use_gib(meminfo: Path = Path("/proc/meminfo")) -> float:
    """Memory in use on the machine (MemTotal − MemAvailable of ``meminfo``), GiB."""
    fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines())
    kib = {key: int(fields[key].split()[0]) for key in ("MemTotal", "MemAvailable")}
    return (kib["MemTotal"] - kib["MemAvailable"]) / 2**20


class MachinePeak(threading.Thread):
    """The most memory in use on the machine while the run lasts, above what was in use when
    it started (sampled every ``interval`` seconds): what two stages side by side use together,
    shared pages counted once, which the per-stage peaks of ``time -v`` cannot show."""

    def __init__(self, interval: float = 1.0, read=memory_in_use_gib):
        super().__init__(daemon=True)
        self.interval, self.read = interval, read
        self.baseline, self.peak = read(), 0.0

    def sample(self) -> None:
        self.peak = max(self.peak, self.read() - self.baseline)

    def run(self) -> None:  # a daemon: it samples until the process ends
        while True:
            time.sleep(self.interval)
            self.sample()


def wall_seconds(invocations: list[dict], rows: list[dict]) -> float:
    """The pipeline's wall seconds from the invocations that measured its current rows.

    An invocation all of whose measured stages still hold its rows counts with its interval
    (the union, overlaps once); the other current rows (from invocations partly measured again
    later, or from files written before rows named their invocation) count their own seconds.
    """
    current = {row["stage"]: row.get("invocation") for row in rows if row["ran"]}
    whole = [i for i in invocations
             if i["measured"] and all(current.get(stage) == i["start"] for stage in i["measured"])]
    starts = {i["start"] for i in whole}
    rest = sum(row["seconds"] for row in rows if row["ran"] and row.get("invocation") not in starts)
    return covered_seconds([(i["start"], i["end"]) for i in whole]) + rest


def current_invocations(invocations: list[dict], rows: list[dict]) -> list[dict]:
    """The invocations that measured at least one current row: one whose every stage was
    measured again later says nothing about the pipeline as it stands (its memory peak included)."""
    current = {row.get("invocation") for row in rows if row["ran"]}
    return [i for i in invocations if i["start"] in current]


def covered_seconds(intervals) -> float:
    """Seconds covered by the union of ``[start, end]`` intervals (overlaps counted once)."""
    total, reach = 0.0, float("-inf")
    for begin, end in sorted(intervals):
        total += max(0.0, end - max(begin, reach))
        reach = max(reach, end)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="*", help="only these and what they need (default: all)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=1, help="stages at once (see above)")
    parser.add_argument("--force", action="store_true", help="run every stage, changed or not")
    args = parser.parse_args(argv)
    started = time.time()
    machine = MachinePeak()  # what two stages side by side hold at once; read with --jobs > 1
    if args.jobs > 1:
        machine.start()

    def record(row: dict) -> None:
        if row["ran"]:
            row["invocation"] = started
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        # Several invocations may share the file (parts of the pipeline run side by side): each
        # re-reads it under a lock and adds its own rows and its own time interval.
        with open(args.out.with_name(args.out.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            previous = json.loads(args.out.read_text()) if args.out.exists() else {"stages": []}
            rows = {old["stage"]: old for old in previous["stages"]}
            if row["ran"] or row["stage"] not in rows:  # an up-to-date stage keeps its measured time
                rows[row["stage"]] = row
            ran = [old for old in rows.values() if old["ran"]]
            summary = {"stages": list(rows.values()), "jobs": args.jobs}
            if args.jobs > 1:
                same = previous.get("jobs") == args.jobs
                invocations = {i["start"]: i for i in previous.get("invocations", [])
                               if same and i["start"] != started}
                mine = [old["stage"] for old in ran if old.get("invocation") == started]
                invocations[started] = {"start": started, "end": time.time(), "measured": mine,
                                        "machine_peak_gib": round(machine.peak, 2)}
                summary["invocations"] = current_invocations(
                    sorted(invocations.values(), key=lambda i: i["start"]), summary["stages"])
                total = wall_seconds(summary["invocations"], summary["stages"])
                summary["machine_peak_gib"] = max(i.get("machine_peak_gib", 0.0)
                                                  for i in summary["invocations"])
            else:
                total = sum(old["seconds"] for old in ran)
            summary.update(total_minutes=round(total / 60, 1),
                           peak_rss_gib=max((old["peak_rss_gib"] or 0) for old in ran) if ran else None)
            args.out.write_text(json.dumps(summary, indent=1) + "\n")

    _, graph, _ = pipeline_graph()
    order = stage_order(graph, args.stages)
    if args.jobs > 1:
        def finished(name: str, seconds: float, log: Path) -> None:
            record({"stage": name, "seconds": round(seconds, 1),
                    "peak_rss_gib": peak_gib(log.read_text()), "ran": True})

        ran = run_side_by_side(order, args.jobs, force=args.force,
                               logs=args.out.parent / "repro_logs", wrap=["/usr/bin/time", "-v"],
                               on_finish=finished)
        for name in order:
            if name not in ran:
                record({"stage": name, "seconds": 0.0, "peak_rss_gib": None, "ran": False})
    else:
        for name in order:
            record(run_stage(name, args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
