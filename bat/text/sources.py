"""Readers for the raw text sources: WordNet 3.0, Wikipedia lead sections, GCIDE.

Each reader returns plain records; which record goes to the backbone's data and which is held out
is decided in :mod:`bat.text.data`.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path

WORDNET_POS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}


@dataclass(frozen=True)
class Synset:
    offset: str
    pos: str
    lemmas: tuple[str, ...]  # underscores replaced by spaces
    definition: str
    examples: tuple[str, ...]
    hypernyms: tuple[str, ...]  # offsets of hypernym synsets (same pos)


def _parse_synset(line: str, pos: str) -> Synset:
    data, _, gloss = line.partition(" | ")
    fields = data.split()
    word_count = int(fields[3], 16)
    lemmas = tuple(re.sub(r"\(.*\)$", "", fields[4 + 2 * i]).replace("_", " ") for i in range(word_count))
    cursor = 4 + 2 * word_count
    pointer_count = int(fields[cursor])
    hypernyms = []
    for i in range(pointer_count):
        symbol, offset = fields[cursor + 1 + 4 * i], fields[cursor + 2 + 4 * i]
        if symbol in ("@", "@i"):
            hypernyms.append(offset)
    parts = [part.strip() for part in gloss.strip().split(";")]
    definition = "; ".join(part for part in parts if not part.startswith('"'))
    examples = tuple(part.strip('"') for part in parts if part.startswith('"') and part.endswith('"'))
    return Synset(fields[0], pos, lemmas, definition, examples, tuple(hypernyms))


def read_wordnet(raw: Path) -> dict[tuple[str, str], Synset]:
    """All synsets keyed by (pos, offset); the licence header lines start with two spaces."""
    synsets = {}
    for name, pos in WORDNET_POS.items():
        for line in (raw / "wordnet" / f"data.{name}").read_text(encoding="utf-8").splitlines():
            if line and not line.startswith("  "):
                synset = _parse_synset(line, pos)
                synsets[(pos, synset.offset)] = synset
    return synsets


@dataclass(frozen=True)
class Article:
    title: str
    extract: str
    description: str
    topic: str


def read_wikipedia(raw: Path) -> list[Article]:
    table = json.loads((raw / "wikipedia" / "summaries_en-us.json").read_text(encoding="utf-8"))
    articles = [Article(entry["title"], entry.get("extract") or "", entry.get("description") or "",
                        entry.get("topic") or "") for entry in table.values()]
    return sorted((a for a in articles if a.extract and a.description), key=lambda a: a.title)


_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_number(text: str) -> int:
    value = 0
    for char in text:
        value = value * 64 + _BASE64.index(char)
    return value


_SOURCE_TAG = re.compile(r"\[(1913 Webster|PJC|WordNet 1\.5|Webster 1913 Suppl\.)[^\]]*\]")
_MARKUP = re.compile(r"[{}]|\[[^\]]*\]|\([A-Z][a-z]+\.(?: [A-Z][a-z]+\.)*\)")


def _first_definition(entry: str) -> str | None:
    """The first sense of a dictd GCIDE entry, as one sentence, or None if it has no plain one."""
    body = entry.split("\n", 1)[1] if "\n" in entry else ""
    numbered = re.search(r"^\s*1\.\s(.*?)(?:\n\s*\n|\Z)", body, flags=re.S | re.M)
    paragraph = numbered.group(1) if numbered else body.split("\n\n", 1)[0]
    paragraph = _SOURCE_TAG.split(paragraph)[0]
    text = " ".join(_MARKUP.sub("", paragraph).split())
    sentence = re.split(r"(?<=[a-z])[.;:] ", text, maxsplit=1)[0].rstrip(".;: ")
    if not 15 <= len(sentence) <= 160 or sentence.startswith("(") or any(c in sentence for c in '"\\]') or "--" in sentence:
        return None
    return sentence[0].upper() + sentence[1:]


def read_gcide(raw: Path) -> dict[str, str]:
    """Lower-case single-word headwords and the first sense of their first entry."""
    data = gzip.decompress((raw / "gcide" / "gcide.dict.dz").read_bytes())
    definitions = {}
    for line in (raw / "gcide" / "gcide.index").read_text(encoding="utf-8").splitlines():
        word, offset, length = line.split("\t")
        key = word.lower()
        if not word.isalpha() or not word.isascii() or key in definitions or len(word) < 4:
            continue
        start = _dictd_number(offset)
        definition = _first_definition(data[start:start + _dictd_number(length)].decode("utf-8", "replace"))
        if definition is not None:
            definitions[key] = definition
    return definitions
