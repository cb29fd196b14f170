"""The `collect` recipe: the predictor's mask dataset — the project's samples, each evaluated for real.

- :func:`context_key` — what a sample's result depends on besides the sample (the cache key of
  every real evaluation of a policy: collection's, active learning's);
- :func:`samples_of` — the training samples (the paper's grid with the extended parts
  ``collect.space`` draws) and the within-ratio test set (``collect.within``), sorted;
- :func:`evaluate` — one sample pruned and measured (:func:`ppf.samples.evaluate`);
- :func:`write_dataset` / :func:`summary` — data/masks/samples.parquet and metrics/collect.json.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from ppf.config import Params
from ppf.io import digest, write_bytes_atomic
from ppf.samples import Sample, evaluate, policy_grid, sample_space, within_ratio_samples
from ppf.workbench import Workbench

DATASET = Path("data") / "masks" / "samples.parquet"

__all__ = ["DATASET", "Sample", "context_key", "evaluate", "samples_of", "summary", "write_dataset"]


def context_key(root: Path, params: Params) -> str:
    """What a sample's result depends on besides the sample: model, tokens, importance, settings.

    The importance scores stand in for the weights: new weights under the same model path give new
    scores, so a scheduled re-collection after a model update never serves stale samples.
    """
    data = [Path(root) / "data" / d for d in ("calibration", "importance")]
    payload = {"model": params.model.model_dump(exclude={"device"}), "pruning": params.pruning.model_dump(),
               "heldout": params.heldout.model_dump(), "calibration": params.calibration.model_dump(),
               "data": digest(*[d for d in data if d.exists()])}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def samples_of(root: Path, params: Params) -> list[Sample]:
    """The training samples (the paper grid, with the extended parts ``collect.space`` draws) and the
    within-ratio test set (``collect.within``), in one sorted list."""
    c, m = params.collect, params.pruning.max_layer_ratio
    wb = Workbench(root, params)
    shape = wb.shape  # the config only: no weights loaded
    order = wb.stored_block_order() if c.space.fraction > 0 and "blocks" in c.space.orders else None
    train = sample_space(policy_grid(c.ratios, c.a_etas, tuple(c.methods)), c.n_samples, c.seed, c.space, shape, m,
                         order)
    return sorted(train + within_ratio_samples(c, shape, m, order))


def write_dataset(root: Path, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """data/masks/samples.parquet, sorted by key, without the wall-clock columns (same params → same
    bytes); returns the rows with them."""
    df = pd.DataFrame(rows).sort_values("key").reset_index(drop=True)
    if df["key"].duplicated().any():  # cannot happen by construction; guard the dataset anyway
        raise RuntimeError("duplicate samples in the collected dataset")
    buf = io.BytesIO()
    df.drop(columns=["plan_s", "eval_s"]).to_parquet(buf, index=False)
    write_bytes_atomic(Path(root) / DATASET, buf.getvalue())
    return df


def summary(df: pd.DataFrame, wall_s: float) -> dict[str, Any]:
    """metrics/collect.json: counts, the signal's range, timings and the worst ratio error."""
    return {"n_samples": len(df), "n_within_ratio": int(df.holdout.sum()),
            "n_extended": int((df.parts != "").sum()), "js_min": float(df.js.min()), "js_max": float(df.js.max()),
            "plan_s_mean": float(df.plan_s.mean()), "eval_s_mean": float(df.eval_s.mean()), "wall_s": wall_s,
            "max_ratio_error": float((df.actual_ratio - df.ratio).abs().max())}
