"""The collected mask dataset as the predictor sees it: validated rows, images, the held-out samples.

:func:`read_samples` refuses anything that is not the `collect` stage's parquet (unreadable bytes,
missing columns, masks of mixed or wrong shapes) with one clear error. :func:`build_images`
re-plans every row with the project's :class:`~ppf.policy.Planner` and checks that the
o_proj image it gets is the mask stored at collection: a dataset collected with other importance
scores or pruning settings cannot silently train a predictor for this project.

:func:`holdout` holds out whole POLICIES by default: a held-out (method, a_eta) is never seen in
training at any ratio, so the metrics say how the predictor does on policies it never saw — what
the agent asks it about. ``a_eta = 0`` is the same (uniform) plan for every method: one policy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ppf.errors import PPFError
from ppf.masks import compress
from ppf.metrics import SIGNALS
from ppf.policy import Planner, Policy
from ppf.predictor.features import image

COLUMNS = ("key", "method", "a_eta", "ratio", "actual_ratio", "mask", "mask_shape", "js")


def read_samples(path: str | Path, signal: str = "js") -> pd.DataFrame:
    """The collected samples, sorted by key, after checking this IS a ppf mask dataset with the
    ``signal`` (:data:`ppf.metrics.SIGNALS`) measured for every row (``kl`` and ``nll`` are collected
    since they could be learned; a dataset without them is refused with the way to recollect)."""
    path = Path(path)
    if not path.is_file():
        raise PPFError(f"no mask dataset at '{path}'; run `dvc repro collect` first")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for bad bytes
        raise PPFError(f"'{path}' is not a readable parquet file ({type(exc).__name__}); "
                       "delete it and rerun `dvc repro collect`") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise PPFError(f"'{path}' is not a ppf mask dataset: it lacks the columns {', '.join(missing)}; "
                       "point to data/masks/samples.parquet written by `dvc repro collect`")
    if df.empty:
        raise PPFError(f"'{path}' has no samples; raise collect.n_samples and rerun `dvc repro collect`")
    shapes = {tuple(int(x) for x in s) for s in df["mask_shape"]}
    if len(shapes) != 1:
        raise PPFError(f"'{path}' mixes mask shapes {sorted(shapes)}: samples of different models; "
                       "collect one model per dataset")
    shape = shapes.pop()
    bad = [k for k, m in zip(df["key"], df["mask"], strict=True) if len(m) != int(np.prod(shape))]
    if bad:
        raise PPFError(f"'{path}': the mask of sample {bad[0]} does not have {shape} entries; rerun `dvc repro collect`")
    if signal not in SIGNALS:
        raise PPFError(f"unknown predictor signal {signal!r}; use one of {', '.join(SIGNALS)}")
    if signal not in df.columns or df[signal].isna().any():
        raise PPFError(f"'{path}' has no {signal} for every sample (collected before {signal} was measured); "
                       "rerun `dvc repro collect --force`, or set predictor.signal: js")
    y = df[signal].to_numpy(dtype=float)
    if not np.isfinite(y).all() or (signal != "nll" and (y < 0).any()):
        raise PPFError(f"'{path}': {signal} values must be finite" + (" and >= 0" if signal != "nll" else "")
                       + "; rerun `dvc repro collect`")
    if df["key"].duplicated().any():
        raise PPFError(f"'{path}' has duplicate samples ({df['key'][df['key'].duplicated()].iloc[0]}); rerun `dvc repro collect`")
    return df.sort_values("key").reset_index(drop=True)


def policy_groups(df: pd.DataFrame) -> np.ndarray:
    """The policy of each row (without its ratio); every a_eta = 0 row of a method is the one uniform
    policy (with the same extended parts)."""
    parts = df["parts"].astype(str) if "parts" in df.columns else pd.Series("", index=df.index)
    base = np.where(df["a_eta"].to_numpy() == 0, "uniform", df["method"].astype(str) + ":" + df["a_eta"].map(lambda a: f"{a:g}"))
    return (pd.Series(base, index=df.index) + parts).to_numpy()


def within_rows(df: pd.DataFrame) -> np.ndarray:
    """Row indices of the within-ratio test set (never trained on; empty for a dataset without one)."""
    return np.flatnonzero(df["holdout"].to_numpy(dtype=bool)) if "holdout" in df.columns else np.array([], dtype=int)


def holdout(df: pd.DataFrame, test_fraction: float, seed: int, by: str = "policy") -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices: seeded, ~``test_fraction`` of the rows held out.

    ``by="policy"`` holds out whole policies (shuffled, taken until the fraction is reached);
    ``by="sample"`` holds out single rows.
    """
    if not 0 < test_fraction < 1:
        raise PPFError(f"test_fraction {test_fraction} must be in (0, 1), e.g. 0.2")
    rng = np.random.default_rng(seed)
    within = within_rows(df)
    if len(within):  # the within-ratio test set is neither trained on nor part of this hold-out
        keep = np.setdiff1d(np.arange(len(df)), within)
        train, test = holdout(df.iloc[keep].drop(columns=["holdout"]).reset_index(drop=True), test_fraction, seed, by)
        return keep[train], keep[test]
    n = len(df)
    want = max(1, int(round(test_fraction * n)))
    if by == "sample":
        test = np.sort(rng.permutation(n)[:want])
    elif by == "policy":
        groups = policy_groups(df)
        names = sorted(set(groups))
        if len(names) < 2:
            raise PPFError("the dataset holds a single policy; hold out samples instead (predictor.holdout: sample)")
        chosen, count = [], 0
        for g in rng.permutation(names):
            if count >= want or len(chosen) == len(names) - 1:
                break
            chosen.append(g)
            count += int((groups == g).sum())
        test = np.flatnonzero(np.isin(groups, chosen))
    else:
        raise PPFError(f"unknown hold-out rule {by!r}; use policy or sample")
    train = np.setdiff1d(np.arange(n), test)
    if len(train) == 0:
        raise PPFError(f"nothing left to train on with test_fraction {test_fraction}; lower it")
    return train, test


def build_images(df: pd.DataFrame, planner: Planner, kind: str) -> np.ndarray:
    """Images [N, C, L, W] of every row, re-planned; the stored masks must match the plans."""
    stored_shape = tuple(int(x) for x in df["mask_shape"].iloc[0])
    expected = (1, planner.shape.n_layers, planner.shape.n_heads)
    if stored_shape != expected:
        raise PPFError(f"the dataset's masks are {stored_shape}, but {planner.model} gives {expected}; "
                       "collect the dataset for this model (`dvc repro collect`)")
    out = []
    for row in df.itertuples(index=False):
        policy = Policy(row.method, float(row.a_eta)).with_parts(getattr(row, "parts", "") or "")
        plan = planner.plan(policy, row.ratio)
        stored = np.asarray(row.mask, dtype=np.float32).reshape(stored_shape)
        if not np.array_equal(compress(plan), stored):
            raise PPFError(f"sample {row.key}: its stored mask differs from the plan made now — the dataset "
                           "was collected with other importance scores or pruning settings; rerun `dvc repro collect`")
        out.append(image(plan, kind))
    return np.stack(out).astype(np.float32)
