"""The text corpus: calibration windows for pruning and held-out text for perplexity.

The default corpus is English Wikipedia from the MediaWiki dump excerpt in the gensim wheel
(:mod:`ppf.data.gensim_wheel`): 106 articles, ~3.4 MB of prose once mwparserfromhell has
stripped the markup (:func:`wikipedia_dump_articles`). The earlier default, still supported with a
local sdist, is the English Wikipedia in BIG-bench's ``paragraph_segmentation`` task: 1000
articles (~9 MB), shipped inside the bigbench sdist, so no dataset hub is needed. The task stores
each article as one sentence per line plus a 0/1 label per sentence (1 = ends a paragraph); we
rebuild the paragraphs from the labels so the text reads like ordinary prose. The language of an
article is read from its content, not from its position in the file, so a reordered or extended
task cannot silently mix languages into the corpus.

Splits are by article (a seeded permutation), never by position inside an article, so perplexity
is measured on text the calibration windows never saw. Users can bring their own text files
(:func:`read_text_files`) or a Hugging Face dataset when online (:func:`load_hf_corpus`).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import torch

from ppf.errors import PPFError

# A few very frequent function words per Latin-script language: enough to tell the 8 of them in
# paragraph_segmentation apart by argmax of counts (shared words such as "de" lose to the rest).
STOPWORDS: dict[str, frozenset[str]] = {
    lang: frozenset(words.split())
    for lang, words in {
        "de": "der die und den von zu das mit sich des auf für ist im dem nicht ein eine als auch "
              "wurde nach bei aus wird sind",
        "en": "the of and to is was for on as with by that from at his are which it an were "
              "this he has",
        "es": "el y los del se las por un para con una su al es como fue lo más entre sus",
        "fr": "le et les des du une est dans par pour au sur qui avec il aux été sont ses",
        "it": "di il che della del un per è dei con una da nel alla sono gli delle anche le nella",
        "nl": "het een van en is op te dat die voor met zijn werd aan als door ook er bij",
        "pl": "w i na z się do nie jest że to o od po przez oraz był jako za roku",
        "pt": "o que do da em um para com uma os no na se dos por foi as mais ao",
    }.items()
}
# Russian is the only Cyrillic-script language of the nine, so every Cyrillic word is evidence
# for it. Stopwords alone misfile Russian articles that are mostly lists of English band names.
CYRILLIC_WORD = re.compile(r"[\u0400-\u04FF]")
LANGUAGES = (*STOPWORDS, "ru")

SPLITS = ("train", "valid", "test")


def detect_language(text: str) -> str | None:
    """The language code with the most evidence in ``text``; None when there is none at all.

    Evidence is stopword hits for the Latin-script languages and Cyrillic words for Russian. On
    the 9000 bigbench articles this puts exactly the 1000 English ones in "en"; the few misfiled
    articles are non-English lists and tables with next to no prose.
    """
    words = re.findall(r"\w+", text.lower())
    counts = Counter(words)
    scores = {lang: sum(counts[w] for w in stop) for lang, stop in STOPWORDS.items()}
    scores["ru"] = sum(1 for w in words if CYRILLIC_WORD.match(w))
    best = max(scores, key=scores.__getitem__)
    return best if scores[best] > 0 else None


def rebuild_article(sentences: list[str], labels: list[str]) -> str:
    """Join sentences into paragraphs (" ") and paragraphs into an article ("\\n").

    A label of "1" closes the paragraph after its sentence; trailing sentences without a closing
    label still form a last paragraph, so no text is dropped.
    """
    paragraphs, current = [], []
    for i, sentence in enumerate(sentences):
        if sentence.strip():
            current.append(sentence.strip())
        if i < len(labels) and labels[i] == "1" and current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n".join(paragraphs)


def wikipedia_articles(task: dict, language: str = "en") -> list[str]:
    """The ``language`` articles of a ``paragraph_segmentation`` task.json, paragraphs rebuilt."""
    if language not in LANGUAGES:
        raise PPFError(f"corpus language {language!r} is not supported; use one of "
                       f"{', '.join(sorted(LANGUAGES))}")
    articles = []
    for example in task.get("examples", []):
        if detect_language(example["input"]) != language:
            continue
        article = rebuild_article(example["input"].split("\n"), str(example["target"]).split())
        if article:
            articles.append(article)
    if not articles:
        raise PPFError(f"no {language!r} articles in the paragraph_segmentation task; check the "
                       f"corpus language or the bigbench sdist")
    return articles


# What a stripped article still carries of its markup: image captions ("thumb|..."), category and
# file links, table rows; a line of them is dropped whole.
_MARKUP_LINE = re.compile(r"^\s*(?:thumb|left|right|upright|frame|frameless|center|\d+px)\b[^\n]*\|"
                          r"|^\s*(?:Category|File|Image):|^\s*[|!{]")


def wikipedia_dump_articles(xml: bytes, min_chars: int = 2000) -> list[str]:
    """The main-namespace, non-redirect articles of a MediaWiki XML dump as plain text, in dump order:
    markup stripped by mwparserfromhell (links keep their text; templates, references, tables and
    tags go), caption / category lines dropped, blank runs collapsed; articles under ``min_chars``
    (stubs, disambiguation lists) left out."""
    import io
    import xml.etree.ElementTree as ET

    import mwparserfromhell

    articles = []
    try:
        for _, el in ET.iterparse(io.BytesIO(xml)):
            if not el.tag.endswith("}page") and el.tag != "page":
                continue
            ns, text = el.find("{*}ns"), el.find("{*}revision/{*}text")
            if ns is not None and ns.text == "0" and el.find("{*}redirect") is None and text is not None and text.text:
                plain = mwparserfromhell.parse(text.text).strip_code(normalize=True, collapse=True)
                lines = [ln.strip() for ln in plain.splitlines() if not _MARKUP_LINE.match(ln)]
                article = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
                if len(article) >= min_chars:
                    articles.append(article)
            el.clear()
    except ET.ParseError as e:
        raise PPFError(f"the Wikipedia dump is not valid MediaWiki XML ({e}); delete the downloaded gensim wheel "
                       "and run again") from e
    if not articles:
        raise PPFError(f"no article of at least {min_chars} characters in the Wikipedia dump")
    return articles


def split_articles(articles: list[str], valid_fraction: float, test_fraction: float,
                   seed: int) -> dict[str, list[str]]:
    """Assign whole articles to train/valid/test with a seeded permutation.

    Each split keeps the original article order, so the split is a pure function of
    (articles, fractions, seed) and a changed seed changes membership, not just order.
    """
    for key, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 1:
            raise PPFError(f"corpus.{key} = {value!r} must be between 0 and 1 (e.g. 0.05)")
    if valid_fraction + test_fraction >= 1:
        raise PPFError(f"corpus.valid_fraction + corpus.test_fraction = "
                       f"{valid_fraction + test_fraction!r} leaves no training text; keep the sum "
                       f"below 1 (e.g. 0.05 + 0.05)")
    n = len(articles)
    n_valid = max(1, round(n * valid_fraction))
    n_test = max(1, round(n * test_fraction))
    if n - n_valid - n_test < 1:
        raise PPFError(f"only {n} articles: too few for train/valid/test splits; use a larger "
                       f"corpus or smaller fractions")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    parts = {"valid": order[:n_valid], "test": order[n_valid:n_valid + n_test],
             "train": order[n_valid + n_test:]}
    return {name: [articles[i] for i in sorted(parts[name])] for name in SPLITS}


def read_text_files(train: Path, valid: Path, test: Path) -> dict[str, str]:
    """Read a user's own corpus: three UTF-8 text files, one per split."""
    texts = {}
    for name, path in zip(SPLITS, (train, valid, test), strict=True):
        path = Path(path).expanduser()
        if not path.is_file():
            raise PPFError(f"corpus {name} file {str(path)!r} does not exist; fix the path in "
                           f"params.yaml (corpus.files.{name})")
        texts[name] = path.read_text(encoding="utf-8")
    return texts


