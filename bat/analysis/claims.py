"""The paper's claims, each computed from the committed run tables by :mod:`bat.analysis.statistics`.

:data:`CLAIMS` is declarative: one :class:`Claim` per claim and setting (style, adapter, γ...),
naming the two regimes, the claimed sign of ``regime − reference`` and a :class:`RunComparison`:
which grid and table (``runs/<grid>/evaluations.csv`` or ``steps.csv``), which measure, which
setting (``where``) and at which step the two regimes meet (``align``, :data:`ALIGNMENTS`):

- ``"steps"``: equal steps, the last step at which both regimes have the measure for every seed
  (the backbone's step 0 does not count: every regime starts there);
- ``"exposure"``: equal D^A exposure, the regime at its last measured step and the reference at
  its first measured step that has seen at least as many D^A examples (``n_adaptation`` in
  ``steps.csv``; with regular-interval mixing BAT sees fewer D^A examples per step than plain);
- ``"final"``: each run's last measured step, i.e. equal wall time for ``compute_matched``, whose
  extra steps are the seconds BAT spent selecting;
- ``"budget"``: the regime at its last measured step, the reference at whichever of its measured
  steps after 0 is best for it (lowest for a "lower" claim): the reference given the regime's
  wall time and allowed to stop early. Plain DreamBooth trained past its held-out minimum gets
  worse with extra steps, so at ``"final"`` BAT would "beat" ``compute_matched`` through the
  baseline's over-training alone; choosing the reference's step by the held-out measure itself
  favours the reference, so a claim that holds here holds against any stopping rule;
- ``"backbone"``: the regime at its last measured step, the reference at step 0 (the backbone
  itself, which every regime shares): how far training moved a measure, e.g. the premise of a
  retention control, that plain training at its rate does forget (regime and reference both
  ``plain``).

Positive controls gate the verdicts: a claim on a run grid is *held* or *contradicted* only when
every control of its track (:data:`CONTROLS`, the track read from ``runs/<grid>/grid.json``) is
*held*; otherwise the verdict is *inconclusive*, naming the control (an experiment that cannot
detect a known effect cannot support a verdict either way).

The two sides must share every setting but γ (dataset, adapter, batch size) and are paired by seed (:func:`bat.analysis.statistics.paired_differences`): a 95 %
t-interval, the MDE and a verdict (held / contradicted / inconclusive). Positive controls come
first. A claim whose grid, regime, measure or common step is missing is *not tested*, with the
reason; a malformed claim (unknown ``where`` key, table or alignment) raises :class:`ConfigError`.

``python -m bat.analysis.readme`` rewrites README's claims block (:mod:`bat.analysis.readme`);
``tests/test_claims.py`` fails when README differs from :func:`render`. ``bat.stages.claims``
writes the flat counts to ``metrics/claims.json``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bat import paths
from bat.errors import ConfigError
from bat.io import read_json
from bat.analysis.runs import RUN_KEYS
from bat.analysis.statistics import PairedComparison, Verdict, compare, paired_differences, verdict

NOT_TESTED = "not tested"
MOVEMENT = "‖θ − θ^{A*}‖ (movement)"
HELDOUT = "held-out loss"
TABLES = ("evaluations", "steps")
ALIGNMENTS = {"steps": "equal steps", "exposure": "equal D^A exposure", "final": "each run's last step",
              "budget": "equal wall time, the reference at its best measured step",
              "backbone": "the regime's last step against the backbone (step 0)"}
WHERE_KEYS = ("dataset", "adapter", "gamma", "batch_size")
VERDICT_CODES = {"held": 1, "inconclusive": 0, "contradicted": -1}  # metrics/*.json: numbers only


class NotTested(Exception):
    """Raised while reading a claim's tables when what it compares is not there (the message says what)."""


