"""The `train_predictor` recipe: dataset → split → fit → held-out scores → files; speed; registry.

Thin steps over the components, shared by the flow, the CLI and the ablation benchmark:

- :func:`prepare_data` — validated samples, their images and the seeded held-out split;
- :func:`train_and_score` — one network trained on the training rows, scored on the held-out ones;
- :func:`speed` — the same held-out policies judged by the predictor and evaluated for real;
- :func:`write_outputs` — the predictor file, the held-out table and the scatter plot;
- :func:`register` — log + register in MLflow; move ``champion`` only if the new version is better
  on THIS held-out set (the champion is re-scored on it, not trusted by its own old numbers).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ppf.errors import PPFError
from ppf.predictor.dataset import build_images, policy_groups, read_samples, split
from ppf.predictor.features import Planner, image_shape
from ppf.predictor.net import NetConfig, PredictorNet
from ppf.predictor.train import TrainConfig, fit, predict, scores, timed

DATASET = Path("data") / "masks" / "samples.parquet"


@dataclass
class Data:
    df: pd.DataFrame
    images: np.ndarray
    train: np.ndarray
    test: np.ndarray
    planner: Planner
    kind: str  # the predictor input the images are
    digest: str  # sha256 of the parquet file: which data a predictor was trained on

    @property
    def y(self) -> np.ndarray:
        return self.df["js"].to_numpy(dtype=float)


def prepare_data(root: Path, params: Any, kind: str | None = None) -> Data:
    pp = params.predictor
    path = Path(root) / DATASET
    df = read_samples(path)
    planner = Planner.load(Path(root), params)
    kind = kind or pp.input
    images = build_images(df, planner, kind)
    train, test = split(df, pp.test_fraction, pp.seed, pp.split)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return Data(df, images, train, test, planner, kind, digest)


def net_config(params: Any, in_channels: int, **overrides: Any) -> NetConfig:
    pp = params.predictor
    base = dict(in_channels=in_channels, width=pp.width, dilations=tuple(pp.dilations),
                spp_levels=tuple(pp.spp_levels), attention=pp.attention, spp=pp.spp, density=pp.density,
                hidden=tuple(pp.hidden))
    return NetConfig(**{**base, **overrides})


def train_config(params: Any) -> TrainConfig:
    pp = params.predictor
    return TrainConfig(epochs=pp.epochs, batch_size=pp.batch_size, lr=pp.lr, momentum=pp.momentum,
                       weight_decay=pp.weight_decay, seed=pp.seed)


def train_and_score(data: Data, config: NetConfig, train: TrainConfig, on_epoch=lambda e, loss: None
                    ) -> tuple[PredictorNet, list[float], np.ndarray, dict[str, float]]:
    """(network, loss per epoch, held-out predictions, held-out scores)."""
    y = data.y
    net, history = fit(data.images[data.train], y[data.train], config, train, on_epoch)
    pred = predict(net, data.images[data.test])
    return net, history, pred, scores(y[data.test], pred)


def summary(data: Data, held_out: dict[str, float]) -> dict[str, Any]:
    """The metrics file's accuracy part (JS range over the whole dataset)."""
    y = data.y
    return {"n_train": int(len(data.train)), "n_test": int(len(data.test)), **held_out,
            "js_min": float(y.min()), "js_max": float(y.max()),
            "mae_pct_of_range": 100.0 * held_out["mae"] / float(y.max() - y.min()) if y.max() > y.min() else float("nan")}


def heldout_table(data: Data, pred: np.ndarray) -> pd.DataFrame:
    df = data.df.iloc[data.test]
    return pd.DataFrame({"key": df["key"].to_numpy(), "policy": policy_groups(data.df)[data.test],
                         "ratio": df["ratio"].to_numpy(), "true_js": df["js"].to_numpy(dtype=float),
                         "predicted_js": pred})


def real_evaluator(root: Path, params: Any):
    """The collection's evaluator (dense model, importance, held-out tokens, dense reference)."""
    from ppf.collect import SampleEvaluator
    from ppf.engine import importance, token_batches
    from ppf.models import load
    from ppf.paths import cache_dir

    model, tokenizer = load(params.model.name, params.model.dtype, params.model.device)
    calib, heldout = token_batches(Path(root), params.model.name, tokenizer, params)
    imp = importance(model, params.model.name, calib, params, cache_dir() / "importance",
                     also_look_in=(Path(root) / "data" / "importance",))
    return SampleEvaluator(model, imp, heldout, params)


def verify(root: Path, params: Any, policy: Any, ratio: float) -> dict[str, float]:
    """The TRUE JS of ``policy`` at ``ratio``: prune a copy of the model and measure it."""
    from ppf.collect import Sample

    row = real_evaluator(root, params).evaluate(Sample(policy.method, policy.a_eta, ratio))
    return {"true_js": row["js"], "true_eval_ms": 1e3 * (row["plan_s"] + row["eval_s"])}


