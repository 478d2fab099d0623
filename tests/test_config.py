"""Profiles and parameter validation: one clear error, nothing written, before any work."""

import decimal
import re
import subprocess
import sys

import pytest
import yaml

from bat import config, paths
from bat.stages import profile
from bat.errors import ConfigError
from bat.stages.prepare import PrepareConfig
from tests.conftest import PROJECT


def test_profiles_override_only_known_keys():
    for name in config.PROFILES:
        params = config.profile_params(name)
        assert params["profile"] == name
        assert set(params) == set(config.read_yaml(paths.PARAMS))


def test_unknown_profile_names_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"unknown profile 'huge'.*\['tiny', 'smoke', 'paper'\]"):
        config.profile_params("huge")


def test_override_of_a_missing_key_is_an_error():
    with pytest.raises(ConfigError, match=r"unknown parameter 'prepare.image_sise'.*image_size"):
        config.merge({"prepare": {"image_size": 32}}, {"prepare": {"image_sise": 16}})


def test_a_profile_may_add_runs_but_no_other_key():
    base = {"oracles": {"text": {"a_lora": {"steps": 1}}}, "prepare": {"size": 1}}
    merged = config.merge(base, {"oracles": {"text": {"b_lora": {"steps": 2}}}})
    assert merged["oracles"]["text"] == {"a_lora": {"steps": 1}, "b_lora": {"steps": 2}}
    assert "b_lora" not in base["oracles"]["text"]  # the base is not changed
    with pytest.raises(ConfigError, match=r"unknown parameter 'oracles.text.a_lora.stepz'"):
        config.merge(base, {"oracles": {"text": {"a_lora": {"stepz": 2}}}})
    with pytest.raises(ConfigError, match=r"unknown parameter 'prepare.sise'"):
        config.merge(base, {"prepare": {"sise": 2}})


def test_the_paper_profile_trains_every_text_task():
    from bat.stages.grid import load_grid
    from bat.text.track import DATASETS

    params = config.profile_params("paper")
    assert set(load_grid("lora_dora", params).datasets) == set(DATASETS)
    assert {f"{d}_{a}" for d in DATASETS for a in ("lora", "dora")} <= set(params["oracles"]["text"])


def test_an_added_run_is_validated_before_params_is_written(params_copy, tmp_path):
    before = params_copy.read_text()
    site = tmp_path / "site.yaml"
    site.write_text("oracles: {text: {extra_lora: {adapter: lora, steps: 4}}}\n")
    with pytest.raises(ConfigError, match=rf"override {re.escape(str(site))}: oracles.text."
                                          r"extra_lora.dataset is missing"):
        profile.use("paper", site)
    site.write_text("grids: {text: {lora_dora: {datasets: [word_definition, example_cloze]}}}\n"
                    "oracles: {text: {example_cloze_lora: null}}\n")
    with pytest.raises(ConfigError, match=r"unknown parameter 'oracles.text.example_cloze_lora'"):
        profile.use("smoke", site)  # null is no run: refused as an unknown key
    site.write_text("grids: {text: {lora_dora: {datasets: [word_definition, example_cloze]}}}\n")
    with pytest.raises(ConfigError, match=r"grids.text.lora_dora: no oracle for \(example_cloze, "
                                          r"lora\); add 'example_cloze_lora' to oracles.text"):
        profile.use("smoke", site)
    assert params_copy.read_text() == before  # nothing written on error


def test_build_names_unknown_and_missing_fields(smoke_params):
    values = dict(smoke_params["prepare"])
    with pytest.raises(ConfigError, match=r"unknown parameter prepare.colour"):
        config.build(PrepareConfig, {**values, "colour": 1}, "prepare")
    del values["seed"]
    with pytest.raises(ConfigError, match=r"prepare.seed is missing"):
        config.build(PrepareConfig, values, "prepare")


@pytest.mark.parametrize("field, value, message", [
    ("styles", ["noto", "comic"], r"prepare.styles: 'comic' is not allowed; choose one of \['noto', 'emojione'\]"),
    ("image_size", 30, r"prepare.image_size: 30 is not allowed"),
    ("held_out_percent", 0, r"prepare.held_out_percent: 0 must lie in \[1, 99\]"),
    ("eval_set_size", -3, r"prepare.eval_set_size: -3 must be a positive integer"),
    ("styles", "noto", r"prepare.styles: 'noto' must be a list, e.g. \[noto\]$"),
])
def test_prepare_config_rejects_bad_values(smoke_params, field, value, message):
    with pytest.raises(ConfigError, match=message):
        config.build(PrepareConfig, {**smoke_params["prepare"], field: value}, "prepare")


def test_broken_yaml_names_the_line(tmp_path):
    broken = tmp_path / "params.yaml"
    broken.write_text("prepare:\n  seed: [0\n")
    with pytest.raises(ConfigError, match=r"params.yaml is not valid YAML at line"):
        config.read_yaml(broken)


@pytest.fixture
def params_copy(tmp_path, monkeypatch):
    """A copy of the tiny params.yaml that the profile module reads and rewrites."""
    params = tmp_path / "params.yaml"
    params.write_text((PROJECT / "params.yaml").read_text())
    monkeypatch.setattr(paths, "PARAMS", params)
    monkeypatch.setattr(profile, "TINY_BASE", tmp_path / ".tiny-base.yaml")
    return params