@dataclass(frozen=True)
class RunComparison:
    """Where a claim's per-seed values are: ``runs/<grid>/<table>.csv`` column ``measure``.

    ``where`` fixes the setting by :data:`WHERE_KEYS` (``gamma`` selects the runs at that γ and
    the γ-free ones, plain and prior preservation, whose γ is empty); ``reference_grid`` reads the
    reference regime from another grid (Tab. 2: plain runs live in ``dreambooth``); ``align``
    is one of :data:`ALIGNMENTS`.
    """

    grid: str
    measure: str
    table: str = "evaluations"
    where: dict = field(default_factory=dict)
    reference_grid: str | None = None
    align: str = "steps"

    def __post_init__(self):
        if self.table not in TABLES:
            raise ConfigError(f"table: {self.table!r} is not allowed; use one of {TABLES}")
        if self.align not in ALIGNMENTS:
            raise ConfigError(f"align: {self.align!r} is not allowed; use one of {tuple(ALIGNMENTS)}")
        unknown = sorted(set(self.where) - set(WHERE_KEYS))
        if unknown:
            raise ConfigError(f"where: keys {unknown} are not allowed; use {WHERE_KEYS} (the step comes "
                              "from align)")

    def read(self, root: Path, claim: Claim) -> tuple[PairedComparison, str]:
        """The paired comparison and the step(s) compared, as text ("12", or "bat 4 / plain 2")."""
        regime = _side(root, self.grid, self.table, self.measure, self.where, claim.regime)
        reference = _side(root, self.reference_grid or self.grid, self.table, self.measure, self.where,
                          claim.reference)
        for key in WHERE_KEYS:
            if key == "gamma" or key not in regime or key not in reference:
                continue
            values = {side: set(rows[key].dropna()) for side, rows in (("regime", regime), ("reference", reference))}
            if values["regime"] != values["reference"]:
                raise ConfigError(f"where: {self.where} pairs {claim.regime!r} runs of {key} "
                                  f"{sorted(values['regime'])} with {claim.reference!r} runs of "
                                  f"{sorted(values['reference'])}; name the {key} in where")
        # Label the sides, not the regimes: Tab. 2 compares "bat" of one grid with "bat" of another.
        chosen = _align(regime.assign(side="regime"), reference.assign(side="reference"), self.measure,
                        self.align, claim)
        differences = paired_differences(chosen.drop(columns="regime").rename(columns={"side": "regime"}),
                                         self.measure, "regime", "reference")
        if differences.empty:
            raise NotTested(f"{claim.regime} and {claim.reference} share no seed")
        steps = chosen.groupby("side")["step"].agg(lambda s: "–".join(map(str, sorted(set(s)))))
        label = (steps["regime"] if steps["regime"] == steps["reference"]
                 else f"{claim.regime} {steps['regime']} / {claim.reference} {steps['reference']}")
        return compare(differences.to_numpy()), label


def _side(root: Path, grid: str, table: str, measure: str, where: dict, regime: str) -> pd.DataFrame:
    """One regime's rows of ``runs/<grid>/<table>.csv`` in the setting ``where``, with the
    ``n_adaptation`` of each row's step (from ``steps.csv``) and only the steps that have ``measure``."""
    folder = root / "runs" / grid
    if not (folder / f"{table}.csv").is_file():
        raise NotTested(f"runs/{grid}/{table}.csv is not in this checkout")
    frame = pd.read_csv(folder / f"{table}.csv")
    if measure not in frame:
        raise NotTested(f"runs/{grid}/{table}.csv has no {measure!r}")
    rows = frame[frame["regime"] == regime]
    if rows.empty:
        raise NotTested(f"runs/{grid} has no {regime!r} runs")
    for name, wanted in where.items():
        if name == "gamma":
            rows = rows[rows["gamma"].isna() | (rows["gamma"] == wanted)]
        else:
            rows = rows[rows[name] == wanted]
    if rows.empty:
        raise NotTested(f"runs/{grid} has no {regime!r} runs where {where}")
    varying = [k for k in WHERE_KEYS if k in rows and rows[k].nunique(dropna=False) > 1]
    if varying:
        raise ConfigError(f"where: {where} leaves {regime!r} runs of several {varying} in runs/{grid}; fix them")
    if table == "evaluations" and "n_adaptation" not in rows:
        steps = pd.read_csv(folder / "steps.csv")
        keys = [*RUN_KEYS, "step"]  # γ too: one seed's BAT runs at several γ share the rest (pandas pairs NaN γ)
        exposure = steps[steps["regime"] == regime][[*keys, "n_adaptation"]]
        rows = rows.merge(exposure, on=keys, how="left")
    return rows.dropna(subset=[measure])


