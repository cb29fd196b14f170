"""Atomic writes: a reader (or a rerun after a crash) sees the old file or the new one, never half.

Every writer goes to a temporary sibling first and is moved into place with ``os.replace``,
which is atomic on one filesystem. :func:`atomic_dir` does the same for a whole directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


def _tmp_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_tensors_atomic(path: str | Path, tensors: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> Path:
    """safetensors file, written atomically; ``metadata`` (any JSON) is read back by :func:`read_tensors`.

    The metadata is stored as ONE sorted-JSON string: safetensors writes a multi-key metadata map
    in hash order, which would make identical inputs give different bytes (and DVC hashes).
    """
    from safetensors.torch import save_file

    path = Path(path)
    tmp = _tmp_sibling(path)
    meta = {"ppf": json.dumps(dict(metadata or {}), sort_keys=True, default=str)}
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_tensors(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, metadata) of a file written by :func:`write_tensors_atomic`."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("ppf", "{}"))
        return {k: f.get_tensor(k) for k in f.keys()}, meta


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path``, on error it vanishes."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_artifact(path: str | Path, filename: str, what: str, stage: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(file, tensors, metadata) of a ppf artifact given as its file or its directory; a missing one
    is a PPFError naming the stage that makes it."""
    from ppf.errors import PPFError

    path = Path(path)
    file = path / filename if path.is_dir() else path
    if not file.is_file():
        raise PPFError(f"no trained {what} at '{path}'; run `dvc repro {stage}` or pass the path of one")
    try:
        tensors, meta = read_tensors(file)
    except Exception as exc:
        raise PPFError(f"'{file}' is not a ppf {what} ({type(exc).__name__}: {str(exc)[:120]}); "
                       f"retrain it with `dvc repro {stage}`") from None
    return file, tensors, meta


def digest(*paths: Path) -> str:
    """A short content hash of files and directories (names + bytes), for cache keys."""
    h = hashlib.sha256()
    for p in map(Path, paths):
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]
