"""Where ppf keeps things that outlive a project checkout.

Downloads (the gensim wheel, a bigbench sdist) and converted base models live in one cache directory, shared by
every clone on the machine, so a fresh clone or a CI run does not download or convert again.
Override with ``PPF_CACHE_DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The persistent cache root: ``$PPF_CACHE_DIR`` or ``~/.cache/ppf``."""
    root = os.environ.get("PPF_CACHE_DIR") or Path.home() / ".cache" / "ppf"
    path = Path(root).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def project_root() -> Path:
    """The project checkout: the nearest parent holding params.yaml (else the cwd)."""
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "params.yaml").is_file():
            return candidate
    return here
