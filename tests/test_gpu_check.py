"""benchmarks/gpu_check.py at its CPU scale: every case runs through the project's training loop in
bf16 and the JSON it writes is sane. (The paper scale needs a GPU; nothing here checks its numbers.)"""

from __future__ import annotations

import json

import pytest

from benchmarks import gpu_check


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu_check")
    out = folder / "gpu_check.json"
    returned = gpu_check.main(["--scale", "tiny", "--device", "cpu", "--steps", "2",
                               "--out", str(out), "--workdir", str(folder)])
    written = json.loads(out.read_text())
    assert written["cases"].keys() == returned["cases"].keys()
    assert list(folder.iterdir()) == [out]  # the run folders (checkpoints) were removed
    return written


def test_every_case_ran_without_error(report):
    assert report["cases"].keys() == gpu_check.CASES.keys()  # the JSON's keys are sorted
    assert {name: case["error"] for name, case in report["cases"].items()} == \
        dict.fromkeys(gpu_check.CASES)


def test_the_run_is_described(report):
    assert report["scale"] == "tiny" and report["device"] == "cpu"
    assert report["device_name"].startswith("cpu")
    assert {"torch", "diffusers", "transformers"} <= report["versions"].keys()
    assert report["configs"]["unet"]["down_block_types"] == list(gpu_check.SD14_UNET["down_block_types"])
    assert report["total_seconds"] > 0


@pytest.mark.parametrize("name", list(gpu_check.CASES))
def test_each_case_has_positive_times_memory_and_sizes(report, name):
    case = report["cases"][name]
    assert case["steps"] == 2 and len(case["step_seconds"]) == 2 and case["timed_steps"] == [2]
    assert case["seconds_per_step"] > 0 and all(t > 0 for t in case["step_seconds"])
    assert case["examples_per_step"] == case["batch_size"]
    assert case["examples_per_s"] == pytest.approx(case["batch_size"] / case["seconds_per_step"])
    assert case["peak_memory_gib"] > 0 and case["peak_memory_gib_first_step"] > 0
    assert 0 < case["trainable_parameters"] <= case["total_parameters"]
    assert all(loss == loss and loss > 0 for loss in case["losses"])  # finite, not NaN


@pytest.mark.parametrize("name", list(gpu_check.CASES))
def test_bf16_autocast_was_used(report, name):
    """Every Linear and Conv2d computed in bfloat16; the trained weights stayed float32."""
    case = report["cases"][name]
    assert case["mixed_precision"] == "bf16"
    assert case["layer_output_dtypes"] == ["torch.bfloat16"]
    assert case["trainable_dtypes"] == ["torch.float32"]


def test_dreambooth_trains_everything_and_the_adapters_a_part(report):
    cases = report["cases"]
    assert cases["dreambooth_unet"]["trainable_parameters"] == cases["dreambooth_unet"]["total_parameters"]
    for name in ("locon_unet", "lora_lm", "dora_lm"):
        assert cases[name]["trainable_parameters"] < cases[name]["total_parameters"]
    assert cases["dora_lm"]["trainable_parameters"] > cases["lora_lm"]["trainable_parameters"]


def test_the_prop2_case_selected_once(report):
    case = report["cases"]["prop2_lora_lm"]
    assert case["regime"] == "bat" and case["reselections"] == 1
    assert case["selection_seconds"] > 0
    assert case["selector_records"][0]["reason"] == "initial"
    assert case["selection_config"]["chunk_size"] == gpu_check.SCALES["tiny"]["chunk_size"]


def test_a_spent_budget_skips_the_remaining_cases(tmp_path):
    report = gpu_check.main(["--scale", "tiny", "--device", "cpu", "--steps", "2", "--budget-s", "0",
                             "--cases", "lora_lm", "--out", str(tmp_path / "out.json")])
    assert "time budget" in report["cases"]["lora_lm"]["skipped"]


def test_a_failing_case_records_its_error_and_the_others_still_run(tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise __import__("torch").cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(gpu_check, "build_llama", out_of_memory)
    out = tmp_path / "out.json"
    gpu_check.main(["--scale", "tiny", "--device", "cpu", "--steps", "2", "--cases", "lora_lm",
                    "dora_lm", "--out", str(out)])
    cases = json.loads(out.read_text())["cases"]
    assert [cases[name]["error"] for name in ("lora_lm", "dora_lm")] == \
        ["OutOfMemoryError: CUDA out of memory (simulated)"] * 2
