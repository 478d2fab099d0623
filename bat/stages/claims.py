"""The claims stage: ``python -m bat.stages.claims`` (DVC stage ``claims``).

Classifies every claim of :data:`bat.analysis.claims.CLAIMS` from the committed run tables and
writes the counts per verdict, flat, to ``metrics/claims.json`` (``held``, ``inconclusive``,
``contradicted``, ``not_tested``, over the claims; ``controls``, ``controls_held``), so that ``dvc metrics diff``
shows when a change of the runs moves a verdict. README's table is the per-claim view; it is
rewritten by ``python -m bat.analysis.readme`` (README is not a stage output: people edit it), and
this stage says on stderr when README's table is stale.
"""

from __future__ import annotations

import sys

from bat import paths
from bat.analysis.claims import classify, render, summary_metrics
from bat.analysis.readme import replace_block
from bat.config import run_cli
from bat.io import write_json


def main() -> None:
    results = classify(root=paths.ROOT)
    write_json(paths.metrics("claims"), summary_metrics(results))
    readme = paths.ROOT / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else None  # a test's project root has none
    if text is not None and replace_block(text, "claims", render(results)) != text:
        print("README.md's claims table is stale: run python -m bat.analysis.readme", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_cli(main))
