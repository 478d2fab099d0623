"""The paper's data through ``datasets``: each loader on small local files of the real schema, and the
prepare stage writing them into the prepared formats the later stages read."""

import copy
import io
import json
import re
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bat.config import build
from bat.errors import ConfigError
from bat.image import hub as image_hub
from bat.image.data import load_image_set
from bat.io import read_json, read_jsonl
from bat.stages.prepare import PrepareConfig, prepare
from bat.text import hub as text_hub
from bat.text.backbone import load_eval_sets
from bat.text.benchmarks import load_hub_items, load_items
from bat.text.data import ADAPTATION_TASKS, EVAL_SETS
from tests.conftest import PROJECT


@pytest.fixture(autouse=True)
def datasets_config(tmp_path, monkeypatch):
    """``datasets`` writes its Arrow cache under the test's folder, not the user's; and does not
    wait the 5 s it waits after a parquet stream stopped early (for Arrow's reader threads to end
    before the interpreter does, which a test process is far from)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


def jpeg(colour, size=(48, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def laion_parquet(path, count: int) -> str:
    """LAION's columns (URL, TEXT) with the image bytes img2dataset adds (jpg)."""
    rows = [{"URL": f"https://example.org/{i}.jpg", "TEXT": f"a photo of thing {i}",
             "jpg": jpeg((10 * i % 256, 0, 0))} for i in range(count)]
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


# ----------------------------------------------------------------------------- image D^B


def test_laion_parquet_sample_is_seeded_squared_and_captioned(tmp_path):
    files = laion_parquet(tmp_path / "laion.parquet", 20)
    images, ids, captions = image_hub.sample_captioned("parquet", 6, 0, 8, 16, data_files=files)
    assert images.shape == (6, 16, 16, 3) and images.dtype == np.uint8
    assert len(set(ids)) == 6 and all(key.startswith("https://example.org/") for key in ids)
    # Each image is the row its caption came from (row i is red 10 * i).
    for image, key, caption in zip(images, ids, captions, strict=True):
        number = int(re.search(r"(\d+)\.jpg", key).group(1))
        assert caption == f"a photo of thing {number}"
        assert abs(int(image[8, 8, 0]) - 10 * number) <= 3
    again = image_hub.sample_captioned("parquet", 6, 0, 8, 16, data_files=files)
    assert again[1] == ids and np.array_equal(again[0], images)
    assert image_hub.sample_captioned("parquet", 6, 1, 8, 16, data_files=files)[1] != ids


def test_url_column_reads_local_paths_and_skips_dead_ones(tmp_path):
    rows = []
    for i in range(4):
        Image.new("RGB", (40, 20), (0, 60 * i, 0)).save(tmp_path / f"{i}.png")
        rows.append({"URL": str(tmp_path / f"{i}.png"), "TEXT": f"green {i}"})
    rows.append({"URL": str(tmp_path / "gone.png"), "TEXT": "a dead link"})
    pd.DataFrame(rows).to_parquet(tmp_path / "urls.parquet")
    images, ids, captions = image_hub.sample_captioned(
        "parquet", 4, 0, 10, 8, data_files=str(tmp_path / "urls.parquet"))
    assert sorted(captions) == [f"green {i}" for i in range(4)] and images.shape == (4, 8, 8, 3)
    with pytest.raises(ConfigError, match=r"4 readable images with captions \(1 unreadable\), fewer than the 5"):
        image_hub.sample_captioned("parquet", 5, 0, 10, 8, data_files=str(tmp_path / "urls.parquet"))


def test_webdataset_shard_with_jpg_and_txt(tmp_path):
    with tarfile.open(tmp_path / "00000.tar", "w") as shard:
        for i in range(5):
            for extension, data in (("jpg", jpeg((0, 0, 50 * i))), ("txt", f"blue {i}".encode())):
                member = tarfile.TarInfo(f"{i:09d}.{extension}")
                member.size = len(data)
                shard.addfile(member, io.BytesIO(data))
    images, ids, captions = image_hub.sample_captioned(
        "webdataset", 5, 0, 4, 8, data_files=str(tmp_path / "*.tar"))
    assert sorted(ids) == [f"{i:09d}" for i in range(5)]  # webdataset's sample keys
    assert sorted(captions) == [f"blue {i}" for i in range(5)]