def load_hf_corpus(path: str, name: str | None = None, text_field: str = "text") -> dict[str, str]:
    """Load a Hugging Face dataset (e.g. ``wikitext``, ``wikitext-2-raw-v1``) as three texts.

    Its ``train``/``validation``/``test`` splits become train/valid/test; rows are joined with
    a blank line, the usual convention for wikitext perplexity in the pruning literature. Needs
    the network (or a warm HF cache), which is why it is opt-in.
    """
    import datasets

    try:
        ds = datasets.load_dataset(path, name)
    except Exception as e:  # offline, unknown name, ... all look different; one line for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PPFError(f"cannot load Hugging Face dataset {path!r} (name {name!r}): {first}; "
                       f"check the name and the network, or use the bigbench corpus") from e
    texts = {}
    for ours, theirs in (("train", "train"), ("valid", "validation"), ("test", "test")):
        if theirs not in ds:
            raise PPFError(f"Hugging Face dataset {path!r} has no {theirs!r} split (it has "
                           f"{', '.join(ds)}); pick a dataset with train/validation/test")
        if text_field not in ds[theirs].column_names:
            raise PPFError(f"Hugging Face dataset {path!r} has no column {text_field!r} (it has "
                           f"{', '.join(ds[theirs].column_names)}); set corpus.text_field")
        texts[ours] = "\n\n".join(ds[theirs][text_field])
    return texts


