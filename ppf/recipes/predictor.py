"""The `train_predictor` recipe: dataset → hold-out → fit → held-out scores → files; speed; registry.

Thin steps over the components, shared by the flow, the CLI, active learning and the ablation study:

- :func:`prepare_data` — validated samples, their images and the seeded held-out split;
- :func:`train_and_score` — one network trained on the training rows, scored on the held-out ones;
- :func:`speed` — the same held-out policies judged by the predictor and evaluated for real;
- :func:`verify` — one policy's true signal (``ppf predict --verify``);
- :func:`write_outputs` — the predictor file, the held-out table and the scatter plot;
- :func:`register` — log + register in MLflow; move ``champion`` only if the new version is better
  on THIS held-out set (the champion is re-scored on it, not trusted by its own old numbers);
- :func:`trained` / :func:`publish` — the stage: the training (a cached task's body), then every
  file, metric and the MLflow run of it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ppf import plots, samples, tracking
from ppf.config import Params
from ppf.errors import PPFError
from ppf.io import write_bytes_atomic, write_json_atomic, write_text_atomic
from ppf.policy import Planner, Policy
from ppf.predictor.dataset import build_images, policy_groups, read_samples, holdout, within_rows
from ppf.predictor.features import image_shape
from ppf.predictor.net import NetConfig, PredictorNet
from ppf.predictor.store import Predictor, load_predictor, save_predictor
from ppf.predictor.train import TrainConfig, fit, predict, scores, timed
from ppf.recipes.collect import DATASET
from ppf.champion import Incomparable, locate as locate_file, promote
from ppf.workbench import Workbench


@dataclass
class Data:
    df: pd.DataFrame
    images: np.ndarray
    train: np.ndarray
    test: np.ndarray
    within: np.ndarray  # the within-ratio test set's rows (collect.within; never trained on)
    planner: Planner
    kind: str  # the predictor input the images are
    digest: str  # sha256 of the parquet file: which data a predictor was trained on
    signal: str = "js"  # the column learned (predictor.signal)

    @property
    def y(self) -> np.ndarray:
        return self.df[self.signal].to_numpy(dtype=float)


def prepare_data(wb: Workbench, kind: str | None = None) -> Data:
    pp = wb.params.predictor
    path = wb.root / DATASET
    df = read_samples(path, pp.signal)
    planner = wb.planner
    kind = kind or pp.input
    images = build_images(df, planner, kind)
    train, test = holdout(df, pp.test_fraction, pp.seed, pp.holdout)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return Data(df, images, train, test, within_rows(df), planner, kind, digest, pp.signal)


def project_data(root: Path, params: Params) -> tuple[Workbench, Data]:
    """The project's workbench (no weights loaded) and its prepared dataset."""
    wb = Workbench(Path(root), params)
    return wb, prepare_data(wb)


def network(config: dict[str, Any], state: dict[str, Any]) -> PredictorNet:
    """A trained network from its config dict and weights (a training task's result), in eval mode."""
    net = PredictorNet(NetConfig.from_dict(config))
    net.load_state_dict(state)
    return net.eval()


def with_rows(data: Data, extra: pd.DataFrame) -> Data:
    """``data`` plus ``extra`` TRAINING rows (collected elsewhere, e.g. by active learning; their
    images re-planned and checked like the dataset's); the held-out and within-ratio rows stay."""
    if extra.empty:
        return data
    extra = extra.reindex(columns=data.df.columns)
    clash = set(extra["key"]) & set(data.df["key"])
    if clash:
        raise PPFError(f"rows {sorted(clash)[:3]} are in the dataset already; add only new policies")
    n = len(data.df)
    return Data(pd.concat([data.df, extra], ignore_index=True),
                np.concatenate([data.images, build_images(extra, data.planner, data.kind)]),
                np.concatenate([data.train, n + np.arange(len(extra))]), data.test, data.within,
                data.planner, data.kind, data.digest, data.signal)


