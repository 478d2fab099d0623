"""``dvc repro`` with independent stages side by side: what ``make repro`` runs.

    python -m bat.stages.repro [--jobs N] [--force] [STAGE ...]

DVC runs one stage at a time under its repository lock (parallel ``dvc repro`` is
iterative/dvc#755, open since 2018; ``dvc queue`` runs whole experiments in parallel, not the
stages of one), while this pipeline has two chains that share nothing after ``prepare``: the text
chain (``pretrain_text`` → the LoRA/DoRA grid) and the image chain (``pretrain_image`` → the
image grids), each about half of the work. With ``--jobs 1`` this module is ``dvc repro``
itself. With N > 1 it runs every stage that ``dvc status`` reports
changed (``--force``: every stage), and everything downstream of one, as soon as the stages it
depends on are done, up to N at a time, each with ``cores // N`` threads (``OMP_NUM_THREADS``),
by the command DVC resolved for it, after removing the stage's outputs as DVC does; among the
ready stages, the one with the longest chain of work waiting for it goes first, by the stage
times of the last ``benchmarks/bench_repro.py`` run when there is one. Each stage's
output goes to ``<logs>/<stage>.log``. When the stages are done, ``dvc commit`` records the ones
that succeeded, exactly as ``dvc repro`` would have; a failed stage stops the ones still running
(they are not recorded) and the command exits 1 naming it, so dvc.lock never records a stage
that did not finish, and a rerun starts where this one stopped. Unlike ``dvc repro`` it does not
restore a stage from DVC's run cache. Stage names are ``dvc repro``'s (``grid_image@dreambooth``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bat.config import run_cli
from bat.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DVC = str(Path(sys.executable).parent / "dvc")  # the environment's, also when it is not on PATH
LOGS = ROOT / ".cache" / "repro_logs"
TIMINGS = Path("benchmarks") / "results" / "repro.json"  # the last timed run, if any


def pipeline_graph(root: Path = ROOT):
    """The DVC repository at ``root``, its stage graph by stage name (edges from a stage to the
    stages it needs) and the stages by name (the targets ``dvc repro`` takes in ``root``)."""
    import networkx as nx
    from dvc.repo import Repo

    repo = Repo(str(root))

    def name(stage) -> str:  # DVC's own addressing is relative to the working directory
        dvcfile = os.path.relpath(stage.path, root)
        if not stage.cmd:  # a .dvc file: tracked data
            return dvcfile
        return stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"

    stages = {name(stage): stage for stage in repo.index.graph.nodes}
    return repo, nx.relabel_nodes(repo.index.graph, {s: n for n, s in stages.items()}), stages


def stage_order(graph, targets: Sequence[str] = ()) -> list[str]:
    """Stage names in an order DVC could run them: ``targets`` and all they need (default all).

    Raises :class:`ConfigError` naming an unknown stage and listing the known ones.
    """
    import networkx as nx

    order = [name for name in reversed(list(nx.topological_sort(graph)))
             if not name.endswith(".dvc")]  # data.dvc is tracked data, not a stage
    unknown = sorted(set(targets) - set(order))
    if unknown:
        raise ConfigError(f"stage: no stage {unknown[0]!r}; stages: {', '.join(order)}")
    if not targets:
        return order
    wanted = set(targets)
    for target in targets:
        wanted |= nx.descendants(graph, target)
    return [name for name in order if name in wanted]


def changed_stages(repo, graph, names: Sequence[str], force: bool) -> set[str]:
    """The stages of ``names`` that ``dvc repro`` would run: changed ones and all downstream."""
    import networkx as nx

    if force:
        return set(names)
    changed = {name for name in names if repo.status(targets=[name], with_deps=False)}
    for name in list(changed):
        changed |= nx.ancestors(graph, name)
    return changed & set(names)


def critical_path_seconds(graph, names: Sequence[str], expected: Mapping[str, float],
                          default: float = 60.0) -> dict[str, float]:
    """Per stage, the expected seconds from its start to the end of the longest chain of
    ``names`` that waits for it (its own ``expected`` time, ``default`` when unknown).

    The runner starts the ready stage with the longest such chain first (critical-path list
    scheduling, as ninja orders its edges by the times in ``.ninja_log``): the LoRA/DoRA grid's
    chain then starts before the short stages that could run beside it at any time.
    """
    import networkx as nx

    wanted, chain = set(names), {}
    for name in nx.topological_sort(graph):  # a stage comes before the stages it needs
        if name in wanted:
            waiting = [chain[d] for d in graph.predecessors(name) if d in chain]
            chain[name] = expected.get(name, default) + max(waiting, default=0.0)
    return chain


def last_stage_seconds(root: Path = ROOT) -> dict[str, float]:
    """Each stage's wall seconds in ``root``'s last timed run (``benchmarks/bench_repro.py``),
    if any."""
    path = root / TIMINGS
    if not path.exists():
        return {}
    return {row["stage"]: row["seconds"] for row in json.loads(path.read_text())["stages"]
            if row["ran"]}


def threads_per_stage(jobs: int) -> int:
    """Torch threads for each of ``jobs`` stages running at once on this machine's cores."""
    return max(1, len(os.sched_getaffinity(0)) // jobs)


def run_side_by_side(names: Sequence[str], jobs: int, *, force: bool = False, logs: Path = LOGS,
                     wrap: Sequence[str] = (), root: Path = ROOT,
                     on_finish: Callable[[str, float, Path], None] | None = None) -> list[str]:
    """Run the stages of ``names`` that need it, ``jobs`` at a time; see the module docstring.

    ``root``: the DVC project; ``wrap``: a command prefix for each stage (``/usr/bin/time -v``
    in ``bench_repro``);
    ``on_finish(stage, wall_seconds, log_path)`` is called as each one succeeds.
    Returns the stages run and committed, in the order they finished. Raises
    :class:`ConfigError` for ``jobs`` < 1, and ``SystemExit`` naming the stage that failed
    (after committing the ones that finished).
    """
    if jobs < 1:
        raise ConfigError(f"jobs: {jobs}; need an integer ≥ 1")
    repo, graph, stages = pipeline_graph(root)
    with contextlib.chdir(root):  # DVC reads targets relative to the working directory
        todo = changed_stages(repo, graph, names, force)
    needs = {name: set(graph.successors(name)) & todo for name in todo}
    chain = critical_path_seconds(graph, names, last_stage_seconds(root))
    # longest chain first; ties (and a first run, with no timings) in dependency order
    pending = sorted((name for name in names if name in todo), key=lambda name: -chain[name])
    running: dict[str, tuple[subprocess.Popen, object, float]] = {}
    finished: list[str] = []
    failed = None
    logs.mkdir(parents=True, exist_ok=True)
    threads = str(threads_per_stage(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    while (pending and failed is None) or running:
        ready = [name for name in pending if needs[name] <= set(finished)]
        for name in ready[:max(0, jobs - len(running))] if failed is None else []:
            pending.remove(name)
            with repo.lock:  # released before the stage's own `dvc` calls need it
                stages[name].remove_outs(ignore_remove=False, force=False)
            log = open(logs / f"{name}.log", "w")
            print(f"running stage '{name}' ({threads} thread(s)): {logs / name}.log", flush=True)
            process = subprocess.Popen([*wrap, "bash", "-c", stages[name].cmd], cwd=root, env=env,
                                       stdout=log, stderr=subprocess.STDOUT)
            running[name] = (process, log, time.perf_counter())
        time.sleep(1)
        for name, (process, log, started) in list(running.items()):
            if process.poll() is None:
                continue
            log.close()
            del running[name]
            if process.returncode == 0:
                finished.append(name)
                if on_finish is not None:
                    on_finish(name, time.perf_counter() - started, logs / f"{name}.log")
            elif failed is None:
                failed = name
                sys.stderr.write((logs / f"{name}.log").read_text()[-4000:])
                for other, _, _ in running.values():
                    other.terminate()
    if finished:
        subprocess.run([DVC, "commit", "--force", "--quiet", *finished], cwd=root, check=True)
    if failed is not None:
        raise SystemExit(f"error: stage {failed} failed (log: {logs / failed}.log); "
                         f"committed the {len(finished)} stage(s) that finished")
    return finished


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="*", help="these and what they need (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="stages at once (1: plain dvc repro)")
    parser.add_argument("--force", action="store_true", help="run every stage, changed or not")
    args = parser.parse_args(argv)
    if args.jobs == 1:
        return subprocess.run([DVC, "repro", *(["--force"] if args.force else []), *args.stages],
                              cwd=ROOT).returncode

    def side_by_side() -> None:
        _, graph, _ = pipeline_graph()
        ran = run_side_by_side(stage_order(graph, args.stages), args.jobs, force=args.force)
        print(f"ran and committed {len(ran)} stage(s)" if ran
              else "Data and pipelines are up to date.")

    return run_cli(side_by_side)


if __name__ == "__main__":
    sys.exit(main())
