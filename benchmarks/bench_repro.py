"""Time the pipeline stage by stage: wall seconds and peak resident memory of each.

    python benchmarks/bench_repro.py --out benchmarks/results/repro.json [STAGE ...]

Runs ``dvc repro --single-item`` for every stage in the pipeline's dependency order (or for the
given stages and everything upstream of them), each under ``/usr/bin/time -v``, and writes one
row per stage: ``seconds`` (wall), ``peak_rss_gib`` (the largest process, as ``time -v`` reports)
and ``ran`` (False when DVC found it up to date: a row measured earlier is then kept). The JSON
is rewritten after every stage, so an interrupted run keeps what it measured. Stages of a ``foreach`` are timed one item at a time.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stage_order(targets: list[str]) -> list[str]:
    import networkx as nx
    from dvc.repo import Repo

    repo = Repo(str(ROOT))
    graph = repo.index.graph  # edges point from a stage to the stages it depends on
    stages = {stage.addressing: stage for stage in graph.nodes}
    order = [stage.addressing for stage in reversed(list(nx.topological_sort(graph)))
             if stage.addressing != "data.dvc"]
    if not targets:
        return order
    unknown = sorted(set(targets) - set(stages))
    if unknown:
        sys.exit(f"error: no stage {unknown[0]!r}; stages: {order}")
    wanted = set()
    for target in targets:
        wanted |= {s.addressing for s in nx.descendants(graph, stages[target])} | {target}
    return [name for name in order if name in wanted]


def run_stage(name: str) -> dict:
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", "dvc", "repro", "--single-item", name],
                          cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"error: stage {name} failed (exit {done.returncode})")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return {"stage": name, "seconds": round(seconds, 1),
            "peak_rss_gib": round(int(peak.group(1)) / 2**20, 2) if peak else None,
            "ran": "didn't change" not in done.stdout and "is cached" not in done.stdout}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="*", help="only these and what they need (default: all)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    previous = json.loads(args.out.read_text())["stages"] if args.out.exists() else []
    rows = {row["stage"]: row for row in previous}
    for name in stage_order(args.stages):
        row = run_stage(name)
        if row["ran"] or name not in rows:  # an up-to-date stage keeps the time it was measured at
            rows[name] = row
        print(json.dumps(row), flush=True)
        ran = [row for row in rows.values() if row["ran"]]
        summary = {"stages": list(rows.values()),
                   "total_minutes": round(sum(row["seconds"] for row in ran) / 60, 1),
                   "peak_rss_gib": max((row["peak_rss_gib"] or 0) for row in ran) if ran else None}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