def test_profile_switch_round_trip(params_copy):
    params = params_copy
    original = params.read_text()
    profile.use("smoke")
    assert yaml.safe_load(params.read_text())["prepare"]["image_size"] == 16
    profile.use("paper")  # from one non-tiny profile to another: still built on the tiny base
    assert yaml.safe_load(params.read_text())["prepare"]["backbone_images"] == 2000
    with pytest.raises(ConfigError):
        profile.use("nonsense")
    assert yaml.safe_load(params.read_text())["profile"] == "paper"  # nothing written on error
    profile.use("tiny")
    assert params.read_text() == original


def test_an_override_file_lands_on_top_of_its_profile(params_copy, tmp_path):
    params = params_copy
    original = params.read_text()
    site = tmp_path / "site.yaml"
    site.write_text("runtime: {device: cpu}\nprepare: {task_train_size: 16}\n")
    profile.use("paper", site)
    switched = yaml.safe_load(params.read_text())
    assert switched["profile"] == "paper"
    assert switched["runtime"]["device"] == "cpu"  # the override's
    assert switched["runtime"]["dtype"] == "bfloat16"  # the paper profile's, kept
    assert switched["prepare"]["task_train_size"] == 16
    assert switched["prepare"]["image_size"] == 512
    assert f"--override {site}" in params.read_text().splitlines()[0]
    before = params.read_text()
    site.write_text("runtime: {devise: cpu}\n")
    with pytest.raises(ConfigError, match=rf"override {re.escape(str(site))}: unknown parameter "
                                          r"'runtime.devise'.*device"):
        profile.use("paper", site)
    with pytest.raises(ConfigError, match=r"override: no file .*absent.yaml"):
        profile.use("paper", tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match=r"override: the tiny profile takes none"):
        profile.use("tiny", site)
    assert params.read_text() == before  # nothing written on error
    profile.use("tiny")
    assert params.read_text() == original


def run_module(module: str, root, *args):
    env = {"BAT_ROOT": str(root), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=PROJECT, env=env,
                          capture_output=True, text=True)


def test_cli_missing_raw_data_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    result = run_module("bat.stages.prepare", tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: raw data missing at {tmp_path / 'data' / 'raw'}; run `make data` (python -m bat.stages.fetch) first"]
    assert not (tmp_path / "data" / "prepared").exists()


def test_cli_broken_params_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("prepare: [\n")
    result = run_module("bat.stages.prepare", tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "params.yaml is not valid YAML" in result.stderr


def test_cli_wrong_profile_is_one_line(tmp_path):
    result = run_module("bat.stages.profile", tmp_path, "use", "huge")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: unknown profile 'huge'; allowed profiles: ['tiny', 'smoke', 'paper']"


@pytest.mark.parametrize("text, value", [("1e-06", 1e-6), ("5e-5", 5e-5), ("1E-4", 1e-4),
                                         (".5", 0.5), ("-.5", -0.5), ("2.5e3", 2500.0)])
def test_yaml_1_2_floats_are_numbers(tmp_path, text, value):
    path = tmp_path / "params.yaml"
    path.write_text(f"train:\n  learning_rate: {text}\n  steps: 10\n  name: '1e-06'\n")
    assert config.read_yaml(path) == {"train": {"learning_rate": value, "steps": 10,
                                                "name": "1e-06"}}


def _exponent_form(value: float) -> str:
    """``value`` spelt as YAML 1.2 allows and YAML 1.1 does not: digits, ``e``, exponent (5e-1)."""
    digits = decimal.Decimal(repr(value)).normalize().as_tuple()
    mantissa = int("".join(map(str, digits.digits)))
    return f"{'-' if digits.sign else ''}{mantissa}e{digits.exponent}"


def _with_floats_as(params, spell):
    if isinstance(params, dict):
        return {key: _with_floats_as(value, spell) for key, value in params.items()}
    if isinstance(params, list):
        return [_with_floats_as(value, spell) for value in params]
    return spell(params) if isinstance(params, float) else params


@pytest.mark.parametrize("name", config.PROFILES)
def test_every_float_parameter_reads_in_yaml_1_2_spelling(tmp_path, name):
    params = config.profile_params(name)
    # Floats go out as marked strings, then the marks and quotes come off: plain 5e-1 scalars.
    marked = yaml.safe_dump(_with_floats_as(params, lambda v: f"FLOAT{_exponent_form(v)}"),
                            sort_keys=False)
    text = re.sub(r"'?FLOAT([^'\s]+)'?", r"\1", marked)
    assert "FLOAT" not in text and re.search(r": \d+e-\d+\n", text)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert config.read_yaml(path) == params


@pytest.mark.parametrize("section", ["backbone_image", "encoders", "backbone_text"])
@pytest.mark.parametrize("key, value", [("device", "cpu"), ("torch_dtype", "float32")])
def test_the_model_stages_take_device_and_precision_from_runtime_only(smoke_params, tmp_path, section, key, value):
    """A stage section's own ``device`` or ``torch_dtype`` (as before ``runtime`` existed) is refused
    by name before anything is read or written."""
    import importlib

    from bat.core.runtime import runtime_config

    stage = importlib.import_module(f"bat.stages.{section}")
    encoders = [tmp_path / "encoders"] if section == "backbone_image" else []
    with pytest.raises(ConfigError, match=rf"unknown parameter {section}.{key}; allowed: "):
        stage.run({**smoke_params[section], key: value}, runtime_config(smoke_params), tmp_path / "prepared",
                  tmp_path / "model", tmp_path / "run", *encoders)
    assert sorted(tmp_path.iterdir()) == []
