"""Downstream tasks built from the corpus's TEST split, so that their accuracy tracks how much of the
model is left on text no stage trained, calibrated or chose on:

- :func:`cloze_records` — LAMBADA-style: a passage of a paragraph whose LAST word is to be
  predicted (greedy, every token of it: lm-eval's ``acc`` of a ``loglikelihood`` task, plus the
  word's perplexity). As LAMBADA was filtered so that the word needs the passage, a passage is kept
  only when its target word occurs earlier in the passage but NOT in its last sentence: the last
  sentence alone does not hold it, the passage does. Short and function words are never targets.
- :func:`continuation_records` — HellaSwag-style: a paragraph's first sentences and four candidate
  next sentences, the true one and three sentences of OTHER paragraphs nearest to it in length
  (so length gives nothing away), in a seeded order balanced over the gold position (``acc_norm``).

Both read paragraphs (blocks of text between blank lines) and split them into sentences with a
rule (a ``.``, ``!`` or ``?`` followed by a space and a capital letter or a digit); a paragraph
with a sentence too short or too long for the rule to be trusted is skipped.
"""

from __future__ import annotations

import bisect
import random
import re

from ppf.errors import PPFError

Record = dict

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_WORD = re.compile(r"[A-Za-z]+")
# function words LAMBADA's targets avoid: guessing them needs no passage
STOPWORDS = frozenset("""a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has have having he
her here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of
off on once only or other our ours ourselves out over own same she should so some such than that the their theirs
them themselves then there these they this those through to too under until up very was we were what when where
which while who whom why will with would you your yours yourself also may might must shall one two three many much
well even still however thus""".split())


def paragraphs(text: str) -> list[str]:
    """The blocks of ``text`` between blank lines, whitespace collapsed."""
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(paragraph) if s.strip()]


def _plausible(sents: list[str], lo: int = 4, hi: int = 80) -> bool:
    """Every sentence between ``lo`` and ``hi`` words: outside that, the splitting rule went wrong
    (an abbreviation, a list, a table) and the text is not prose to test on."""
    return all(lo <= len(s.split()) <= hi for s in sents)


def cloze_records(text: str, min_words: int = 30, max_words: int = 160, min_target: int = 4) -> list[Record]:
    """LAMBADA-style passages of ``text``'s paragraphs: ``{"context", "target", "paragraph"}`` with
    ``target`` = " " + the last word (the passage ends right before it, its final punctuation dropped).

    A paragraph's sentences are read in order; a passage is the run of sentences since the last
    passage ended, kept as soon as it has ``min_words`` words and its last word qualifies (a run
    past ``max_words`` starts again), so passages never share text."""
    out = []
    for k, para in enumerate(paragraphs(text)):
        sents = sentences(para)
        if len(sents) < 2 or not _plausible(sents):
            continue
        begin = 0
        for end in range(1, len(sents)):
            passage = sents[begin:end + 1]
            n_words = sum(len(s.split()) for s in passage)
            if n_words > max_words:
                begin = end
                continue
            if n_words < min_words:
                continue
            record = _cloze(passage, min_target)
            if record is not None:
                out.append(record | {"paragraph": k})
                begin = end + 1
    return out


def _cloze(passage: list[str], min_target: int) -> Record | None:
    last = passage[-1]
    m = re.search(r"([A-Za-z]+)[.!?\"')]*$", last)
    if m is None:
        return None
    word, before_word = m.group(1), last[: m.start(1)]
    if len(word) < min_target or word.lower() in STOPWORDS or not before_word.strip():
        return None
    earlier = {w.lower() for s in passage[:-1] for w in _WORD.findall(s)}
    if word.lower() not in earlier or word.lower() in {w.lower() for w in _WORD.findall(before_word)}:
        return None  # the passage holds the word, the last sentence alone does not
    return {"context": " ".join(passage[:-1] + [before_word.rstrip()]), "target": " " + word}


def _names(text: str) -> set[str]:
    """The capitalised words of ``text`` that are not function words (its names, roughly), by their
    first 5 letters (Afghan ~ Afghans ~ Afghanistan)."""
    return {w[:5].lower() for w in re.findall(r"\b[A-Z][a-z]{2,}", text) if w.lower() not in STOPWORDS}


def continuation_records(text: str, seed: int, prefix_sentences: tuple[int, int] = (2, 4),
                         n_choices: int = 4, far: int = 10) -> list[Record]:
    """HellaSwag-style items: ``{"query", "choices", "gold", "paragraph"}`` — a paragraph's first
    2..4 sentences (seeded per paragraph), the true next sentence and ``n_choices - 1`` sentences of
    other paragraphs nearest to it in length — paragraphs at least ``far`` away (articles are
    contiguous in the split, so not of the same article, as a rule) sharing none of this paragraph's
    names, so that a distractor is wrong, not a paraphrase of the same topic. The gold
    position cycles 0, 1, 2, 3 over the items (then a seeded shuffle of the items), so every
    position is equally often right."""
    paras = [(k, sentences(p)) for k, p in enumerate(paragraphs(text))]
    paras = [(k, s) for k, s in paras if len(s) >= prefix_sentences[0] + 1 and _plausible(s)]
    pool = sorted({(len(s), s, k) for k, ss in paras for s in ss})  # every sentence, by length
    lengths = [x[0] for x in pool]
    items = []
    for k, sents in paras:
        rng = random.Random(f"{seed}:continuation:{k}")
        n = rng.randint(prefix_sentences[0], min(prefix_sentences[1], len(sents) - 1))
        query, true = " ".join(sents[:n]), sents[n]
        own, names = set(sents), _names(" ".join(sents))
        # the other paragraphs' sentences nearest in length: walk out from the true one's length
        i = bisect.bisect_left(lengths, len(true))
        lo, hi, found = i - 1, i, []
        while len(found) < n_choices - 1 and (lo >= 0 or hi < len(pool)):
            take_hi = hi < len(pool) and (lo < 0 or abs(pool[hi][0] - len(true)) <= abs(pool[lo][0] - len(true)))
            j = hi if take_hi else lo
            if take_hi:
                hi += 1
            else:
                lo -= 1
            s, other = pool[j][1], pool[j][2]
            if abs(other - k) >= far and s not in own and s not in found and not names & _names(s):
                found.append(s)
        if len(found) < n_choices - 1:
            continue
        items.append((k, query, true, found))
    out = []
    for idx, (k, query, true, others) in enumerate(items):
        gold = idx % n_choices
        rng = random.Random(f"{seed}:continuation-order:{k}")
        others = others[:]
        rng.shuffle(others)
        choices = others[:gold] + [true] + others[gold:]
        out.append({"query": query, "choices": choices, "gold": gold, "paragraph": k})
    random.Random(f"{seed}:continuation-items").shuffle(out)
    return out


def check_text(text: str, name: str) -> None:
    if not text or not text.strip():
        raise PPFError(f"task {name!r} is built from the corpus's test split, which is empty; prepare a corpus "
                       "with test_fraction > 0")