def _align(regime: pd.DataFrame, reference: pd.DataFrame, measure: str, align: str,
           claim: Claim) -> pd.DataFrame:
    """One row per seed and side, at the steps ``align`` pairs (see the module docstring)."""
    seeds = sorted(set(regime["seed"]) & set(reference["seed"]))
    if not seeds:
        raise NotTested(f"{claim.regime} and {claim.reference} share no seed")
    regime, reference = regime[regime["seed"].isin(seeds)], reference[reference["seed"].isin(seeds)]

    def steps_of(rows):  # the steps measured for every paired seed
        return set.intersection(*(set(group["step"]) for _, group in rows.groupby("seed")))

    if align == "steps":
        common = (steps_of(regime) & steps_of(reference)) - {0}
        if not common:
            raise NotTested(f"{claim.regime} and {claim.reference} have no common measured step after 0")
        last = max(common)
        return pd.concat([regime[regime["step"] == last], reference[reference["step"] == last]])
    if align == "final":
        return pd.concat([rows.loc[rows.groupby("seed")["step"].idxmax()] for rows in (regime, reference)])
    ends = regime.loc[regime.groupby("seed")["step"].idxmax()]  # backbone, budget, exposure: its end
    if align == "backbone":
        start = reference[reference["step"] == 0]
        unmeasured = sorted(set(ends.loc[ends["step"] == 0, "seed"]))
        if unmeasured:
            raise NotTested(f"{claim.regime} has no measured step after 0 (seeds {unmeasured})")
        missing = sorted(set(ends["seed"]) - set(start["seed"]))
        if missing:
            raise NotTested(f"{claim.reference} has no step 0 (seeds {missing})")
        return pd.concat([ends, start])
    if align == "budget":
        measured = reference[reference["step"] > 0]
        if measured.empty:
            raise NotTested(f"{claim.reference} has no measured step after 0")
        pick = "idxmin" if claim.direction == "lower" else "idxmax"
        return pd.concat([ends, measured.loc[getattr(measured.groupby("seed")[measure], pick)()]])
    # exposure: the reference where it has seen as many D^A examples as the regime at its end
    matched = []
    for _, end in ends.iterrows():
        candidates = reference[(reference["seed"] == end["seed"])
                               & (reference["n_adaptation"] >= end["n_adaptation"])]
        if candidates.empty:
            raise NotTested(f"{claim.reference} has no measured step with ≥ {end['n_adaptation']:g} D^A "
                            f"examples (seed {end['seed']}); evaluate it more often")
        matched.append(candidates.loc[candidates["step"].idxmin()])
    return pd.concat([ends, pd.DataFrame(matched)])


@dataclass(frozen=True)
class ConvexControl:
    """Positive control (i): per-seed rows of the convex check (``model``, ``n``, ``method``,
    ``seed``, ``measure``), read from ``plots/prop2_convex/seeds.csv`` (flat metrics keep tables
    out of ``metrics/``) or else from the list ``rows`` of ``metrics/prop2_convex.json``. Compared
    at every ``n``; the ``n`` whose interval is least favourable to the claim is reported, so the
    verdict is *held* only if it holds at every ``n``."""

    model: str
    rows: str = "seeds"
    measure: str = "n_error"

    def read(self, root: Path, claim: Claim) -> tuple[PairedComparison, str]:
        table, path = root / "plots" / "prop2_convex" / f"{self.rows}.csv", root / "metrics" / "prop2_convex.json"
        if table.is_file():
            frame = pd.read_csv(table)
        else:
            stored = read_json(path) if path.is_file() else None
            if not isinstance(stored, dict) or not isinstance(stored.get(self.rows), list):
                raise NotTested(f"neither plots/prop2_convex/{self.rows}.csv nor a list {self.rows!r} in "
                                "metrics/prop2_convex.json holds per-seed rows (set-level summaries only)")
            frame = pd.DataFrame(stored[self.rows])
        frame = frame[frame["model"] == self.model].rename(columns={"method": "regime"})
        sign = -1.0 if claim.direction == "lower" else 1.0
        worst = None
        for n, rows in frame.groupby("n"):
            comparison = compare(paired_differences(rows, self.measure, claim.regime, claim.reference).to_numpy())
            # The bound nearest to "not as claimed", in the claimed orientation (positive: as claimed).
            bound = sign * ((comparison.high if sign < 0 else comparison.low) if comparison.defined
                            else comparison.mean)
            if worst is None or bound < worst[0]:
                worst = (bound, comparison, f"n = {n}")
        if worst is None:
            raise NotTested(f"the convex check's per-seed rows have no {self.model!r} rows")
        return worst[1], worst[2]