def speed(root: Path, params: Any, predictor: Any, data: Data, n: int, repeat: int = 50) -> dict[str, float]:
    """Predictor vs real evaluation of the same ``n`` held-out policies, in one process.

    Predictor: policy → plan → image → CNN (no weights touched). Real: the same plan → prune a copy
    of the dense model → JS on the held-out tokens (the collection's evaluator; the dense reference
    is computed once beforehand, as in collection).
    """
    from ppf.collect import Sample

    rows = data.df.iloc[data.test[np.linspace(0, len(data.test) - 1, min(n, len(data.test))).astype(int)]]
    samples = [Sample(r.method, float(r.a_eta), float(r.ratio)) for r in rows.itertuples(index=False)]
    pred_s = [timed(lambda s=s: predictor.predict(s.policy, s.ratio), repeat) for s in samples]
    evaluator = real_evaluator(root, params)
    real = [evaluator.evaluate(s) for s in samples]
    true_ms = 1e3 * float(np.mean([r["plan_s"] + r["eval_s"] for r in real]))
    predictor_ms = 1e3 * float(np.mean(pred_s))
    stored = dict(zip(data.df["key"], data.df["js"]))
    return {"predictor_ms": predictor_ms, "true_eval_ms": true_ms, "speedup": true_ms / predictor_ms,
            "speed_policies": len(samples),
            "speed_js_reproduced": float(max(abs(r["js"] - stored[r["key"]]) for r in real))}


def scatter_png(table: pd.DataFrame, held_out: dict[str, float], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    for policy, g in table.groupby("policy"):
        ax.scatter(g.true_js, g.predicted_js, s=14, label=policy)
    lo = float(min(table.true_js.min(), table.predicted_js.min()))
    hi = float(max(table.true_js.max(), table.predicted_js.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("true JS (pruned vs dense)")
    ax.set_ylabel("predicted JS")
    ax.set_title(f"{title}\nheld out: Spearman {held_out['spearman']:.3f}, MAE {held_out['mae']:.4f}", fontsize=9)
    ax.legend(fontsize=7, title="held-out policy", title_fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_outputs(root: Path, net: PredictorNet, meta: dict[str, Any], table: pd.DataFrame,
                  history: list[float], held_out: dict[str, float]) -> dict[str, Path]:
    """models/predictor/predictor.safetensors, plots/predictor/{heldout.csv, scatter.png, loss.csv}."""
    from ppf.io import write_bytes_atomic, write_text_atomic
    from ppf.predictor.store import save_predictor

    root = Path(root)
    plots = root / "plots" / "predictor"
    paths = {"predictor": save_predictor(net, root / "models" / "predictor", meta),
             "heldout": write_text_atomic(plots / "heldout.csv", table.to_csv(index=False, float_format="%.6g")),
             "loss": write_text_atomic(plots / "loss.csv", pd.DataFrame(
                 {"epoch": np.arange(1, len(history) + 1), "train_mse": history}).to_csv(index=False, float_format="%.6g")),
             "scatter": write_bytes_atomic(plots / "scatter.png", scatter_png(table, held_out, meta["model"]))}
    return paths


def register(params: Any, predictor_file: Path, data: Data, held_out: dict[str, float],
             tags: dict[str, str]) -> dict[str, Any]:
    """Register the predictor; ``champion`` moves if its held-out MAE beats the champion's on the
    same held-out samples (call inside an open MLflow run)."""
    from ppf.predictor.store import load_predictor
    from ppf.registry import Incomparable, register as register_version

    def rescore(file: Path) -> float:
        net, meta = load_predictor(file)
        want = image_shape(data.planner.shape, meta.get("input", "o_proj"))
        if meta.get("model") != data.planner.model or tuple(meta.get("image_shape", ())) != want:
            raise Incomparable(f"was trained for {meta.get('model')} {tuple(meta.get('image_shape', ()))}; "
                               "it cannot score this model's masks")
        images = data.images if meta["input"] == data.kind else build_images(data.df, data.planner, meta["input"])
        return scores(data.y[data.test], predict(net, images[data.test]))["mae"]

    return register_version("predictor", predictor_file, params.tracking.predictor_name, held_out["mae"], rescore,
                            "held-out MAE", tags)


def locate(ref: str | Path | None, root: Path, params: Any, scratch: str | Path) -> Path:
    """The predictor file for ``ref``: a path (default: the project's models/predictor), or
    ``registry:champion`` / ``registry:<version>``."""
    from ppf.registry import locate as locate_file

    return locate_file(ref, Path(root) / "models" / "predictor", params.tracking.predictor_name,
                       "predictor.safetensors", root, scratch, "train_predictor")
