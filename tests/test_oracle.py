"""Oracle stages: a plain run per dataset whose final weights later runs measure against."""

import copy

import pytest
import torch

from bat import paths
from bat.core.checkpoint import trained_vector
from bat.config import build
from bat.errors import ConfigError
from bat.stages.oracle import load_run, track_options, train_oracle


@pytest.fixture
def smoke_paths(smoke_root, monkeypatch):
    monkeypatch.setattr(paths, "PREPARED", smoke_root / "data" / "prepared")


def test_oracle_trains_saves_and_is_not_retrained(smoke_paths, smoke_image_backbone, smoke_params, tmp_path):
    run = load_run("noto_locon", smoke_params)
    result = train_oracle("noto_locon", run, smoke_image_backbone.parent, tmp_path / "noto_locon")
    assert [row["step"] for row in result.log] == list(range(1, run.steps + 1))
    oracle = trained_vector(tmp_path / "noto_locon")
    # A finished run is resumed at its end: nothing more is trained, the vector is the same.
    again = train_oracle("noto_locon", run, smoke_image_backbone.parent, tmp_path / "noto_locon")
    assert len(again.log) == run.steps
    assert torch.equal(trained_vector(tmp_path / "noto_locon"), oracle)


def test_text_oracle_trains_a_lora_on_the_lm(smoke_paths, smoke_text_backbone, smoke_params, tmp_path):
    run = load_run("word_definition_lora", smoke_params)
    result = train_oracle("word_definition_lora", run, smoke_text_backbone.parent, tmp_path / "lora",
                          **track_options("text", smoke_params))
    assert len(result.log) == run.steps
    assert trained_vector(tmp_path / "lora").numel() > 0


def test_the_text_track_takes_its_example_length_from_backbone_text(smoke_paths, smoke_text_backbone,
                                                                    smoke_params):
    """``backbone_text.max_length`` reaches the track the oracles and grids load (no constant): every
    example set is that many tokens wide, and a bad value is refused under that key."""
    from bat.text.track import load

    params = copy.deepcopy(smoke_params)
    params["backbone_text"]["max_length"] = 96  # not the default 64
    track = load(smoke_text_backbone.parent, **track_options("text", params))
    assert track.examples("word_definition_train")["input_ids"].shape[1] == 96
    assert track.backbone_examples([0, 1])["input_ids"].shape[1] == 96
    with pytest.raises(ConfigError, match=r"backbone_text.max_length: 0 must be a positive integer"):
        load(smoke_text_backbone.parent, max_length=0)


def test_the_text_tracks_retention_records_are_those_no_run_trains_on(
        smoke_paths, smoke_text_backbone, smoke_params, tmp_path):
    """D^B is the records the backbone's fine-tune saw; the retention loss is scored on the first
    held-out ones. A backbone from elsewhere (fine-tuned on every record) holds the first records
    out of D^B instead."""
    import shutil

    from bat.io import read_jsonl
    from bat.text.backbone import PRETRAINING_IDS, pretraining_ids
    from bat.text.track import RETENTION_SIZE, load

    options = track_options("text", smoke_params)
    track = load(smoke_text_backbone.parent, **options)
    seen = set(pretraining_ids(smoke_text_backbone))
    records = read_jsonl(paths.PREPARED / "text" / "backbone.jsonl")
    assert [r["id"] for r in track.records] == [r["id"] for r in records if r["id"] in seen]
    held_out = [r for r in records if r["id"] not in seen]
    assert len(held_out) > RETENTION_SIZE  # so the cut below is tested
    assert track.retention_records == held_out[:RETENTION_SIZE]
    data = track.evaluation_data("word_definition", 2)
    row, _ = track.evaluate(track.start_model, data, seed=0, with_benchmarks=False)
    assert row["retention_loss"] > 0 and row["retention_loss"] != row["heldout_loss"]

    # a backbone from elsewhere names no records: the first are held out of D^B for retention
    shutil.copytree(smoke_text_backbone, tmp_path / "backbone_text",
                    ignore=shutil.ignore_patterns(PRETRAINING_IDS))
    elsewhere = load(tmp_path, **options)
    assert elsewhere.retention_records == records[:RETENTION_SIZE]
    assert elsewhere.records == records[RETENTION_SIZE:]
    assert elsewhere.backbone_size() == len(records) - RETENTION_SIZE  # what the runs draw from
    row, _ = elsewhere.evaluate(elsewhere.start_model, data, seed=0, with_benchmarks=False)
    assert row["retention_loss"] > 0

    # ... and refuses a D^B that the hold-out would empty
    few = tmp_path / "few"
    (few / "text").mkdir(parents=True)
    (few / "text" / "backbone.jsonl").write_text(
        "".join(line + "\n" for line in (paths.PREPARED / "text" / "backbone.jsonl")
                .read_text().splitlines()[:RETENTION_SIZE]))
    with pytest.raises(ConfigError, match=rf"text_backbone_size: {RETENTION_SIZE} records leave no D\^B"):
        load(tmp_path, prepared=few / "text", **options)


