"""What every flow shares: the cross-run cache policy and the project root.

Prefect's TASK_SOURCE hashes only a task's own body, so a change inside ``ppf`` would not
invalidate a cached result. ``CACHE`` adds a hash of every ppf source file to the inputs and the
task source, so cached results are reused across runs exactly while inputs and code are the same.
Tasks that use it return VALUES (texts, records, numbers), never paths to files that DVC may have
deleted: writing files is left to uncached tasks.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy

import ppf

ROOT = Path(__file__).resolve().parent.parent


@cache
def code_version() -> str:
    """sha256 over the ppf package sources (paths and contents)."""
    h = hashlib.sha256()
    pkg = Path(ppf.__file__).parent
    for f in sorted(pkg.rglob("*.py")):
        h.update(str(f.relative_to(pkg)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


CACHE: CachePolicy = INPUTS + TASK_SOURCE + CachePolicy.from_cache_key_fn(lambda ctx, inputs: code_version())


def run_main(flow_fn, doc: str, argv: list[str] | None = None) -> int:
    """`python -m flows.<stage> [--params P]`: run the flow, print its result as JSON.

    A PPFError (bad params, missing data) is one line on stderr and exit status 2.
    """
    import argparse
    import json
    import sys

    from ppf.errors import PPFError

    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    ap.add_argument("--params", default="params.yaml", help="params file, relative to the project root")
    args = ap.parse_args(argv)
    try:
        result = flow_fn(args.params)
    except PPFError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0