def _chunks(text: str, max_chars: int,
            separators: tuple[str, ...] = ("\n\n", "\n", " ")) -> list[str]:
    """Cut ``text`` into pieces of at most ``max_chars``, each cut just BEFORE a separator.

    Cutting before whitespace (blank line, else newline, else space) keeps byte-level BPE
    tokenization of the pieces equal to that of the whole: the pre-tokenizer starts a new token
    at that whitespace anyway.
    """
    if len(text) <= max_chars or not separators:
        return [text]
    sep, rest = separators[0], separators[1:]
    pieces = re.split(f"(?={re.escape(sep)})", text)
    out: list[str] = []
    current = ""
    for piece in pieces:
        if len(piece) > max_chars:
            if current:
                out.append(current)
                current = ""
            out.extend(_chunks(piece, max_chars, rest))
        elif len(current) + len(piece) > max_chars:
            out.append(current)
            current = piece
        else:
            current += piece
    if current:
        out.append(current)
    return out


def tokenize_text(tokenizer, text: str, max_chars: int = 4096) -> torch.LongTensor:
    """Tokenize a whole corpus split into one 1-D token stream (no BOS/EOS added).

    Megabytes of text in one call trip the tokenizer's "longer than model max length" warning
    and hold one huge encoding; cutting at article/paragraph boundaries and batch-encoding the
    pieces gives the same ids, quietly.
    """
    pieces = [p for p in _chunks(text, max_chars) if p]
    if not pieces:
        return torch.zeros(0, dtype=torch.long)
    ids = tokenizer(pieces, add_special_tokens=False)["input_ids"]
    return torch.tensor([i for piece in ids for i in piece], dtype=torch.long)


def calibration_batch(tokens: torch.Tensor, n: int, seqlen: int, seed: int) -> torch.LongTensor:
    """``n`` random windows of ``seqlen`` tokens from the train stream, as a ``[n, seqlen]`` batch.

    The window starts come from a ``torch.Generator`` seeded with ``seed``, so the same seed
    gives the same calibration data on every machine, whatever else used the global RNG.
    """
    if n < 1 or seqlen < 1:
        raise PPFError(f"calibration needs n >= 1 and seqlen >= 1 (got n={n}, seqlen={seqlen}); "
                       f"fix calibration.n_samples / calibration.seqlen in params.yaml")
    if tokens.numel() < seqlen + 1:
        raise PPFError(f"the train text has {tokens.numel()} tokens, fewer than seqlen + 1 = "
                       f"{seqlen + 1}; use a smaller calibration.seqlen or more training text")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seqlen, (n,), generator=g)
    return torch.stack([tokens[s:s + seqlen] for s in starts.tolist()]).long()
