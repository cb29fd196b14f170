"""One download path for every file ppf takes from the package index: ``pip download``.

pip is the index's own client, so the proxies, mirrors and certificates configured for it just work.
A file is fetched ONCE into the shared cache (:func:`ppf.paths.cache_dir` ``/downloads``): into a
temporary directory beside the cache entry, moved into place only when complete, so an interrupted
download never leaves a half file that a later run would trust.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ppf.errors import PPFError
from ppf.paths import cache_dir


def pip_download(package: str, version: str, binary: bool, setting: str, hint: str = "") -> Path:
    """The cached ``<package>-<version>`` sdist (``binary=False``) or wheel for this platform, downloaded
    once. A failure is one PPFError naming pip's reason, ``hint`` and the ``setting`` that takes a local copy."""
    downloads = cache_dir() / "downloads"
    kind = "*.whl" if binary else "*.tar.gz"
    cached = sorted(downloads.glob(f"{package}-{version}-{kind}" if binary else f"{package}-{version}.tar.gz"))
    if cached:
        return cached[0]
    downloads.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=downloads, prefix=f".{package}-"))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
               "--only-binary" if binary else "--no-binary", ":all:", f"{package}=={version}", "-d", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = sorted(tmp.glob(kind))
        if proc.returncode != 0 or not got:
            lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines()]
            errors = [ln for ln in lines if ln.startswith("ERROR:")] or [ln for ln in lines if ln and "WARNING" not in ln]
            why = errors[0].removeprefix("ERROR:").strip() if errors else f"exit {proc.returncode}"
            raise PPFError(f"pip download of {package}=={version} failed ({why}){hint}; or download "
                           f"{package}-{version}{'-*.whl' if binary else '.tar.gz'} yourself and set {setting} in params.yaml")
        target = downloads / got[0].name
        got[0].replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def local_or_download(package: str, version: str, binary: bool, setting: str, local: Path | None = None,
                      hint: str = "") -> Path:
    """A user's copy ``local`` (the params ``setting``; it must exist), else :func:`pip_download`."""
    if local is None:
        return pip_download(package, version, binary, setting, hint)
    path = Path(local).expanduser()
    if not path.is_file():
        raise PPFError(f"{setting} {str(path)!r} does not exist; point it at a downloaded {package}-{version}"
                       f"{'-*.whl' if binary else '.tar.gz'} or remove it to download automatically")
    return path