def test_unknown_run_names_the_runs(smoke_params):
    with pytest.raises(ConfigError, match=r"oracles has no run 'x'; runs: \['emojione_dreambooth'"):
        load_run("x", smoke_params)


@pytest.mark.parametrize("field, value, message", [
    ("adapter", "loda", r"oracles.image.adapter: 'loda' is not allowed"),
    ("dataset", "noto_train",
     r"oracles.image.noto_dreambooth.dataset: 'noto_train' is not allowed; choose one of \['noto_oracle'"),
    ("dataset", "word_definition_oracle",
     r"oracles.image.noto_dreambooth.dataset: 'word_definition_oracle' is not allowed"),
])
def test_bad_runs_are_refused(smoke_params, field, value, message):
    params = copy.deepcopy(smoke_params)
    params["oracles"]["image"]["noto_dreambooth"][field] = value
    with pytest.raises(ConfigError, match=message):
        load_run("noto_dreambooth", params)


def test_an_image_folder_set_trains_with_its_own_identifier_and_class(raw, smoke_params, smoke_image_backbone,
                                                                      tmp_path, monkeypatch):
    """D^A from a DreamBooth-style image folder: prepared by ``prepare``, named by oracles (and
    grids) through the track's ``datasets(params)``, prompted as DreamBooth prompts a subject."""
    from PIL import Image

    from bat.image.backbone import encode_captions
    from bat.image.track import ImageTrack, datasets
    from bat.stages.prepare import PrepareConfig, prepare

    folder = tmp_path / "teapot"
    folder.mkdir()
    for i in range(8):
        Image.new("RGB", (20, 20), (30 * i, 90, 200 - 20 * i)).save(folder / f"{i:02d}.png")
    params = copy.deepcopy(smoke_params)
    params["prepare"]["image_adaptation"] = {"source": "imagefolder", "imagefolder": [
        {"name": "teapot", "path": "imagefolder", "data_dir": str(folder), "class_name": "teapot",
         "identifier": "zwx"}]}
    params["oracles"]["image"]["teapot_dreambooth"] = {**params["oracles"]["image"]["noto_dreambooth"],
                                                       "dataset": "teapot_oracle"}
    assert datasets(params) == ("teapot",)
    with pytest.raises(ConfigError, match=r"noto_dreambooth.dataset: 'noto_oracle' is not allowed; "
                                          r"choose one of \['teapot_oracle'\]"):
        load_run("noto_dreambooth", params)  # the emoji styles are not prepared beside the folders

    prepared = tmp_path / "prepared"
    prepare(build(PrepareConfig, params["prepare"], "prepare"), raw, prepared)
    monkeypatch.setattr(paths, "PREPARED", prepared)
    run = load_run("teapot_dreambooth", params)
    result = train_oracle("teapot_dreambooth", run, smoke_image_backbone.parent, tmp_path / "oracle")
    assert len(result.log) == run.steps and trained_vector(tmp_path / "oracle").numel() > 0

    track = ImageTrack(smoke_image_backbone.parent)
    assert track.datasets == ("teapot",)
    data = track.evaluation_data("teapot", 2)
    assert data["prompts"] == ["a photo of zwx teapot"] * 2 and data["captions"] == ["teapot"] * 2
    assert set(data["class_prompts"]) == {"a photo of teapot"}
    torch.testing.assert_close(data["adaptation"]["encoder_hidden_states"][:1],
                               encode_captions(track.pipe, ["a photo of zwx teapot"]))
    with pytest.raises(ConfigError, match=r"dataset: 'noto' is not allowed; choose one of \['teapot'\]"):
        track.evaluation_data("noto", 2)