def net_config(params: Params, in_channels: int, **overrides: Any) -> NetConfig:
    pp = params.predictor
    base = dict(in_channels=in_channels, width=pp.width, dilations=tuple(pp.dilations),
                spp_levels=tuple(pp.spp_levels), attention=pp.attention, spp=pp.spp, density=pp.density,
                hidden=tuple(pp.hidden), log_target=pp.log_target)
    return NetConfig(**{**base, **overrides})


def train_config(params: Params) -> TrainConfig:
    pp = params.predictor
    return TrainConfig(epochs=pp.epochs, batch_size=pp.batch_size, lr=pp.lr, momentum=pp.momentum,
                       weight_decay=pp.weight_decay, seed=pp.seed)


def by_ratio(ratios: np.ndarray, true: np.ndarray, pred: np.ndarray, min_rows: int = 3) -> dict[str, float]:
    """Spearman between the true and predicted signal among the rows of each target ratio (ratios with at
    least ``min_rows`` rows): how well policies are ranked at ONE ratio, which is what the agent asks."""
    from scipy.stats import spearmanr

    out = {}
    for r in np.unique(np.round(ratios, 6)):
        at = np.isclose(ratios, r)
        t, p = true[at], pred[at]
        if at.sum() >= min_rows and np.ptp(t) > 0:
            out[f"{r:g}"] = float(spearmanr(t, p).statistic) if np.ptp(p) > 0 else 0.0
    return out


def ranking_scores(data: Data, test_pred: np.ndarray, within_pred: np.ndarray) -> dict[str, Any]:
    """Beside the held-out scores: distinct predictions, the mean within-ratio Spearman of the random
    held-out rows (groups of a few) and — the figure that means something — of the within-ratio test set."""
    y = data.y
    ratios = data.df["ratio"].to_numpy(dtype=float)
    test_groups = by_ratio(ratios[data.test], y[data.test], test_pred)
    out: dict[str, Any] = {"distinct_predictions": int(len(np.unique(np.round(test_pred, 6)))),
                           "spearman_within_ratio_heldout": (float(np.mean(list(test_groups.values())))
                                                             if test_groups else float("nan"))}
    if len(data.within):
        groups = by_ratio(ratios[data.within], y[data.within], within_pred)
        out |= {"spearman_within_ratio": float(np.mean(list(groups.values()))) if groups else float("nan"),
                "spearman_within_ratio_by_ratio": groups, "n_within_ratio": int(len(data.within)),
                "within_ratio_mae": float(np.abs(within_pred - y[data.within]).mean()),
                "distinct_predictions_within_ratio": int(len(np.unique(np.round(within_pred, 6))))}
    return out


def train_and_score(data: Data, config: NetConfig, train: TrainConfig, on_epoch=lambda e, loss: None
                    ) -> tuple[PredictorNet, list[float], np.ndarray, dict[str, Any]]:
    """(network, loss per epoch, held-out predictions, held-out scores incl. the ranking scores)."""
    y = data.y
    net, history = fit(data.images[data.train], y[data.train], config, train, on_epoch)
    pred = predict(net, data.images[data.test])
    within = predict(net, data.images[data.within]) if len(data.within) else np.zeros(0, dtype=np.float32)
    return net, history, pred, scores(y[data.test], pred) | ranking_scores(data, pred, within)


def summary(data: Data, held_out: dict[str, float]) -> dict[str, Any]:
    """The metrics file's accuracy part (the signal's range over the whole dataset)."""
    y = data.y
    return {"signal": data.signal, "n_train": int(len(data.train)), "n_test": int(len(data.test)), **held_out,
            "signal_min": float(y.min()), "signal_max": float(y.max()),
            "mae_pct_of_range": 100.0 * held_out["mae"] / float(y.max() - y.min()) if y.max() > y.min() else float("nan")}