@dataclass(frozen=True)
class Claim:
    """One claim of the paper in one setting.

    ``direction`` is the claimed sign of ``regime − reference`` on ``metric`` ("lower" or
    "higher"); ``paper_effect`` the paper's signed effect size where it states one; ``source``
    where the per-seed values are, or ``None`` with ``untested`` saying why; ``control`` marks a
    positive control (listed first, it must be *held* for the other claims to mean anything).
    """

    id: str
    item: str
    statement: str
    metric: str
    regime: str
    reference: str
    direction: str
    source: RunComparison | ConvexControl | None
    paper_effect: float | None = None
    untested: str = ""
    control: bool = False


@dataclass(frozen=True)
class Result:
    claim: Claim
    step: str | None
    verdict: Verdict | None  # None: not tested
    reason: str = ""  # why not tested

    @property
    def label(self) -> str:
        return self.verdict.label if self.verdict else NOT_TESTED

    def metrics(self) -> dict:
        """The flat DVC metrics of this comparison (``effect`` = mean ``regime − reference``,
        ``ci_low``/``ci_high`` its 95 % interval, ``mde``, ``seeds``, ``verdict`` as
        :data:`VERDICT_CODES`); ``None`` where undefined, every value ``None`` when not tested
        (so that every figure's metrics file has the same keys)."""
        if self.verdict is None:
            return dict.fromkeys(("effect", "ci_low", "ci_high", "mde", "seeds", "verdict"))
        c = self.verdict.comparison
        return {"effect": c.mean, "ci_low": c.low, "ci_high": c.high, "mde": c.mde, "seeds": c.seeds,
                "verdict": VERDICT_CODES[self.verdict.label]}


def _dreambooth(style: str, regime: str, reference: str, statement: str, item: str,
                measure: str = "heldout_loss", metric: str = HELDOUT, align: str = "steps") -> Claim:
    """A DreamBooth claim of one style, id ``dreambooth-<regime>-<reference>-<style>[-movement]``."""
    suffix = "-movement" if measure == "weight_difference" else ""
    return Claim(f"dreambooth-{regime}-{reference}-{style}{suffix}", item,
                 f"{statement} ({style})", metric, regime, reference, "lower",
                 RunComparison("dreambooth", measure, "evaluations" if measure != "weight_difference" else "steps",
                               {"dataset": style}, align=align))


STYLES = ("noto", "emojione")
RETENTION = {"image": "retention loss (OpenMoji concepts held out of D^B)",
             "text": "retention LM loss (D^B records held out of every run)"}
# The text track's D^A tasks and the paper's set each stands for. The analysis package reads run
# tables only and imports no track (tests/test_layout.py); tests/test_claims.py checks that this
# equals bat.text.data.ADAPTATION_TASKS.
TEXT_TASKS = {"word_definition": "MedQuad", "example_cloze": "WinoGrande", "wiki_summary": "XSum"}

