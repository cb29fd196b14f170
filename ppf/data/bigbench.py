"""The BIG-bench source distribution: an optional source of the corpus and of three zero-shot tasks.

The ``bigbench`` 1.0.0 sdist carries every task's ``task.json``, so the corpus and the zero-shot
tasks need no dataset hub. PyPI no longer serves it (only 0.0.1, without task data), so ppf's
default data now comes from the gensim wheel (:mod:`ppf.data.gensim_wheel`); with a local copy
(``data.bigbench.sdist``) or a mirror that has it, ``data.corpus.source: bigbench`` and the tasks
goal_step_wikihow / social_iqa / hyperbaton work as before. It is 358 MB, so it is downloaded once
into the shared cache (:func:`ppf.paths.cache_dir`) and then read as a stream: one pass over the
tar pulls out every ``task.json`` a stage needs, without unpacking the rest.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from ppf.errors import PPFError
from ppf.data.download import local_or_download

TASKS_PREFIX = "bigbench/benchmark_tasks/"


def fetch_sdist(version: str = "1.0.0", sdist: Path | None = None) -> Path:
    """Return the path of the ``bigbench-<version>.tar.gz`` sdist, downloading it once if needed.

    A user-given ``sdist`` (``corpus.sdist`` in params.yaml) wins, for machines that cannot reach
    the index. Otherwise the cached copy is used; it is fetched with ``pip download`` (the
    package's own client, so proxies and mirrors configured for pip just work) into a temp
    directory beside the cache entry and moved into place only when complete.
    """
    return local_or_download("bigbench", version, False, "corpus.sdist", sdist,
                             hint="; use pip<=26.2.1 (newer pip refuses its direct-URL dependencies); PyPI itself "
                                  "serves only bigbench 0.0.1 since 2026 (ppf's default data is the gensim wheel's)")


def read_task_jsons(sdist: Path, task_paths: list[str]) -> dict[str, dict]:
    """Parse the ``task.json`` of each task path (e.g. ``"goal_step_wikihow/goal_inference"``).

    One streaming pass over the gzip (``r|gz``): the archive is read front to back once, whatever
    the number of tasks, and the walk stops as soon as every wanted member has been seen.
    """
    wanted = {f"{TASKS_PREFIX}{p.strip('/')}/task.json": p for p in task_paths}
    found: dict[str, dict] = {}
    try:
        with tarfile.open(sdist, "r|gz") as tar:
            for member in tar:
                # Members are "bigbench-<version>/bigbench/benchmark_tasks/<task>/task.json".
                inner = member.name.split("/", 1)[-1]
                if inner in wanted and member.isfile():
                    f = tar.extractfile(member)
                    assert f is not None
                    found[wanted[inner]] = json.loads(f.read().decode("utf-8"))
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, OSError, EOFError) as e:
        raise PPFError(f"cannot read bigbench sdist {str(sdist)!r} ({e}); delete it and download "
                       f"again, or set corpus.sdist to a good bigbench .tar.gz") from e
    missing = [p for p in task_paths if p not in found]
    if missing:
        raise PPFError(f"bigbench task {missing[0]!r} not found in {str(sdist)!r}; check the task "
                       f"name against bigbench/benchmark_tasks/ in that sdist")
    return {p: found[p] for p in task_paths}