def heldout_table(data: Data, pred: np.ndarray) -> pd.DataFrame:
    df = data.df.iloc[data.test]
    return pd.DataFrame({"key": df["key"].to_numpy(), "policy": policy_groups(data.df)[data.test],
                         "ratio": df["ratio"].to_numpy(), "true": data.y[data.test], "predicted": pred})


def verify(wb: Workbench, policy: Policy, ratio: float, signal: str = "js") -> dict[str, float]:
    """The TRUE ``signal`` of ``policy`` at ``ratio``: prune a copy of the model and measure it."""
    row = samples.evaluate(wb, samples.Sample.of(policy, ratio))
    return {"true": row[signal], "true_eval_ms": 1e3 * (row["plan_s"] + row["eval_s"])}


def speed(wb: Workbench, predictor: Any, data: Data, n: int, repeat: int = 50, batch_size: int = 256) -> dict[str, float]:
    """Predictor vs real evaluation of the same ``n`` held-out policies, in one process.

    Predictor: policy → plan → image → CNN (no weights touched), one at a time and in one batch of
    ``batch_size`` (plans made one by one, one forward over all images). Real: the same plan → prune a
    copy of the dense model → the signals on the held-out tokens (as in collection; the dense reference is
    computed once beforehand).
    """
    rows = data.df.iloc[data.test[np.linspace(0, len(data.test) - 1, min(n, len(data.test))).astype(int)]]
    chosen = [samples.Sample.from_row(r) for r in rows.itertuples(index=False)]
    pred_s = [timed(lambda s=s: predictor.predict(s.policy, s.ratio), repeat) for s in chosen]
    wb.reference  # noqa: B018  (the dense reference is computed once, outside the timings, as in collection)
    real = [samples.evaluate(wb, s) for s in chosen]
    true_ms = 1e3 * float(np.mean([r["plan_s"] + r["eval_s"] for r in real]))
    predictor_ms = 1e3 * float(np.mean(pred_s))
    stored = dict(zip(data.df["key"], data.y, strict=True))
    batch = [(s.policy, s.ratio) for s in chosen] * (-(-batch_size // len(chosen)))  # >= batch_size policies
    batch_ms = 1e3 * timed(lambda: predictor.predict_batch(batch), 3) / len(batch)
    return {"predictor_ms": predictor_ms, "true_eval_ms": true_ms, "speedup": true_ms / predictor_ms,
            "batch_policies": len(batch), "batch_ms_per_policy": batch_ms, "batch_speedup": true_ms / batch_ms,
            "batch_vs_single": predictor_ms / batch_ms,
            "speed_policies": len(chosen),
            "speed_signal_reproduced": float(max(abs(r[data.signal] - stored[r["key"]]) for r in real))}


def write_outputs(root: Path, net: PredictorNet, meta: dict[str, Any], table: pd.DataFrame,
                  history: list[float], held_out: dict[str, float]) -> dict[str, Path]:
    """models/predictor/predictor.safetensors, plots/predictor/{heldout.csv, scatter.png, loss.csv}."""
    root = Path(root)
    folder = root / "plots" / "predictor"
    paths = {"predictor": save_predictor(net, root / "models" / "predictor", meta),
             "heldout": write_text_atomic(folder / "heldout.csv", table.to_csv(index=False, float_format="%.6g")),
             "loss": write_text_atomic(folder / "loss.csv", pd.DataFrame(
                 {"epoch": np.arange(1, len(history) + 1), "train_mse": history}).to_csv(index=False, float_format="%.6g")),
             "scatter": write_bytes_atomic(folder / "scatter.png", plots.predictor_scatter(table, held_out, meta["model"],
                                                                                    meta.get("signal", "js")))}
    return paths


def register(params: Params, predictor_file: Path, data: Data, held_out: dict[str, float],
             tags: dict[str, str]) -> dict[str, Any]:
    """Register the predictor; ``champion`` moves if its held-out MAE beats the champion's on the
    same held-out samples (call inside an open MLflow run)."""
    def rescore(file: Path) -> float:
        net, meta = load_predictor(file)
        want = image_shape(data.planner.shape, meta.get("input", "o_proj"))
        if meta.get("model") != data.planner.model or tuple(meta.get("image_shape", ())) != want:
            raise Incomparable(f"was trained for {meta.get('model')} {tuple(meta.get('image_shape', ()))}; "
                               "it cannot score this model's masks")
        if meta.get("signal", "js") != data.signal:
            raise Incomparable(f"learned {meta.get('signal', 'js')}, not {data.signal}: their errors are not comparable")
        images = data.images if meta["input"] == data.kind else build_images(data.df, data.planner, meta["input"])
        return scores(data.y[data.test], predict(net, images[data.test]))["mae"]

    return promote("predictor", predictor_file, params.tracking.predictor_name, held_out["mae"], rescore,
                            "held-out MAE", tags)


def locate(ref: str | Path | None, root: Path, params: Params, scratch: str | Path) -> Path:
    """The predictor file for ``ref``: a path (default: the project's models/predictor), or
    ``registry:champion`` / ``registry:<version>``."""
    return locate_file(ref, Path(root) / "models" / "predictor", params.tracking.predictor_name,
                       "predictor.safetensors", root, scratch, "train_predictor")


def trained(root: Path, params: Params, dataset: str) -> dict[str, Any]:
    """Fit on the training rows of the dataset whose digest is ``dataset``; the weights, the loss curve
    and held-out predictions as plain values (the training task's result)."""
    data = prepare_data(Workbench(Path(root), params))
    if data.digest != dataset:
        raise RuntimeError("the mask dataset changed while the flow ran; rerun it")
    config = net_config(params, data.images.shape[1])
    net, history, pred, held_out = train_and_score(data, config, train_config(params))
    return {"state": net.state_dict(), "config": config.to_dict(), "history": history,
            "pred": pred.tolist(), "held_out": held_out}


def publish(root: Path, params: Params, wb: Workbench, data: Data, result: dict[str, Any]) -> dict[str, Any]:
    """The trained predictor's files (:func:`write_outputs`), metrics/predictor.json (held-out scores and
    the predictor-vs-real speed) and its MLflow run and registered version; returns the metrics."""
    pp = params.predictor
    net = network(result["config"], result["state"])
    held_out = result["held_out"]
    meta = {"model": data.planner.model, "input": pp.input, "signal": data.signal,
            "image_shape": list(image_shape(data.planner.shape, pp.input)), "dataset": data.digest,
            "pruning": params.pruning.model_dump(), "held_out": held_out, "holdout": pp.holdout,
            "test_fraction": pp.test_fraction, "seed": pp.seed}
    table = heldout_table(data, np.asarray(result["pred"], dtype=np.float32))
    paths = write_outputs(root, net.eval(), meta, table, result["history"], held_out)
    metrics = summary(data, held_out) | speed(wb, Predictor(net, meta, data.planner), data, pp.speed_samples)
    write_json_atomic(Path(root) / "metrics" / "predictor.json", metrics)
    with tracking.run(root, params.tracking.experiment, "train_predictor",
                      {"predictor": pp.model_dump(), "model": params.model.model_dump(), "dataset": data.digest},
                      tags={"stage": "train_predictor"}):
        for epoch, loss in enumerate(result["history"], 1):
            tracking.log_metrics({"train_mse": loss}, step=epoch)
        tracking.log_metrics(metrics)
        for key in ("scatter", "heldout", "loss"):
            tracking.log_artifact(paths[key], "plots")
        registry = register(params, paths["predictor"], data, held_out,
                            {"dataset": data.digest, "model": data.planner.model, "input": pp.input,
                             "signal": data.signal})
    return {**metrics, "registry": registry}