def test_centre_crop_keeps_the_middle():
    wide = Image.new("RGB", (90, 30), (255, 0, 0))
    wide.paste((0, 0, 255), (30, 0, 60, 30))  # the middle third is blue
    square = image_hub.square(wide, 12)
    assert square.shape == (12, 12, 3) and (square[..., 2] > 200).all() and (square[..., 0] < 60).all()


def test_missing_image_or_caption_column_names_the_candidates(tmp_path):
    pd.DataFrame([{"URL": "a.jpg", "alt": "no caption column"}]).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(ConfigError, match=r"no caption column; expected one of \['TEXT', 'caption'"):
        image_hub.sample_captioned("parquet", 1, 0, 2, 8, data_files=str(tmp_path / "x.parquet"))
    pd.DataFrame([{"TEXT": "no image", "width": 3}]).to_parquet(tmp_path / "y.parquet")
    with pytest.raises(ConfigError, match=r"no image column; expected one of \['jpg', 'image'"):
        image_hub.sample_captioned("parquet", 1, 0, 2, 8, data_files=str(tmp_path / "y.parquet"))


# ----------------------------------------------------------------------------- image D^A


def image_folder(folder, count: int):
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (30, 40), (40 * i, 100, 0)).save(folder / f"{i:02d}.jpg")
    return folder


def test_imagefolder_reads_every_image_sorted_by_name(tmp_path):
    folder = image_folder(tmp_path / "teapot", 5)
    images, ids = image_hub.load_folder("imagefolder", 16, data_dir=str(folder))
    assert ids == [f"{i:02d}.jpg" for i in range(5)] and images.shape == (5, 16, 16, 3)
    assert abs(int(images[3, 8, 8, 0]) - 120) <= 3


# ----------------------------------------------------------------------------- text D^B and D^A

