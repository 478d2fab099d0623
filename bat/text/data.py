"""Text sets: the backbone's instruction set D^B, adaptation tasks D^A, eight multiple-choice sets.

Every WordNet lemma, GCIDE headword and Wikipedia title falls on one side of a fixed hash split:
backbone side or held-out side. D^B is built from the backbone side only; D^A tasks and evaluation
sets only from the held-out side, so no item (nor its key word or title) of D^A or an evaluation
set occurs in D^B. Distractor options may come from anywhere: knowing a wrong answer is not
knowing the item.

The eight sets are analogues of the paper's Tab. 1 columns, named after what they test:

=======================  ==========  =========================================================
set                      paper       item
=======================  ==========  =========================================================
definition_check         BoolQ       does word W mean definition D? yes / no
hypernym_choice          PIQA        W is a kind of …? two options
synonym_choice           SIQA        which word means the same as W? three options
wiki_next_sentence       HellaSwag   first sentence of an article → its second, four options
example_cloze            WinoGrande  an example sentence with W blanked, two options
definition_hard          ARC-c       meaning of a GCIDE word, distractors share its first letters
definition_easy          ARC-e       meaning of a GCIDE word, random distractors
wiki_field               OBQA        which field does article T belong to? four options
=======================  ==========  =========================================================

Items are ``{id, key, context, choices, gold}``; choices carry no leading space, the scorer adds
lm-evaluation-harness's target delimiter (:mod:`bat.text.benchmarks`).
"""

from __future__ import annotations

import hashlib
import random
import re

from bat.text.sources import Article, Synset

EVAL_SETS = {"definition_check": "BoolQ", "hypernym_choice": "PIQA", "synonym_choice": "SIQA",
             "wiki_next_sentence": "HellaSwag", "example_cloze": "WinoGrande",
             "definition_hard": "ARC-c", "definition_easy": "ARC-e", "wiki_field": "OBQA"}
# D^A tasks, analogues of the paper's adaptation sets (App. B).
ADAPTATION_TASKS = {"word_definition": "MedQuad", "example_cloze": "WinoGrande",
                    "wiki_summary": "XSum"}

Record = dict


def held_out(key: str, percent: int) -> bool:
    """The fixed split: md5 of the lower-cased key, so it does not move with seeds or sizes."""
    return int(hashlib.md5(key.lower().encode("utf-8")).hexdigest(), 16) % 100 < percent


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[a-z0-9)][.!?])\s+(?=[A-Z])", text) if s]


def single_word(lemma: str) -> bool:
    return lemma.isalpha() and lemma.islower() and len(lemma) >= 3


# ----------------------------------------------------------------------------- backbone D^B

def backbone_instructions(synsets: list[Synset], by_key: dict, articles: list[Article],
                          size: int, rng: random.Random) -> list[Record]:
    """Alpaca-style instruction/response pairs from the backbone side of WordNet and Wikipedia."""
    records = []
    for synset in synsets:
        word = synset.lemmas[0]
        records.append({"source": "wordnet", "key": word, "instruction": f'What does the word "{word}" mean?',
                        "response": synset.definition})
        for offset in synset.hypernyms[:1]:
            parent = by_key[(synset.pos, offset)].lemmas[0]
            records.append({"source": "wordnet", "key": word,
                            "instruction": f'Name a more general term for "{word}".', "response": parent})
        for example in synset.examples[:1]:
            records.append({"source": "wordnet", "key": word,
                            "instruction": f'Use the word "{word}" in a sentence.', "response": example})
    for article in articles:
        lead = " ".join(_sentences(article.extract)[:2])
        records.append({"source": "wikipedia", "key": article.title,
                        "instruction": f"What is {article.title}?", "response": lead})
        records.append({"source": "wikipedia",
                        **summary_record(article.title, article.extract, article.description)})
    rng.shuffle(records)
    return _numbered(records[:size], "backbone")


def _numbered(records: list[Record], prefix: str) -> list[Record]:
    return [{"id": f"{prefix}-{i:05d}", **record} for i, record in enumerate(records)]


# ----------------------------------------------------------------------------- D^A tasks

def word_definition_task(words: list[str], definitions: dict[str, str]) -> list[Record]:
    return [{"key": w, "instruction": f'What does the word "{w}" mean?', "response": definitions[w]}
            for w in words]


def summary_record(key: str, text: str, summary: str) -> Record:
    """One summarisation example: ``text`` in the instruction, its one-line ``summary`` as response."""
    return {"key": key, "instruction": f"Summarise in one line:\n{text}", "response": summary}


def wiki_summary_task(articles: list[Article]) -> list[Record]:
    return [summary_record(a.title, a.extract, a.description) for a in articles]


def cloze_context(blanked: str) -> str:
    """The context of a fill-in-the-blank item, ``blanked`` holding the blank."""
    return f"Fill in the blank: {blanked}\nAnswer:"


