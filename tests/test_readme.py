"""README's generated blocks equal what the committed files give (bat.analysis.readme)."""

import pytest

from bat.analysis import readme
from bat.errors import ConfigError
from tests.conftest import PROJECT


def test_readme_blocks_are_generated_from_committed_files():
    text = (PROJECT / "README.md").read_text(encoding="utf-8")
    expected = text
    for name, block in readme.blocks(PROJECT).items():
        expected = readme.replace_block(expected, name, block)
    assert text == expected, "README's generated tables are stale: run python -m bat.analysis.readme"


def test_a_block_replaces_only_what_lies_between_its_markers():
    start, end = readme.markers("x")
    assert readme.replace_block(f"a\n{start}\nold\n{end}\nb", "x", "new\n") == f"a\n{start}\nnew\n{end}\nb"
    with pytest.raises(ConfigError, match="README"):
        readme.replace_block(f"text {end} {start}", "x", "new\n")
    with pytest.raises(ConfigError, match="README"):
        readme.replace_block("no markers", "x", "new\n")


def test_budget_lists_the_stages_that_ran(tmp_path):
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / readme.REPRO).write_text('{"stages": [{"stage": "a", "seconds": 90, "peak_rss_gib": 1.5, '
                                         '"ran": true}, {"stage": "b", "seconds": 1, "peak_rss_gib": 0.1, '
                                         '"ran": false}], "total_minutes": 1.5, "peak_rss_gib": 1.5}')
    block = readme.budget_block(tmp_path)
    assert "| `a` | 1.5 | 1.5 |" in block and "`b`" not in block and "**1.5**" in block


def test_sweep_ends_with_the_lookup_reference_when_the_stage_measured_it(tmp_path):
    import json

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    held = {"count": 64, "thumbnail_preference": 0.6, "thumbnail_top1": 3, "encoder_preference": 0.7,
            "encoder_top1": 4, "kid": 0.5, "kid_floor": 0.0, "vae_psnr": 23.0}
    (tmp_path / readme.SWEEP).write_text(json.dumps([{"name": "a", "guidance_scale": 7.5, "train_minutes": 9.0,
                                                      "heldout": held}]))
    assert "nearest caption" not in readme.sweep_block(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "backbone_image.json").write_text(json.dumps(
        {"heldout_nearest_caption_thumbnail_preference": 0.78, "heldout_nearest_caption_encoder_preference": 0.82}))
    last = readme.sweep_block(tmp_path).splitlines()[-1]
    assert "nearest caption" in last and "0.78 / –" in last and "0.82 / –" in last


def test_benchmarks_give_the_check_floor_only_when_measured(tmp_path):
    import json

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    check = {"grid_check_s": 0.7, "goal_s": 1.0, "meets_goal": True}
    (tmp_path / readme.CURVATURE).write_text(json.dumps({"dreambooth_check": check}))
    assert "at least" not in readme.benchmarks_block(tmp_path)
    check.update(examples=12, train_step_s=0.7 / 7.4, gradient_sums_s=0.2,
                 sampled_fisher_rows_s=5.75 * 0.7 / 7.4 - 0.2)
    (tmp_path / readme.CURVATURE).write_text(json.dumps({"dreambooth_check": check}))
    block = readme.benchmarks_block(tmp_path)
    assert "| `dreambooth_check` | grid_check_s = 0.7 | goal_s = 1 | yes |" in block
    assert "(12 examples) costs 7.4 training steps" in block and "cost 5.75" in block
    assert "at least 2.44×" in block
    assert "plain forward and backward" not in block
    check.update(weights=5187204, batch_gradient_s=0.12, write_rows_s=0.1)
    (tmp_path / readme.CURVATURE).write_text(json.dumps({"dreambooth_check": check, "per_sample_grads": {
        "lora_unet_8x8": {"hooks_s": 0.15, "loop_s": 0.7, "batched_s": 0.14, "speedup_ceiling": 5.0,
                          "speedup_hooks": 0.7 / 0.15, "goal_speedup": 5.0, "meets_goal": False}}}))
    block = readme.benchmarks_block(tmp_path)
    assert (f"Of the curvature rows' pass ({readme._number(check['sampled_fisher_rows_s'])} s), "
            "one plain forward and backward of the same 12 examples costs 0.12 s") in block
    assert "12 rows of 5.19M float32 weights into fresh memory, which alone takes 0.1 s" in block
    assert "`lora_unet_8x8` 5× (the hooks cost 1.07× that pass)" in block
    (tmp_path / readme.GRID_SELECTION).write_text(json.dumps({"dreambooth": {"bat": {
        "ratio": 2.7, "goal_ratio": 1.3, "meets_goal": False, "selection_s": 85.0,
        "first_selection_s": 42.0, "ratio_without_first_selection": 1.9}}}))
    block = readme.benchmarks_block(tmp_path)
    assert "| `grid_selection.dreambooth.bat` | ratio = 2.7 | goal_ratio = 1.3 | **no** |" in block
    assert "the ratio would be `bat` 1.9 (42 of its 85 s of selection)" in block
