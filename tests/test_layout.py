"""The package layout: a track-free core, one package per track, and who may import whom.

Imports are read from the source (every ``import``, also inside functions), so a lazy import
cannot slip past the rule.
"""

import ast

import pytest

from tests.conftest import PROJECT

BAT = PROJECT / "bat"
FOUNDATIONS = {"bat.config", "bat.errors", "bat.io", "bat.paths", "bat.validate"}
# What each package may import besides the foundations and itself.
ALLOWED = {
    "core": set(),
    "image": {"core"},
    "text": {"core"},
    "convex": {"core"},
    "analysis": set(),
    "stages": {"core", "image", "text", "analysis"},
}


def imported_modules(path) -> set[str]:
    """Dotted names of the bat modules or packages ``path`` imports (``from bat import io`` → bat.io)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bat":
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                is_module = (BAT.parent / (child.replace(".", "/") + ".py")).exists() \
                    or (BAT.parent / child.replace(".", "/")).is_dir()
                names.add(child if is_module else node.module)
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.split(".")[0] == "bat"}
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_their_role_allows(package):
    wrong = {}
    for path in sorted((BAT / package).rglob("*.py")):
        for module in imported_modules(path) - FOUNDATIONS:
            other = module.split(".")[1] if module.count(".") else None
            if other != package and other not in ALLOWED[package]:
                wrong.setdefault(path.name, []).append(module)
    assert not wrong, f"bat/{package} imports outside its role: {wrong}"


def test_foundations_import_only_foundations():
    for name in FOUNDATIONS:
        path = BAT / (name.split(".")[1] + ".py")
        assert imported_modules(path) <= FOUNDATIONS | {"bat"}, name


def test_no_module_outside_the_packages():
    loose = {path.stem for path in BAT.glob("*.py")} - {"__init__"}
    assert loose == {name.split(".")[1] for name in FOUNDATIONS}


def test_the_tracks_implement_one_protocol():
    """Both track modules expose the names the stages use, with the same meaning."""
    from bat.config import profile_params
    from bat.core.track import TRACKS, track_module

    for name in TRACKS:
        module = track_module(name)
        assert module.MIXING in ("per_batch", "regular_interval")
        assert module.datasets(profile_params("tiny")) and module.ADAPTERS and isinstance(module.SEEDED_EVALUATION, bool)
        assert callable(module.load)
    image, text = (track_module(name) for name in TRACKS)
    assert not set(image.ADAPTERS) & set(text.ADAPTERS)
