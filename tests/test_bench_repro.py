"""benchmarks/bench_repro.py's wall time over invocations that re-ran part of the pipeline."""

import pytest

from benchmarks.bench_repro import wall_seconds


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


def test_the_machine_peak_sees_memory_taken_while_it_samples():
    from benchmarks.bench_repro import MachinePeak

    sampler = MachinePeak(interval=0.05)
    sampler.start()
    block = bytearray(b"\x01") * (256 * 2**20)  # written, so every page is resident
    sampler.done.wait(0.5)
    sampler.done.set()
    sampler.join()
    assert len(block) and sampler.peak > 0.1