def example_cloze_items(synsets: list[Synset], distractors: list[str], rng: random.Random) -> list[Record]:
    """Example sentences containing their lemma, blanked, with one distractor lemma."""
    items = []
    for synset in synsets:
        word = synset.lemmas[0]
        for example in synset.examples:
            if re.search(rf"\b{re.escape(word)}\b", example):
                blanked = re.sub(rf"\b{re.escape(word)}\b", "___", example, count=1)
                wrong = _distinct_others(distractors, {word}, 1, rng)[0]
                choices = [word, wrong]
                rng.shuffle(choices)
                items.append({"key": word, "context": cloze_context(blanked),
                              "choices": choices, "gold": choices.index(word)})
                break
    return items


def cloze_as_instructions(items: list[Record]) -> list[Record]:
    return [{"key": item["key"], "instruction": item["context"].removesuffix("\nAnswer:")
             + "\nOptions:" + "".join(f"\n- {c}" for c in item["choices"]),
             "response": item["choices"][item["gold"]]} for item in items]


# ----------------------------------------------------------------------------- evaluation sets

def _choice_item(key: str, context: str, right: str, wrong: list[str], rng: random.Random) -> Record:
    choices = [right, *wrong]
    rng.shuffle(choices)
    return {"key": key, "context": context, "choices": choices,
            "gold": choices.index(right)}


def _distinct_others(pool: list[str], exclude: set[str], count: int, rng: random.Random) -> list[str] | None:
    others: list[str] = []
    for _ in range(50 * count):
        candidate = rng.choice(pool)
        if candidate not in exclude and candidate not in others:
            others.append(candidate)
            if len(others) == count:
                return others
    return None


def definition_check(synsets: list[Synset], rng: random.Random) -> list[Record]:
    items = []
    for synset in synsets:
        truthful = rng.random() < 0.5
        other = rng.choice(synsets)
        if not truthful and other.definition == synset.definition:
            continue
        meaning = synset.definition if truthful else other.definition
        word = synset.lemmas[0]
        items.append({"key": word, "context": f'Question: Does "{word}" mean "{meaning}"?\nAnswer:',
                      "choices": ["yes", "no"], "gold": 0 if truthful else 1})
    return items


def hypernym_choice(synsets: list[Synset], by_key: dict, rng: random.Random) -> list[Record]:
    parents = sorted({by_key[(s.pos, s.hypernyms[0])].lemmas[0] for s in synsets if s.hypernyms})
    items = []
    for synset in synsets:
        if not synset.hypernyms:
            continue
        parent = by_key[(synset.pos, synset.hypernyms[0])].lemmas[0]
        wrong = _distinct_others(parents, {parent}, 1, rng)
        if wrong:
            word = synset.lemmas[0]
            items.append(_choice_item(word, f'Question: "{word}" is a kind of what?\nAnswer:', parent, wrong, rng))
    return items


def synonym_choice(synsets: list[Synset], vocabulary: list[str], rng: random.Random) -> list[Record]:
    items = []
    for synset in synsets:
        if len(synset.lemmas) < 2:
            continue
        word, synonym = synset.lemmas[0], synset.lemmas[1]
        wrong = _distinct_others(vocabulary, set(synset.lemmas), 2, rng)
        if wrong:
            items.append(_choice_item(word, f'Question: Which word means the same as "{word}"?\nAnswer:',
                                      synonym, wrong, rng))
    return items


def wiki_next_sentence(articles: list[Article], rng: random.Random) -> list[Record]:
    seconds = {a.title: _sentences(a.extract)[1] for a in articles if len(_sentences(a.extract)) > 1}
    pool = sorted(seconds.values())
    items = []
    for article in articles:
        if article.title not in seconds:
            continue
        wrong = _distinct_others(pool, {seconds[article.title]}, 3, rng)
        if wrong:
            first = _sentences(article.extract)[0]
            items.append(_choice_item(article.title, first, seconds[article.title], wrong, rng))
    return items


def definition_choice(words: list[str], definitions: dict[str, str], hard: bool,
                      rng: random.Random) -> list[Record]:
    everything = sorted(definitions)
    by_prefix: dict[str, list[str]] = {}
    for word in everything:
        by_prefix.setdefault(word[:3], []).append(word)
    items = []
    for word in words:
        pool = by_prefix[word[:3]] if hard else everything
        others = _distinct_others(pool, {word}, 3, rng)
        if others is None:
            continue
        wrong = [definitions[o] for o in others]
        if len({definitions[word], *wrong}) < 4:
            continue
        items.append(_choice_item(word, f'Question: What is the meaning of "{word}"?\nAnswer:',
                                  definitions[word], wrong, rng))
    return items


def wiki_field(articles: list[Article], rng: random.Random) -> list[Record]:
    fields = sorted({a.topic for a in articles if a.topic != "Uncategorized"})
    items = []
    for article in articles:
        if article.topic in ("", "Uncategorized"):
            continue
        wrong = _distinct_others(fields, {article.topic}, 3, rng)
        items.append(_choice_item(article.title, f'Question: Which field does "{article.title}" belong '
                                  f'to?\nAnswer:', article.topic, wrong, rng))
    return items


def take(items: list[Record], size: int, prefix: str) -> list[Record]:
    return _numbered(items[:size], prefix)