HUB_ROWS = {  # one row of each set's hub schema, and the record it becomes
    "alpaca": ({"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
               {"source": "alpaca", "key": "Add the numbers.\n\n2 and 3",
                "instruction": "Add the numbers.\n\n2 and 3", "response": "5"}),
    "medquad": ({"qtype": "symptoms", "Question": "What are the symptoms of flu ?",
                 "Answer": "Fever and cough."},
                {"key": "What are the symptoms of flu ?", "instruction": "What are the symptoms of flu ?",
                 "response": "Fever and cough."}),
    "winogrande": ({"sentence": "The cup broke because _ was thin.", "option1": "the cup",
                    "option2": "the floor", "answer": "1"},
                   {"key": "The cup broke because _ was thin.",
                    "instruction": "Fill in the blank: The cup broke because _ was thin.\n"
                                   "Options:\n- the cup\n- the floor", "response": "the cup"}),
    "xsum": ({"id": "3456", "document": "A long article.", "summary": "Short."},
             {"key": "3456", "instruction": "Summarise in one line:\nA long article.", "response": "Short."}),
}


def hub_rows(name: str, count: int) -> list[dict]:
    """``count`` distinct rows of the schema of ``name``."""
    row = HUB_ROWS[name][0]
    key = {"alpaca": "instruction", "medquad": "Question", "winogrande": "sentence", "xsum": "id"}[name]
    return [{**row, key: f"{row[key]} {i}" if name != "winogrande" else row[key].replace("_", f"_ ({i})")}
            for i in range(count)]


@pytest.mark.parametrize("name", sorted(HUB_ROWS))
def test_record_sets_read_the_hub_schema(tmp_path, name):
    row, record = HUB_ROWS[name]
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    assert text_hub.load_records(name, 1, 0, "json", "train",
                                 data_files=str(tmp_path / "rows.jsonl")) == [record]


def test_a_local_copy_of_a_hub_dataset_reads_by_its_config_name(tmp_path):
    """What ``hf download allenai/winogrande --repo-type dataset --local-dir <copy>`` gives: data
    files per configuration, declared in the dataset card; ``path`` the folder, ``name`` as on the hub."""
    copy_dir = tmp_path / "winogrande"
    (copy_dir / "winogrande_xl").mkdir(parents=True)
    pd.DataFrame(hub_rows("winogrande", 3)).to_parquet(copy_dir / "winogrande_xl" / "train-00000-of-00001.parquet")
    pd.DataFrame(hub_rows("winogrande", 1)).to_parquet(copy_dir / "winogrande_xl" / "validation-00000-of-00001.parquet")
    (copy_dir / "README.md").write_text(
        "---\nconfigs:\n- config_name: winogrande_xl\n  data_files:\n  - split: train\n"
        "    path: winogrande_xl/train-*\n  - split: validation\n    path: winogrande_xl/validation-*\n---\n")
    records = text_hub.load_records("winogrande", 3, 0, str(copy_dir), "train", name="winogrande_xl")
    assert sorted(r["key"] for r in records) == sorted(r["sentence"] for r in hub_rows("winogrande", 3))
    items = load_hub_items(str(copy_dir), "validation", "winogrande", name="winogrande_xl")
    assert items[0].continuation == "(0) was thin."  # the rest of the sentence after the blank


def test_records_are_seeded_and_one_per_key(tmp_path):
    rows = hub_rows("medquad", 10)
    rows.append(dict(rows[0], Answer="Another answer to the same question."))
    pd.DataFrame(rows).to_parquet(tmp_path / "medquad.parquet")
    files = str(tmp_path / "medquad.parquet")
    records = text_hub.load_records("medquad", 10, 0, "parquet", "train", data_files=files)
    assert len({r["key"] for r in records}) == 10
    assert records == text_hub.load_records("medquad", 10, 0, "parquet", "train", data_files=files)
    assert records != text_hub.load_records("medquad", 10, 1, "parquet", "train", data_files=files)
    with pytest.raises(ConfigError, match="has 10 distinct rows, fewer than the 11 asked for"):
        text_hub.load_records("medquad", 11, 0, "parquet", "train", data_files=files)


def test_missing_text_columns_name_the_expected_ones(tmp_path):
    (tmp_path / "rows.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(ConfigError, match=r"medquad needs the columns \['Question', 'Answer'\]; it has"):
        text_hub.load_records("medquad", 1, 0, "json", "train", data_files=str(tmp_path / "rows.jsonl"))
    with pytest.raises(ConfigError, match=r"dataset: 'squad' is not allowed; choose one of \['alpaca'"):
        text_hub.load_records("squad", 1, 0, "json", "train", data_files=str(tmp_path / "rows.jsonl"))


def test_paper_sets_fill_the_prepared_sets_of_their_analogues():
    assert {text_hub.RECORD_SETS[name][0]: name for name in text_hub.TASKS} == {
        task: paper.lower() for task, paper in ADAPTATION_TASKS.items()}
    assert sorted(set_name for set_name, _ in text_hub.BENCHMARKS.values()) == sorted(EVAL_SETS)
    paper_names = {"boolq": "BoolQ", "piqa": "PIQA", "siqa": "SIQA", "hellaswag": "HellaSwag",
                   "winogrande": "WinoGrande", "arc_challenge": "ARC-c", "arc_easy": "ARC-e",
                   "openbookqa": "OBQA"}
    assert {name: EVAL_SETS[set_name] for name, (set_name, _) in text_hub.BENCHMARKS.items()} == paper_names


def test_benchmark_sources_are_the_datasets_lm_eval_scores():
    """params.yaml's prepare.benchmarks.paper: each lm-eval 0.4 task's dataset_path, dataset_name
    and the split it scores (test, else validation)."""
    pytest.importorskip("lm_eval")
    import lm_eval
    import yaml

    from bat.config import read_yaml

    class TaskLoader(yaml.SafeLoader):
        pass

    TaskLoader.add_multi_constructor("!", lambda loader, suffix, node: None)  # !function tags
    tasks = lm_eval.__path__[0] + "/tasks/"
    files = {"boolq": "super_glue/boolq/default.yaml", "piqa": "piqa/piqa.yaml", "siqa": "siqa/siqa.yaml",
             "hellaswag": "hellaswag/hellaswag.yaml", "winogrande": "winogrande/default.yaml",
             "arc_easy": "arc/arc_easy.yaml", "arc_challenge": "arc/arc_challenge.yaml",
             "openbookqa": "openbookqa/openbookqa.yaml"}
    params = read_yaml(PROJECT / "params.yaml")["prepare"]["benchmarks"]["paper"]
    for name, file in files.items():
        task = yaml.load(open(tasks + file), TaskLoader)
        if "include" in task:
            task = {**yaml.load(open(tasks + "arc/" + task["include"]), TaskLoader), **task}
        split = task.get("test_split") or task["validation_split"]
        assert (params[name]["path"], params[name]["name"], params[name]["split"]) == (
            task["dataset_path"], task.get("dataset_name"), split), name


# ----------------------------------------------------------------------------- the prepare stage

BENCHMARK_ROWS = {
    "boolq": {"question": "is it", "passage": "It is.", "label": 1},
    "piqa": {"goal": "Keep tea warm", "sol1": "Use a cosy.", "sol2": "Use ice.", "label": 0},
    "siqa": {"context": "Ann lost.", "question": "How does Ann feel?", "answerA": "sad",
             "answerB": "glad", "answerC": "tall", "label": "1"},
    "hellaswag": {"ind": 4, "activity_label": "Baking", "ctx_a": "A man mixes flour.", "ctx_b": "he",
                  "endings": ["bakes bread.", "swims."], "label": "0"},
    "winogrande": {"sentence": "The cup broke because _ was thin.", "option1": "the cup",
                   "option2": "the floor", "answer": "1"},
    "arc_easy": {"id": "e", "question": "What melts ice?", "answerKey": "B",
                 "choices": {"text": ["cold", "heat"], "label": ["A", "B"]}},
    "arc_challenge": {"id": "c", "question": "What melts ice?", "answerKey": "1",
                      "choices": {"text": ["heat", "cold"], "label": ["1", "2"]}},
    "openbookqa": {"id": "o", "question_stem": "The sun is", "answerKey": "A",
                   "choices": {"text": ["a star", "a moon"], "label": ["A", "B"]}},
}


def local(path, data_files) -> dict:
    return {"path": path, "name": None, "split": "train", "data_files": str(data_files)}


def paper_config(tmp_path, smoke_params) -> dict:
    """The smoke profile's prepare section with every source the paper's, on local files."""
    files = tmp_path / "files"
    files.mkdir()
    values = dict(smoke_params["prepare"])
    values.update(backbone_images=10, backbone_heldout_size=2, style_train_size=2, style_oracle_size=3,
                  style_heldout_size=4, text_backbone_size=6, task_train_size=3, task_oracle_size=2,
                  task_test_size=2, eval_set_size=3)
    values["image_backbone"] = {"source": "laion", "shuffle_buffer": 5,
                                "laion": local("parquet", laion_parquet(files / "laion.parquet", 16))}
    folders = [{"name": name, "path": "imagefolder", "class_name": name, "identifier": "sks",
                "data_dir": str(image_folder(files / name, 4))} for name in ("teapot", "dog")]
    values["image_adaptation"] = {"source": "imagefolder", "imagefolder": folders}
    pd.DataFrame(hub_rows("alpaca", 8)).to_parquet(files / "alpaca.parquet")
    values["text_backbone"] = {"source": "alpaca", "alpaca": local("parquet", files / "alpaca.parquet")}
    tasks = {}
    for name in text_hub.TASKS:
        (files / f"task_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hub_rows(name, 8)))
        tasks[name] = local("json", files / f"task_{name}.jsonl")
    values["text_tasks"] = {"source": "paper", "paper": tasks}
    benchmarks = {}
    for name, row in BENCHMARK_ROWS.items():
        count = 2 if name == "openbookqa" else 5  # a split shorter than eval_set_size is taken whole
        rows = [{**row, "id": f"{name}-{i}"} if "id" in row else row for i in range(count)]
        (files / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        benchmarks[name] = local("json", files / f"{name}.jsonl")
    values["benchmarks"] = {"source": "paper", "paper": benchmarks}
    return values


def test_prepare_writes_the_paper_sources_in_the_prepared_formats(tmp_path, raw, smoke_params):
    values = paper_config(tmp_path, smoke_params)
    out = tmp_path / "prepared"
    sizes = prepare(build(PrepareConfig, values, "prepare"), raw, out)

    backbone, heldout = (load_image_set(out / "images" / f"{n}.npz") for n in ("backbone", "backbone_heldout"))
    assert (len(backbone), len(heldout), backbone.source) == (10, 2, "laion")
    assert backbone.images.shape[1:] == (values["image_size"], values["image_size"], 3)
    assert not set(backbone.emoji) & set(heldout.emoji)
    for name in ("teapot", "dog"):
        splits = {split: load_image_set(out / "images" / f"{name}_{split}.npz")
                  for split in ("train", "oracle", "heldout")}
        assert [len(s) for s in splits.values()] == [2, 3, 4]
        assert set(splits["train"].emoji) <= set(splits["oracle"].emoji) <= set(splits["heldout"].emoji)
        assert {s.captions[0] for s in splits.values()} == {name}
    assert read_json(out / "summary.json")["image_folders"]["dog"] == {"class_name": "dog", "identifier": "sks"}

    records = read_jsonl(out / "text" / "backbone.jsonl")
    assert len(records) == 6 and records[0]["id"] == "backbone-00000" and records[0]["source"] == "alpaca"
    for task in ADAPTATION_TASKS:
        split_records = [read_jsonl(out / "text" / "tasks" / f"{task}_{split}.jsonl")
                         for split in ("train", "oracle", "test")]
        assert [len(r) for r in split_records] == [3, 2, 2]
        keys = [record["key"] for split in split_records for record in split]
        assert len(set(keys)) == len(keys)  # the splits share no row
        assert set(split_records[0][0]) == {"id", "key", "instruction", "response"}
    sets = load_eval_sets(out / "text" / "eval", values["eval_set_size"])
    assert {name: len(items) for name, items in sets.items()} == {
        name: 2 if name == "wiki_field" else 3 for name in EVAL_SETS}
    assert sets["example_cloze"][0].continuation == "was thin."  # WinoGrande, scored partially
    assert sizes["text/eval/wiki_field"] == 2
    assert load_items(out / "text" / "eval" / "definition_check.jsonl")[0].choices == ["no", "yes"]


@pytest.mark.parametrize("keys, value, message", [
    ("image_backbone.source", "coco",
     r"prepare.image_backbone.source: 'coco' is not allowed; choose one of \['openmoji', 'laion'\]"),
    ("image_backbone.shuffle_buffer", 0, r"prepare.image_backbone.shuffle_buffer: 0 must be"),
    ("image_adaptation.source", "imagefolder",
     r"prepare.image_adaptation.imagefolder: source imagefolder needs at least one set"),
    ("text_backbone.alpaca.data_files", 3, r"prepare.text_backbone.alpaca.data_files: 3 must be a path"),
    ("text_tasks.source", "hub",
     r"prepare.text_tasks.source: 'hub' is not allowed; choose one of \['analogues', 'paper'\]"),
    ("text_tasks.paper.xsum.path", "", r"prepare.text_tasks.paper.xsum.path: '' must be a non-empty"),
    ("text_tasks.paper.xsum.revision", "main", r"unknown parameter prepare.text_tasks.paper.xsum.revision"),
    ("benchmarks.paper", {"boolq": None},
     r"prepare.benchmarks.paper: needs the datasets \['boolq', 'piqa', 'siqa', 'hellaswag'"),
])
def test_bad_sources_name_the_key_and_the_allowed_values(smoke_params, keys, value, message):
    values = copy.deepcopy(smoke_params["prepare"])
    *path, last = keys.split(".")
    parent = values
    for key in path:
        parent = parent[key]
    parent[last] = value
    with pytest.raises(ConfigError, match=message):
        build(PrepareConfig, values, "prepare")


def test_folder_names_and_sizes_are_checked(tmp_path, raw, smoke_params):
    values = dict(smoke_params["prepare"])
    folder = {"name": "Tea pot", "path": "imagefolder", "data_dir": "x", "class_name": "teapot",
              "identifier": "sks"}
    values["image_adaptation"] = {"source": "imagefolder", "imagefolder": [folder]}
    with pytest.raises(ConfigError, match=r"name 'Tea pot' must be lower-case"):
        build(PrepareConfig, values, "prepare")
    folder.update(name="teapot", data_dir=str(image_folder(tmp_path / "teapot", 3)))
    with pytest.raises(ConfigError, match=r"imagefolder\[teapot\]: 3 images, fewer than the 8"):
        prepare(build(PrepareConfig, values, "prepare"), raw, tmp_path / "prepared")