CLAIMS: tuple[Claim, ...] = (
    # Positive controls first: the claims of a track are read only once its controls held.
    *(Claim(f"control-convex-{model}", "control (i)",
            f"Convex model, D^B sharing D^A's optimum: random augmentation beats plain at every n ({model})",
            "n·‖θ̂ − θ*‖²_S", "random", "plain", "lower", ConvexControl(model), control=True)
      for model in ("ridge", "logistic")),
    Claim("control-retention", "control (ii)",
          "At a rate where plain DreamBooth forgets, random D^B augmentation keeps the backbone's concepts",
          RETENTION["image"], "random", "plain", "lower",
          RunComparison("overfitting", "retention_loss", where={"dataset": "noto"}), control=True),
    Claim("control-retention-text", "control (iii)",
          "At a rate where plain LoRA forgets, random D^B augmentation keeps the text backbone's "
          "instruction following", RETENTION["text"], "random", "plain", "lower",
          RunComparison("forgetting", "retention_loss", where={"dataset": "word_definition"}),
          control=True),
    # The retention controls' premise, so that each verifies itself: at their rate plain forgets.
    *(Claim(f"{name}-premise", item, f"Premise of {item}: at its rate plain {adapter} forgets "
            "(its retention loss rises above the backbone's)", metric, "plain", "plain", "higher",
            RunComparison(grid, "retention_loss", where={"dataset": dataset}, align="backbone"),
            control=True)
      for name, item, adapter, metric, grid, dataset in (
          ("control-retention", "control (ii)", "DreamBooth", RETENTION["image"], "overfitting", "noto"),
          ("control-retention-text", "control (iii)", "LoRA", RETENTION["text"], "forgetting",
           "word_definition"))),
    # Headline: DreamBooth, per style, held-out loss at equal steps.
    *(_dreambooth(style, "bat", "plain", "BAT lowers the held-out loss of DreamBooth", "Fig. 4")
      for style in STYLES),
    *(_dreambooth(style, "bat", "prior_preservation",
                  "BAT lowers the held-out loss of DreamBooth with prior preservation", "Sec. 5.1")
      for style in STYLES),
    *(_dreambooth(style, "bat", "random", "BAT beats random augmentation on held-out loss", "Fig. 1")
      for style in STYLES),
    *(_dreambooth(style, "bat", "random_matched",
                  "BAT beats random samples of its own pool, as many as it took", "Fig. 4")
      for style in STYLES),
    *(_dreambooth(style, "bat", "compute_matched",
                  "BAT beats plain DreamBooth given BAT's selection time as extra steps", "Fig. 4",
                  align="budget")
      for style in STYLES),
    *(_dreambooth(style, "bat_oracle_free", "plain",
                  "Oracle-free BAT lowers the held-out loss of DreamBooth", "Sec. 6")
      for style in STYLES),
    *(_dreambooth(style, "bat", "plain", "BAT moves DreamBooth less far from θ^{A*}", "Fig. 4",
                  measure="weight_difference", metric=MOVEMENT)
      for style in STYLES),
    Claim("fig05-locon", "Fig. 5", "BAT lowers the held-out loss of LoCon", HELDOUT, "bat", "plain", "lower",
          RunComparison("locon", "heldout_loss", where={"adapter": "locon"})),
    # One per text task: the tiny profile trains word_definition, the paper profile all three.
    *(Claim(f"fig05-{adapter}-{task}-{align}", "Fig. 5, Tab. 1",
            f"BAT lowers the held-out LM loss of {name} ({task}, the paper's {paper_set}; "
            f"{ALIGNMENTS[align]})", "held-out LM loss", "bat", "plain", "lower",
            RunComparison("lora_dora", "heldout_loss", where={"dataset": task, "adapter": adapter},
                          align=align))
      for task, paper_set in TEXT_TASKS.items()
      for adapter, name in (("lora", "LoRA"), ("dora", "DoRA")) for align in ("steps", "exposure")),
    *(Claim(f"tab02-{style}", "Tab. 2",
            f"BAT from images outside the backbone's data lowers DreamBooth's held-out loss ({style})",
            HELDOUT, "bat", "plain", "lower",
            RunComparison("out_of_backbone", "heldout_loss", where={"dataset": style},
                          reference_grid="dreambooth"))
      for style in STYLES),
    Claim("fig06", "Fig. 6", "With the most backbone data (γ = 0.16) BAT lowers the held-out loss",
          HELDOUT, "bat", "plain", "lower", RunComparison("ratio", "heldout_loss", where={"gamma": 0.16})),
    Claim("fig07", "Fig. 7", "BAT regularizes overfitting", HELDOUT, "bat", "plain", "lower",
          RunComparison("overfitting", "heldout_loss", where={"dataset": "noto"})),
    # Regularization read on the backbone's side (no result of the paper: its runs, our measure):
    # what the retention controls show random augmentation keeps, does BAT keep it too?
    Claim("fig07-retention", "not in the paper (Fig. 7's runs)",
          "BAT keeps more of the backbone's concepts than plain DreamBooth", RETENTION["image"],
          "bat", "plain", "lower", RunComparison("overfitting", "retention_loss", where={"dataset": "noto"})),
    *(Claim(f"fig05-{adapter}-{task}-retention", "not in the paper (Fig. 5's runs)",
            f"BAT keeps more of the text backbone's instruction following than plain {name} ({task})",
            RETENTION["text"], "bat", "plain", "lower",
            RunComparison("lora_dora", "retention_loss", where={"dataset": task, "adapter": adapter}))
      for task in TEXT_TASKS for adapter, name in (("lora", "LoRA"), ("dora", "DoRA"))),
    Claim("fig08", "Fig. 8", "At the largest batch (8) BAT lowers the held-out loss", HELDOUT,
          "bat", "plain", "lower", RunComparison("batch_size", "heldout_loss", where={"batch_size": 8})),
)
CLAIMS_BY_ID = {claim.id: claim for claim in CLAIMS}  # ids are unique (tests/test_claims.py)


