"""Every figure ppf draws, as PNG bytes (matplotlib, Agg backend): the callers write them atomically.

- :func:`predictor_scatter` — held-out predicted vs true signal (the predictor's: NLL above dense by
  default), one colour per held-out policy;
- :func:`agent_rewards` — reward per episode (and best so far) of every agent mode;
- :func:`agent_validation` — valid perplexity of every contender across the validation ratios;
- :func:`benchmark_curves` — test perplexity / zero-shot / speed of every method vs actual ratio.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend
import pandas as pd


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


SIGNAL_LABELS = {"js": "JS (pruned vs dense)", "kl": "KL(dense || pruned)", "nll": "NLL above dense"}


def predictor_scatter(table: pd.DataFrame, held_out: dict[str, float], title: str, signal: str = "js") -> bytes:
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    for policy, g in table.groupby("policy"):
        ax.scatter(g["true"], g.predicted, s=14, label=policy)
    lo = float(min(table["true"].min(), table.predicted.min()))
    hi = float(max(table["true"].max(), table.predicted.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel(f"true {SIGNAL_LABELS[signal]}")
    ax.set_ylabel(f"predicted {SIGNAL_LABELS[signal]}")
    ax.set_title(f"{title}\nheld out: Spearman {held_out['spearman']:.3f}, MAE {held_out['mae']:.4f}", fontsize=9)
    ax.legend(fontsize=7, title="held-out policy", title_fontsize=7)
    return _png(fig)


def active_curve(curve: pd.DataFrame) -> bytes:
    """Per round: the predictor's error on its own proposals, and the best true PPR found so far."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.5), dpi=110)
    left.plot(curve["round"], curve.proposal_mae, "o-")
    left.set_ylabel("predictor MAE on its proposals (JS)")
    right.plot(curve["round"], curve.best_true_ppr, "s-", color="tab:red", label="mean over ratios")
    for col in [c for c in curve.columns if c.startswith("best_true_ppr_")]:
        right.plot(curve["round"], curve[col], ".--", lw=1, label=col.removeprefix("best_true_ppr_"))
    right.set_ylabel("best true PPR found so far")
    right.legend(fontsize=7, title="ratio", title_fontsize=7)
    for ax in (left, right):
        ax.set_xlabel("active-learning round")
        ax.set_xticks(list(curve["round"]))
    return _png(fig)


def agent_rewards(curves: pd.DataFrame) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for mode, g in curves.groupby("mode"):
        line, = ax.plot(g.episode, g.mean_reward, lw=1, alpha=0.6, label=f"{mode} (episode mean)")
        ax.plot(g.episode, g.best_reward, lw=1.5, color=line.get_color(), ls="--")
    ax.set_xlabel("episode")
    ax.set_ylabel("reward = -predicted JS / r_act  (dashed: best so far)")
    ax.legend(fontsize=7)
    return _png(fig)


def agent_validation(table: pd.DataFrame) -> bytes:
    dyn = table[table.setting == "dynamic"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for c, g in dyn.groupby("contender"):
        ax.plot(g.ratio, g.ppl_valid, marker="o", ms=3, label=c)
    ax.set_yscale("log")
    ax.set_xlabel("target block ratio")
    ax.set_ylabel("valid perplexity (true model)")
    ax.legend(fontsize=7)
    return _png(fig)


BENCHMARK_FIGURES = (("ppl", "ppl_test", "test perplexity", True),
                     ("zeroshot", "zs_mean", "mean zero-shot accuracy", False),
                     ("speed", "tokens_per_s", "generation tokens/s (batch 1)", False))


def benchmark_curves(df: pd.DataFrame) -> dict[str, bytes]:
    """{name: PNG} for every figure of :data:`BENCHMARK_FIGURES`: each method's curve vs actual ratio."""
    pruned = df[df.method != "dense"]
    dense = df[df.method == "dense"]
    out = {}
    for name, col, label, log in BENCHMARK_FIGURES:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        for m, g in pruned.groupby("method"):
            g = g.sort_values("actual_ratio")
            ax.plot(g.actual_ratio, g[col], marker="o", label=m, lw=2.5 if m == "ppf" else 1.2)
        if len(dense):
            ax.axhline(float(dense[col].iloc[0]), color="k", ls="--", lw=1, label="dense")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("actual block ratio")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
        out[name] = _png(fig)
    return out


def recovery_curves(curve: pd.DataFrame, dense: float | None = None) -> bytes:
    """Test perplexity vs recovery tokens, one panel per ratio, a line per method (valid where no test)."""
    col = "ppl_test" if "ppl_test" in curve.columns and curve.ppl_test.notna().all() else "ppl_valid"
    ratios = sorted(curve.target_ratio.unique())
    fig, axes = plt.subplots(1, len(ratios), figsize=(4.2 * len(ratios), 3.8), dpi=110, squeeze=False)
    for ax, r in zip(axes[0], ratios, strict=True):
        for m, g in curve[curve.target_ratio == r].groupby("method"):
            g = g.sort_values("tokens")
            ax.plot(g.tokens / 1000, g[col], marker="o", label=m, lw=2.5 if m == "ppf" else 1.2)
        if dense:
            ax.axhline(dense, color="k", ls="--", lw=1, label="dense")
        ax.set_yscale("log")
        ax.set_title(f"ratio {r:g}")
        ax.set_xlabel("recovery tokens (k)")
        ax.set_ylabel(f"{'test' if col == 'ppl_test' else 'valid'} perplexity")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)
