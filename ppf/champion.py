"""The `champion` alias of MLflow's registered versions: :func:`promote` registers a new version, and
it takes the alias only if it is better; :func:`locate` finds a registered file.

"Better" is judged on the SAME data, now: the current champion's file is fetched from the registry
and re-scored by the caller's ``rescore`` (e.g. the predictor's MAE on this held-out set), never
trusted by the numbers it logged when it was trained on other data. A champion that cannot be
scored here (another model, another mask shape) is replaced, and the run says why.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ppf import tracking
from ppf.serving import SERVING


class Incomparable(Exception):
    """Raised by a ``rescore`` function when the champion cannot be judged on this data."""


def promote(kind: str, file: Path, name: str, score: float, rescore: Callable[[Path], float], what: str,
             tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Log + register ``file`` (inside an open MLflow run); move ``champion`` if ``score`` (lower is
    better) beats the champion's ``rescore``. Returns {version, champion, reason}."""
    version = tracking.log_and_register(kind, file, name, SERVING[kind], tags={**(tags or {}), what: f"{score:.6g}"})
    current = tracking.champion(name)
    if current is None:
        promote, reason = True, "no champion yet"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                theirs = rescore(tracking.version_file(name, current["version"], Path(file).name, tmp))
            except Incomparable as exc:
                theirs, reason = None, f"champion v{current['version']} {exc}"
        if theirs is None:
            promote = True
        else:
            promote = score < theirs
            reason = f"{what} {score:.5g} vs champion v{current['version']} {theirs:.5g} on the same data"
    if promote:
        tracking.promote(name, version)
    tracking.tag_version(name, version, {"champion_decision": reason})
    tracking.set_run_tags({f"{kind}_version": version, "promoted": promote, "promotion_reason": reason})
    return {"version": version, "champion": promote, "reason": reason}


def locate(ref: str | Path | None, default: Path, name: str, filename: str, root: Path, scratch: str | Path,
           stage: str) -> Path:
    """The file a user means: a path (``None``: ``default``, the project's own), or
    ``registry:champion`` / ``registry:<version>`` of registered model ``name`` (downloaded to ``scratch``)."""
    from ppf.errors import PPFError

    if ref is None:
        return default
    text = str(ref)
    if not text.startswith("registry:"):
        return Path(text)
    which = text.removeprefix("registry:")
    tracking.configure(root)
    if which == "champion":
        current = tracking.champion(name)
        if current is None:
            raise PPFError(f"no '{name}' version holds the champion alias in {tracking.store_dir(root)}; "
                           f"run `dvc repro {stage}` first")
        which = current["version"]
    try:
        return tracking.version_file(name, which, filename, scratch)
    except Exception as exc:
        raise PPFError(f"cannot fetch {name} version {which!r} from the registry ({type(exc).__name__}); "
                       "use registry:champion or an existing version number") from None
