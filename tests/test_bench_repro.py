"""benchmarks/bench_repro.py's wall time over invocations that re-ran part of the pipeline."""

import pytest

from benchmarks.bench_repro import current_invocations, wall_seconds


def row(stage, seconds, invocation=None):
    return {"stage": stage, "seconds": seconds, "ran": True,
            **({} if invocation is None else {"invocation": invocation})}


def test_an_invocation_partly_measured_again_counts_only_its_current_rows():
    invocations = [{"start": 0.0, "end": 100.0, "measured": ["a", "b", "c"]},
                   {"start": 200.0, "end": 260.0, "measured": ["b", "c"]}]
    rows = [row("a", 7.0, 0.0), row("b", 30.0, 200.0), row("c", 50.0, 200.0)]
    assert wall_seconds(invocations, rows) == pytest.approx(60.0 + 7.0)


def test_side_by_side_invocations_count_their_overlap_once():
    invocations = [{"start": 0.0, "end": 100.0, "measured": ["a"]},
                   {"start": 50.0, "end": 120.0, "measured": ["b"]}]
    assert wall_seconds(invocations, [row("a", 90.0, 0.0), row("b", 60.0, 50.0)]) == 120.0


def test_rows_written_before_invocations_were_named_count_their_seconds():
    assert wall_seconds([], [row("a", 5.0), {"stage": "b", "seconds": 9.0, "ran": False}]) == 5.0


def test_an_invocation_measured_again_in_full_is_dropped():
    invocations = [{"start": 0.0, "end": 100.0, "measured": ["a", "b"], "machine_peak_gib": 9.0},
                   {"start": 200.0, "end": 260.0, "measured": ["b"], "machine_peak_gib": 2.0},
                   {"start": 300.0, "end": 320.0, "measured": ["a"], "machine_peak_gib": 3.0}]
    rows = [row("a", 20.0, 300.0), row("b", 60.0, 200.0)]
    assert [i["start"] for i in current_invocations(invocations, rows)] == [200.0, 300.0]


def test_the_machine_peak_is_the_most_in_use_above_the_start(tmp_path):
    from benchmarks.bench_repro import MachinePeak, memory_in_use_gib

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       8388608 kB\nMemFree:        1048576 kB\n"
                       "MemAvailable:   6291456 kB\n")
    assert memory_in_use_gib(meminfo) == 2.0
    readings = iter([1.0, 2.5, 4.0, 3.0])  # GiB in use: at the start, then three samples
    sampler = MachinePeak(read=lambda: next(readings))
    for _ in range(3):
        sampler.sample()
    assert sampler.peak == 3.0
