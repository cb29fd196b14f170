"""The `importance` recipe: score the dense model once — layer H for lod/esd/bi, head/channel scores,
and BlockPruner's greedy block order up to ``benchmark.blockpruner.order_ratio``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ppf.config import Params
from ppf.workbench import Workbench


def score(root: Path, params: Params) -> dict[str, Any]:
    """Compute and store data/importance; return metrics/importance.json (seconds per part, the H
    vectors, the block order)."""
    wb = Workbench(root, params)
    imp = wb.importance(compute=True, save_to=Path(root) / "data" / "importance")
    out = {"layer": imp.layer, "seconds": dict(imp.meta.get("timings", {})), "unit_importance": imp.meta["unit_importance"]}
    limit = params.benchmark.blockpruner.order_ratio
    if limit > 0:  # BlockPruner's greedy order, for blocks=N policies and the blockpruner baseline
        t = time.perf_counter()
        steps = wb.block_steps(limit, compute=True, save_to=Path(root) / "data" / "importance")
        out["seconds"]["block_order_s"] = time.perf_counter() - t
        out["block_order"] = [f"{s['kind']}:{s['layer']}" for s in steps]
    return out
