"""The claims table: README matches what the committed metrics give, and each kind of source
reads the same per-seed differences as computing them another way."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bat import paths
from bat.analysis.claims import (CLAIMS, END, START, Claim, PerSeed, SeedDifferences, Summary, classify, render,
                        replace_block)
from bat.errors import ConfigError
from bat.analysis.runs import band_summary, paired_difference, records


def test_readme_claims_block_is_generated_from_committed_metrics():
    readme = (paths.ROOT / "README.md").read_text(encoding="utf-8")
    expected = replace_block(readme, render(classify()))
    assert readme == expected, "README's claims table is stale: run python -m bat.analysis.claims"


def test_fig04_rows_match_scipy_on_the_stored_distances():
    # The stored per-seed "difference" against weight_difference − weight_difference_reference,
    # the two distances it was computed from, through scipy's paired t-test.
    rows = pd.DataFrame(json.loads((paths.METRICS / "fig09_seeds.json").read_text())["differences"]["image"])
    results = {r.claim.id: r for r in classify(tuple(c for c in CLAIMS if c.id.startswith("fig04")))}
    for style in ("noto", "emojione"):
        last = rows[(rows["dataset"] == style) & (rows["step"] == rows["step"].max())]
        expected = stats.ttest_rel(last["weight_difference"], last["weight_difference_reference"])
        interval = expected.confidence_interval(0.95)
        comparison = results[f"fig04-{style}"].verdict.comparison
        assert comparison.seeds == len(last)
        assert (comparison.low, comparison.high) == pytest.approx((interval.low, interval.high), abs=1e-9)


def synthetic_metrics(root, seeds):
    """A run table of two regimes, stored per run, as per-seed differences, and as the notebooks'
    band summary of the paired differences."""
    rng = np.random.default_rng(3)
    runs = pd.DataFrame([{"dataset": "noto", "adapter": "dreambooth", "batch_size": 4, "seed": seed,
                          "regime": regime, "step": step, "heldout_loss": rng.normal(0.2, 0.01)}
                         for seed in seeds for regime in ("plain", "bat") for step in (0, 8)])
    gap = paired_difference(runs, "heldout_loss", "bat")
    (root / "metrics").mkdir()
    (root / "metrics" / "synthetic.json").write_text(json.dumps({
        "runs": records(runs), "gap": records(gap),
        "summary": records(band_summary(gap.assign(regime="bat"), "difference"))}))
    return runs


@pytest.mark.parametrize("seeds", [[0, 1, 2, 3, 4], [7]])
def test_every_source_kind_gives_the_same_comparison(tmp_path, seeds):
    runs = synthetic_metrics(tmp_path, seeds)
    sources = [PerSeed("synthetic", "runs", "heldout_loss"), SeedDifferences("synthetic", "gap"),
               Summary("synthetic", "summary")]
    claims = tuple(Claim(f"c{i}", "Fig. 4", "BAT lowers held-out loss", "held-out loss", "bat", "plain",
                         "lower", source) for i, source in enumerate(sources))
    results = classify(claims, root=tmp_path)
    last = runs[runs["step"] == 8].pivot(index="seed", columns="regime", values="heldout_loss")
    differences = (last["bat"] - last["plain"]).to_numpy()
    for result in results:
        comparison = result.verdict.comparison
        assert result.step == 8 and comparison.seeds == len(seeds)
        assert comparison.mean == pytest.approx(differences.mean(), abs=1e-9)  # records() keeps 10 decimals
        if len(seeds) > 1:
            interval = stats.t.interval(0.95, len(seeds) - 1, loc=differences.mean(),
                                        scale=stats.sem(differences))
            assert (comparison.low, comparison.high) == pytest.approx(interval, abs=1e-9)  # records() keeps 10 decimals
        else:
            assert result.label == "inconclusive" and not comparison.defined
    assert len({r.label for r in results}) == 1


def test_untested_claims_render_with_their_reason():
    results = classify(tuple(c for c in CLAIMS if c.source is None))
    table = render(results)
    assert all(r.label == "not tested" for r in results)
    for result in results:
        assert result.claim.untested in table
    # Header, separator and one row per claim, each with the header's nine cells.
    widths = {line.count("|") for line in table.splitlines()}
    assert widths == {10}


def test_bad_sources_and_readme_markers_name_the_field(tmp_path):
    synthetic_metrics(tmp_path, [0, 1])
    claim = Claim("c", "Fig. 4", "s", "m", "bat", "plain", "lower", None)
    with pytest.raises(ConfigError, match="table"):
        Summary("synthetic", "nothing").read(tmp_path, claim)
    with pytest.raises(ConfigError, match="stem"):
        Summary("absent", "summary").read(tmp_path, claim)
    with pytest.raises(ConfigError, match="where"):
        Summary("synthetic", "summary", where={"dataset": "emojione"}).read(tmp_path, claim)
    with pytest.raises(ConfigError, match="regime"):
        PerSeed("synthetic", "runs", "heldout_loss").read(tmp_path, Claim("c", "", "", "", "random", "plain",
                                                                         "lower", None))
    with pytest.raises(ConfigError, match="README"):
        replace_block(f"text {END} {START}", "x")
    assert replace_block(f"a\n{START}\nold\n{END}\nb", "new\n") == f"a\n{START}\nnew\n{END}\nb"