# The positive controls each track's claims need (module docstring): the convex check of
# Proposition 2's premise for every track, and the retention control of each track's own pipeline
# with its premise (plain forgets there).
CONTROLS = {"image": ("control-convex-ridge", "control-convex-logistic", "control-retention",
                      "control-retention-premise"),
            "text": ("control-convex-ridge", "control-convex-logistic", "control-retention-text",
                     "control-retention-text-premise")}


def _track(root: Path, grid: str) -> str:
    """The track of ``runs/<grid>`` from its ``grid.json`` (its config's ``track``)."""
    stored = read_json(root / "runs" / grid / "grid.json") if (root / "runs" / grid / "grid.json").is_file() else None
    track = stored.get("config", {}).get("track") if isinstance(stored, dict) else None
    if track not in CONTROLS:
        raise NotTested(f"runs/{grid}/grid.json names no track of {sorted(CONTROLS)}")
    return track


def _measure(claim: Claim, root: Path) -> Result:
    if claim.source is None:
        return Result(claim, None, None, claim.untested)
    try:
        comparison, step = claim.source.read(root, claim)
    except NotTested as missing:
        return Result(claim, None, None, str(missing))
    return Result(claim, step, verdict(comparison, claim.direction, claim.paper_effect))


def _gated(result: Result, track: Callable[[str], str | NotTested],
           control: Callable[[str], Result]) -> Result:
    """``result`` with a held or contradicted verdict turned inconclusive when a control of its
    track is not held (module docstring); ``track`` and ``control`` look them up by name. A
    control is never gated: a premise that fails must read *contradicted*, not be hidden as
    inconclusive by its own verdict."""
    source = result.claim.source
    if result.claim.control or result.verdict is None or result.verdict.label == "inconclusive" or not isinstance(source, RunComparison):
        return result
    found = track(source.grid)
    needed, unknown = ((), str(found)) if isinstance(found, NotTested) else (CONTROLS[found], "")
    failed = [name for name in needed if control(name).label != "held"]
    if not failed and not unknown:
        return result
    why = unknown or f"control {', '.join(failed)} not held ({', '.join(control(n).label for n in failed)})"
    gated = Verdict("inconclusive", f"{why}: the experiment cannot support a verdict; ungated: "
                    f"{result.verdict.label}", result.verdict.comparison)
    return Result(result.claim, result.step, gated, result.reason)


def classify(claims: tuple[Claim, ...] = CLAIMS, root: str | Path = paths.ROOT, *,
             gate: bool = True) -> list[Result]:
    """Each claim's verdict from ``<root>/runs`` (and ``<root>/metrics/prop2_convex.json``),
    gated by the positive controls of its track (:data:`CONTROLS`, read from :data:`CLAIMS`
    whether or not ``claims`` lists them); ``gate=False``: the ungated verdicts (tests of the
    pairing on hand-built tables, which have no controls).

    A claim whose tables lack what it compares is *not tested*, with the reason; raises
    :class:`ConfigError` when a claim selects several runs per seed or pairs sides of different
    settings."""
    root = Path(root)
    results = [_measure(claim, root) for claim in claims]
    if not gate:
        return results
    # Controls and tracks are looked up once each, and only when a verdict needs gating.
    controls = {result.claim.id: result for result in results if result.claim.control}
    tracks: dict[str, str | NotTested] = {}

    def control(name: str) -> Result:
        if name not in controls:
            controls[name] = _measure(CLAIMS_BY_ID[name], root)
        return controls[name]

    def track(grid: str) -> str | NotTested:
        if grid not in tracks:
            try:
                tracks[grid] = _track(root, grid)
            except NotTested as missing:
                tracks[grid] = missing
        return tracks[grid]

    return [_gated(result, track, control) for result in results]


def comparison_metrics(claim_id: str, root: str | Path = paths.ROOT) -> dict:
    """The flat metrics (:meth:`Result.metrics`) of the claim ``claim_id``, for a figure's
    ``metrics/<stem>.json``. Raises :class:`ConfigError` for an unknown id."""
    if claim_id not in CLAIMS_BY_ID:
        raise ConfigError(f"claim: {claim_id!r} is not in CLAIMS; known: {list(CLAIMS_BY_ID)}")
    return classify((CLAIMS_BY_ID[claim_id],), root)[0].metrics()


