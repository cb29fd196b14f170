"""Real English text and tasks from the ``gensim`` wheel on PyPI: the default data since bigbench left.

PyPI no longer serves the ``bigbench==1.0.0`` sdist that ppf's corpus and tasks came from (its
index lists only 0.0.1, 358 KB of code and no task data; checked 2026-12-06). The gensim wheel
ships real data for its own tests, inside the wheel, on every platform:

- ``enwiki-latest-pages-articles1.xml-...-shortened.bz2``: an English Wikipedia dump excerpt
  (MediaWiki XML, 206 pages; 106 articles with ~3.4 MB of prose once the markup is stripped):
  the corpus (:func:`ppf.data.corpus.wikipedia_dump_articles`);
- ``questions-words.txt``: the Google word-analogy set (Mikolov et al., 2013; 19,544 questions in
  14 categories): the ``analogy`` task;
- ``pang_lee_polarity.cor``: labelled movie-review sentences (Pang & Lee): the ``polarity`` task.

The wheel (~27 MB) is fetched once with ``pip download --no-deps`` into the shared cache
(:func:`ppf.paths.cache_dir`), like every other download of ppf, and its members are read from
the zip without installing gensim.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from ppf.data.download import local_or_download
from ppf.errors import PPFError

TEST_DATA = "gensim/test/test_data/"
WIKI_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
ANALOGY = "questions-words.txt"
POLARITY = "pang_lee_polarity.cor"


def fetch_wheel(version: str = "4.4.0", wheel: Path | None = None) -> Path:
    """The ``gensim-<version>`` wheel: ``wheel`` if given (``data.gensim.wheel``), else downloaded once."""
    return local_or_download("gensim", version, True, "data.gensim.wheel", wheel)


def read_members(wheel: Path, names: list[str]) -> dict[str, bytes]:
    """The bytes of each test-data file ``names`` (e.g. ``questions-words.txt``) in the wheel."""
    try:
        with zipfile.ZipFile(wheel) as z:
            present = set(z.namelist())
            missing = [n for n in names if TEST_DATA + n not in present]
            if missing:
                raise PPFError(f"{missing[0]!r} is not in {str(wheel)!r} ({TEST_DATA}); use the gensim 4.4.0 "
                               "wheel (data.gensim.version)")
            return {n: z.read(TEST_DATA + n) for n in names}
    except (zipfile.BadZipFile, OSError) as e:
        raise PPFError(f"cannot read the gensim wheel {str(wheel)!r} ({e}); delete it and download again, "
                       "or set data.gensim.wheel to a good gensim .whl") from e
