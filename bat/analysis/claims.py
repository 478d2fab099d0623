"""The paper's claims, each classified from the committed metrics by :mod:`bat.analysis.statistics`.

:data:`CLAIMS` is declarative: one :class:`Claim` per claim and setting (style, adapter), naming
the two regimes compared, the claimed sign of ``regime − reference``, and a source in
``metrics/<stem>.json`` from which the per-seed differences are read. Three kinds of source
cover what the notebooks write:

- :class:`PerSeed`: a table with one row per run (``regime``, ``seed``, the measure), paired by
  seed here;
- :class:`SeedDifferences`: a table that already holds one difference per seed;
- :class:`Summary`: a row with the mean, sd (ddof = 1) and count of per-seed differences, as
  ``grid_results.band_summary(paired_difference(...))`` stores them.

Unless ``where`` names a ``step``, each source reads the last step its rows hold, so the mapping
survives a change of run length. A claim with ``source=None`` is listed as *not tested*, with the
reason. ``python -m bat.analysis.claims`` rewrites README's block between :data:`START` and :data:`END`;
``tests/test_claims.py`` fails when README differs from :func:`render`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bat import paths
from bat.errors import ConfigError
from bat.io import read_json
from bat.analysis.statistics import PairedComparison, Verdict, compare, paired_differences, summarize, verdict

START, END = "<!-- claims:start -->", "<!-- claims:end -->"
NOT_TESTED = "not tested"
MOVEMENT = "‖θ − θ^{A*}‖ (movement)"


def _table(root: Path, stem: str, table: str) -> pd.DataFrame:
    """``metrics/<stem>.json`` at the dotted key ``table`` (``"differences.image"``) as a frame."""
    path = root / "metrics" / f"{stem}.json"
    if not path.is_file():
        raise ConfigError(f"stem: metrics/{stem}.json does not exist; run its stage (dvc repro {stem})")
    node = read_json(path)
    for key in table.split("."):
        if not isinstance(node, dict) or key not in node:
            keys = sorted(node) if isinstance(node, dict) else []
            raise ConfigError(f"table: {table!r} is not in metrics/{stem}.json; at {key!r} it has {keys}")
        node = node[key]
    return pd.DataFrame(node)


def _select(frame: pd.DataFrame, where: dict, what: str) -> pd.DataFrame:
    missing = [name for name in where if name not in frame]
    if missing:
        raise ConfigError(f"where: columns {missing} are not in {what}; it has {list(frame.columns)}")
    for name, wanted in where.items():
        frame = frame[frame[name].isna() if wanted is None else frame[name] == wanted]
    if frame.empty:
        raise ConfigError(f"where: no rows of {what} match {where}")
    if "step" in frame and "step" not in where:
        frame = frame[frame["step"] == frame["step"].max()]
    return frame


@dataclass(frozen=True)
class PerSeed:
    """Rows per run in ``metrics/<stem>.json[table]``; ``value`` of the claim's two regimes is
    paired by ``seed`` (:func:`bat.analysis.statistics.paired_differences`) after ``where`` selects the
    setting; seeds run in only one regime drop out."""

    stem: str
    table: str
    value: str
    where: dict = field(default_factory=dict)

    def read(self, root: Path, claim: Claim) -> tuple[PairedComparison, int]:
        frame = _select(_table(root, self.stem, self.table), self.where, f"{self.stem}.{self.table}")
        differences = paired_differences(frame, self.value, claim.regime, claim.reference)
        return compare(differences.to_numpy()), int(frame["step"].iloc[0])


@dataclass(frozen=True)
class SeedDifferences:
    """One ``regime − reference`` difference per seed, in column ``column``."""

    stem: str
    table: str
    column: str = "difference"
    where: dict = field(default_factory=dict)

    def read(self, root: Path, claim: Claim) -> tuple[PairedComparison, int]:
        frame = _select(_table(root, self.stem, self.table), self.where, f"{self.stem}.{self.table}")
        if frame["seed"].duplicated().any():
            raise ConfigError(f"where: {self.where} leaves several rows per seed in {self.stem}.{self.table}")
        return compare(frame[self.column].astype(float).to_numpy()), int(frame["step"].iloc[0])


@dataclass(frozen=True)
class Summary:
    """One row holding the ``mean``, ``sd`` (ddof = 1) and ``count`` of per-seed differences."""

    stem: str
    table: str
    where: dict = field(default_factory=dict)
    mean: str = "mean"
    sd: str = "std"
    count: str = "count"

    def read(self, root: Path, claim: Claim) -> tuple[PairedComparison, int]:
        frame = _select(_table(root, self.stem, self.table), self.where, f"{self.stem}.{self.table}")
        if len(frame) != 1:
            raise ConfigError(f"where: {self.where} selects {len(frame)} rows of {self.stem}.{self.table}; "
                              "a summary source needs exactly one")
        row = frame.iloc[0]
        return summarize(float(row[self.mean]), float(row[self.sd]), int(row[self.count])), int(row["step"])


@dataclass(frozen=True)
class Claim:
    """One claim of the paper in one setting.

    ``direction`` is the claimed sign of ``regime − reference`` on ``metric`` ("lower" or
    "higher"); ``paper_effect`` the paper's signed effect size where it states one; ``source``
    where the per-seed differences are, or ``None`` with ``untested`` saying why.
    """

    id: str
    item: str
    statement: str
    metric: str
    regime: str
    reference: str
    direction: str
    source: PerSeed | SeedDifferences | Summary | None
    paper_effect: float | None = None
    untested: str = ""


@dataclass(frozen=True)
class Result:
    claim: Claim
    step: int | None
    verdict: Verdict | None  # None: not tested

    @property
    def label(self) -> str:
        return self.verdict.label if self.verdict else NOT_TESTED


_DB = "fig09_seeds"  # per-seed BAT − plain distances of the DreamBooth and LoRA grids

CLAIMS: tuple[Claim, ...] = (
    *(Claim(f"fig04-{style}", "Fig. 4", f"BAT converges faster than DreamBooth in the initial steps ({style})",
            MOVEMENT, "bat", "plain", "lower",
            SeedDifferences(_DB, "differences.image", where={"dataset": style}))
      for style in ("noto", "emojione")),
    *(Claim(f"fig03-{style}", "Fig. 3", f"BAT stays closer to θ^{{A*}} than random augmentation ({style})",
            MOVEMENT, "bat", "random", "lower",
            Summary("fig03_weight_difference_vs_random", "minus_random",
                    where={"dataset": style, "regime": "bat"}))
      for style in ("noto", "emojione")),
    *(Claim(f"fig05-{adapter}", "Fig. 5", f"BAT converges faster than plain {name} adaptation",
            MOVEMENT, "bat", "plain", "lower",
            Summary("fig05_other_adapters", "bat_minus_plain", where={"adapter": adapter}))
      for adapter, name in (("locon", "LoCon"), ("lora", "LoRA"), ("dora", "DoRA"))),
    *(Claim(f"tab01-{score}-{style}", "Tab. 1, Fig. 10",
            f"BAT surpasses plain DreamBooth on {label} mid-training ({style})",
            label, "bat", "plain", "higher",
            PerSeed("fig10_samples", "scores", score, where={"dataset": style}))
      for score, label in (("cosine", "cosine to the style"), ("clip_cosine", "CLIP cosine to the prompt"))
      for style in ("noto", "emojione")),
    Claim("tab01-text", "Tab. 1", "BAT surpasses plain LoRA / DoRA on the LM benchmarks",
          "benchmark accuracy", "bat", "plain", "higher", None,
          untested="the benchmarks are not scored on the adapted LMs"),
    Claim("fig01", "Fig. 1", "BAT beats random augmentation on every personalization metric",
          "cosine, CLIP cosine, centroid distance, Vendi", "bat", "random", "higher", None,
          untested="metrics/fig01_metrics_vs_random.json keeps mean ± sd per regime, not per seed"),
    Claim("tab02", "Tab. 2", "BAT from data outside the backbone's training set beats plain",
          "held-out loss", "bat (out of D^B)", "plain", "lower", None,
          untested="metrics/tab02_out_of_backbone.json keeps mean ± sd per regime, not per seed"),
    Claim("fig06", "Fig. 6", "With the most backbone data (γ = 0.16) BAT converges faster than plain",
          MOVEMENT, "bat", "plain", "lower",
          Summary("fig06_ratio", "final_bat_minus_plain", where={"gamma": 0.16, "score": "weight_difference"})),
    Claim("fig07", "Fig. 7", "BAT regularizes overfitting",
          "held-out loss rise after its minimum", "bat", "plain", "lower", None,
          untested="metrics/fig07_overfitting.json keeps one run per regime"),
    Claim("fig08", "Fig. 8", "At the largest batch (8) BAT converges faster than plain",
          MOVEMENT, "bat", "plain", "lower",
          Summary("fig08_batch_size", "final_bat_minus_plain", where={"batch_size": 8, "score": "weight_difference"})),
)


def classify(claims: tuple[Claim, ...] = CLAIMS, root: str | Path = paths.ROOT) -> list[Result]:
    """Each claim's verdict from ``<root>/metrics``. Raises :class:`ConfigError` when a source's
    file, table, columns or rows are missing."""
    results = []
    for claim in claims:
        if claim.source is None:
            results.append(Result(claim, None, None))
            continue
        comparison, step = claim.source.read(Path(root), claim)
        results.append(Result(claim, step, verdict(comparison, claim.direction, claim.paper_effect)))
    return results


def _number(value: float) -> str:
    return f"{value:.3g}".replace("-", "−")


def render(results: list[Result]) -> str:
    """The claims table as Markdown: difference ``regime − reference`` (mean over seeds, 95 %
    t-interval), MDE and verdict per claim."""
    lines = [
        "| claim | paper | measure | compared | step | seeds | mean difference [95 % interval] | MDE | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        claim = result.claim
        compared = f"{claim.regime} − {claim.reference} ({claim.direction} claimed)"
        head = f"| {claim.statement} | {claim.item} | {claim.metric} | {compared} |"
        if result.verdict is None:
            lines.append(f"{head} | | | | **{NOT_TESTED}**: {claim.untested} |")
            continue
        c = result.verdict.comparison
        interval = f" [{_number(c.low)}, {_number(c.high)}]" if c.defined else " (no interval)"
        mde = _number(c.mde) if c.defined else "undefined"
        lines.append(f"{head} {result.step} | {c.seeds} | {_number(c.mean)}{interval} | {mde} | "
                     f"**{result.label}**: {result.verdict.reason} |")
    return "\n".join(lines) + "\n"


def replace_block(text: str, block: str) -> str:
    """``text`` with what lies between :data:`START` and :data:`END` replaced by ``block``.

    Raises :class:`ConfigError` unless each marker occurs once, START before END."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ConfigError(f"README: needs one {START} line followed by one {END} line around the claims table")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{block}{END}{tail}"


def update_readme(readme: str | Path = paths.ROOT / "README.md", root: str | Path = paths.ROOT) -> bool:
    """Rewrite README's claims block from ``<root>/metrics``; whether anything changed."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    updated = replace_block(text, render(classify(root=root)))
    if updated != text:
        readme.write_text(updated, encoding="utf-8")
    return updated != text


if __name__ == "__main__":
    changed = update_readme()
    print("README.md claims table " + ("updated" if changed else "unchanged"), file=sys.stderr)