def compare_regimes(grid: str, measure: str, regimes, reference: str = "plain", settings=({},),
                    direction: str = "lower", table: str = "evaluations", align: str = "steps",
                    reference_grid: str | None = None, root: str | Path = paths.ROOT,
                    gate: bool = True) -> list[Result]:
    """Each of ``regimes`` against ``reference`` (of ``reference_grid``, default the same grid) on
    ``measure`` of ``runs/<grid>``, once per setting (a ``where`` dict, e.g. ``{"dataset": "noto"}``):
    the figures' comparison tables, built by the same pairing and gating as :data:`CLAIMS`. Raises
    :class:`ConfigError` for a bad table, align or where."""
    claims = tuple(Claim(f"{grid}-{regime}-{reference}-{i}", "", ", ".join(f"{k} {v}" for k, v in where.items()),
                         measure, regime, reference, direction,
                         RunComparison(grid, measure, table, dict(where), reference_grid, align))
                   for i, where in enumerate(settings) for regime in regimes
                   if regime != reference or reference_grid not in (None, grid))
    return classify(claims, root, gate=gate)


def results_frame(results: list[Result]) -> pd.DataFrame:
    """One row per result: setting (the claim's statement, and each key of its ``where`` as a
    column of its own, e.g. ``dataset``, ``gamma``), compared, step, seeds, ``effect``, ``ci_low``,
    ``ci_high``, ``mde`` (units of the measure), verdict (label, or why not tested)."""
    rows = []
    for result in results:
        claim, c = result.claim, result.verdict.comparison if result.verdict else None
        where = claim.source.where if isinstance(claim.source, RunComparison) else {}
        rows.append({"setting": claim.statement, **where, "compared": f"{claim.regime} − {claim.reference}",
                     "step": result.step, "seeds": c.seeds if c else 0,
                     "effect": c.mean if c else None, "ci_low": c.low if c else None,
                     "ci_high": c.high if c else None, "mde": c.mde if c else None,
                     "verdict": result.label if c else f"{NOT_TESTED}: {result.reason}"})
    return pd.DataFrame(rows)


def summary_metrics(results: list[Result]) -> dict:
    """Counts for ``metrics/claims.json``: the claims (positive controls left out) per verdict, then
    the controls and how many of them held, so that a held control never reads as a held claim."""
    claims = [r for r in results if not r.claim.control]
    controls = [r for r in results if r.claim.control]
    counts = {label: sum(r.label == label for r in claims) for label in (*VERDICT_CODES, NOT_TESTED)}
    return {"held": counts["held"], "inconclusive": counts["inconclusive"],
            "contradicted": counts["contradicted"], "not_tested": counts[NOT_TESTED],
            "controls": len(controls), "controls_held": sum(r.label == "held" for r in controls)}


def _number(value: float) -> str:
    return f"{value:.3g}".replace("-", "−")


def render(results: list[Result]) -> str:
    """The claims table as Markdown: difference ``regime − reference`` (mean over seeds, 95 %
    t-interval), MDE and verdict per claim, positive controls first."""
    lines = [
        "| claim | paper | measure | compared | step | seeds | mean difference [95 % interval] | MDE | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in sorted(results, key=lambda r: not r.claim.control):
        claim = result.claim
        where = ""
        if isinstance(claim.source, RunComparison):
            where = f", {ALIGNMENTS[claim.source.align]}, `runs/{claim.source.grid}`"
        compared = f"{claim.regime} − {claim.reference} ({claim.direction} claimed{where})"
        head = f"| {claim.statement} | {claim.item} | {claim.metric} | {compared} |"
        if result.verdict is None:
            lines.append(f"{head} | | | | **{NOT_TESTED}**: {result.reason} |")
            continue
        c = result.verdict.comparison
        interval = f" [{_number(c.low)}, {_number(c.high)}]" if c.defined else " (no interval)"
        mde = _number(c.mde) if c.defined else "undefined"
        lines.append(f"{head} {result.step} | {c.seeds} | {_number(c.mean)}{interval} | {mde} | "
                     f"**{result.label}**: {result.verdict.reason} |")
    return "\n".join(lines) + "\n"
