"""The `benchmark` recipe: PPF against re-run baselines on the same model, data and engine.

The methods are the registry :mod:`ppf.baselines` (dense, llm_pruner, owl, alpha, shortgpt,
blockpruner, ppf); each turns the dense model into a pruned one at a target block ratio (the
fraction of the attention and MLP blocks' parameters removed). Width methods hit the ratio exactly
(±``pruning.tolerance``); depth methods remove whole blocks, so their actual ratio is the nearest
they can reach (reported). :func:`evaluate` measures a model: test perplexity (and an extra corpus
if given), zero-shot accuracy (lm-eval, local tasks), parameters, batched-prefill and batch-1
generation tokens/s, and peak memory (weights + the prefill's peak on top of them).
:func:`summary`, :func:`table2` and :func:`markdown` turn the cells into the reports, and
:func:`publish` writes them (results/, plots/benchmark/, metrics/benchmark.json, the PPF-pruned
checkpoints) and tracks them in MLflow.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ppf import plots, tracking
from ppf.baselines import METHODS, check_methods, get
from ppf.checkpoint import save_pruned
from ppf.config import Params
from ppf.evaluate import speed, zero_shot
from ppf.io import digest, write_bytes_atomic, write_json_atomic, write_text_atomic
from ppf.metrics import js_divergence, perplexity_of, window_nll, windows
from ppf.policy import check_ratio
from ppf.data.tasks import task_meta
from ppf.stats import paired_accuracy_difference, paired_ppl_difference, ppl_interval
from ppf.workbench import Workbench


def configured(pruning: Any, method: str) -> str:
    """The compensation the config gives ``method``: ``pruning.compensation`` for width methods,
    ``pruning.removed_blocks`` for depth methods, none for the dense model."""
    kind = get(method).kind
    return pruning.compensation if kind == "width" else pruning.removed_blocks if kind == "depth" else "none"


def build(wb: Workbench, method: str, ratio: float, state: Any = None, compensation: str | None = None
          ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model ``method`` makes at ``ratio`` (a copy; embeddings shared) and {policy, actual_ratio,
    compensation, compensation_s}, compensated as configured (:func:`configured`) unless ``compensation``
    says otherwise (width: none | bias | lsq; depth: none | mean)."""
    m = get(method)
    if m.kind == "dense":
        model, info = m.build(wb, ratio, state)
        return model, info | {"compensation": "none", "compensation_s": 0.0}
    desc, plan = m.plan(wb, ratio, state)
    c = compensation or configured(wb.params.pruning, method)
    # a depth method's setting names its removed-block compensation; nothing of its plan is width-cut
    model = wb.pruned(plan, c, None) if m.kind == "width" else wb.pruned(plan, "none", c)
    comp = model.ppf_compensation
    label = comp.get("removed_blocks", "none") if m.kind == "depth" else comp["method"]
    return model, {"policy": desc, "actual_ratio": plan.block_ratio, "compensation": label,
                   "compensation_s": comp["seconds"] + comp.get("statistics_s", 0.0)}


def evaluate(wb: Workbench, model: torch.nn.Module, full: bool = True) -> dict[str, Any]:
    """Test perplexity (+ JS on test windows) and, with ``full``, zero-shot accuracy, parameters, speed
    and peak memory of ``model``."""
    with wb.forwards():
        return _evaluate(wb, model, full)


def _evaluate(wb: Workbench, model: torch.nn.Module, full: bool) -> dict[str, Any]:
    b, ev = wb.params.benchmark, wb.params.eval
    start = time.perf_counter()
    test = wb.split_tokens("test")
    nll = window_nll(model, test, ev.seqlen, ev.batch_size, b.max_windows)
    out: dict[str, Any] = {"ppl_test": perplexity_of(nll, ev.seqlen)}
    out["ppl_test_ci_lo"], out["ppl_test_ci_hi"] = ppl_interval(nll.numpy(), ev.seqlen - 1, b.bootstrap, wb.params.seed)
    js_tokens = windows(test, ev.seqlen, b.js_windows)
    out["js_test"] = 0.0 if model is wb.model else js_divergence(wb.model, model, js_tokens, ev.batch_size)
    if b.extra_corpus:
        out["ppl_extra"] = wb.perplexity(model, b.extra_corpus, b.max_windows)
    out["params"] = int(sum(p.numel() for p in model.parameters()))
    if not full:
        return out | {"eval_s": time.perf_counter() - start, "nll_windows": [float(x) for x in nll]}
    zs = zero_shot(model, wb.tokenizer, wb.root / "data" / "tasks", limit=b.zero_shot_limit, registry=wb.params.tasks.lm_eval,
                   batch_size=max(ev.batch_size, 8))
    out["zs_correct"] = {}  # per task, each example's 0/1: the paired comparisons (results/benchmark_examples.csv)
    for task, r in zs.items():
        out[f"zs_{task}"] = r["score"]  # the accuracy the task is read by (acc, or acc_norm for continuation)
        out[f"zs_{task}_stderr"] = r["score_stderr"]
        if task != "mean":
            out[f"zs_{task}_n"] = r["n"]
            out["zs_correct"][task] = r["correct"]
        if "perplexity" in r:
            out[f"zs_{task}_ppl"] = r["perplexity"]
    s = speed(model, wb.tokenizer, b.speed_seqlen, b.speed_batch, b.new_tokens)
    out |= {"tokens_per_s": s["generate_tok_s"],
            "prefill_tok_s": s["prefill_tok_s"], "weights_mb": s["weights_mb"], "peak_mem_mb": s["peak_mem_mb"],
            "eval_s": time.perf_counter() - start, "nll_windows": [float(x) for x in nll]}
    return out


def cell(wb: Workbench, method: str, ratio: float, state: Any = None, compensation: str | None = None) -> dict[str, Any]:
    """One benchmark row: the method's model at the ratio, built and measured (a cell without its
    configured compensation measures what ``benchmark.uncompensated`` says)."""
    model, info = build(wb, method, ratio, state, compensation)
    full = info["compensation"] == configured(wb.params.pruning, method) or wb.params.benchmark.uncompensated == "full"
    row = {"method": method, "target_ratio": ratio, **info, **evaluate(wb, model, full)}
    del model
    return row


def cells(methods: list[str], ratios: list[float], pruning: Any) -> list[tuple[str, float, str]]:
    """The (method, ratio, compensation) cells: dense once at 0, every other method at every ratio
    with its configured compensation (:func:`configured`) AND, if that is not ``none``, without (the
    paper-comparable setting)."""
    out = [("dense", 0.0, "none")] if "dense" in methods else []
    for m in methods:
        if m == "dense":
            continue
        c = configured(pruning, m)
        out += [(m, r, k) for k in ([c, "none"] if c != "none" else ["none"]) for r in ratios]
    return out


def prepare_ratio(ratios: list[float]) -> float:
    """How far a method's preparation (BlockPruner's greedy order) runs: a little past the largest ratio."""
    return max(ratios) + 0.02


def context_key(root: Path, params: Params) -> str:
    """What a cell depends on besides (method, ratio): model, data, engine, agent, settings."""
    root = Path(root)
    data = [root / "data" / d for d in ("corpus", "tasks", "calibration", "importance")]
    payload = {"model": params.model.model_dump(exclude={"device"}), "pruning": params.pruning.model_dump(),
               "eval": params.eval.model_dump(),
               # not the cell list (methods, ratios) nor registration: adding a ratio reuses the other cells
               "benchmark": params.benchmark.model_dump(exclude={"methods", "ratios", "register_models"}),
               "validation": params.agent.validation.model_dump(),
               "data": digest(*[d for d in data if d.exists()]),
               "agent": digest(root / "models" / "agent") if (root / "models" / "agent").exists() else "none"}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def run(root: Path, params: Params, methods: list[str], ratios: list[float], cache: Path,
        progress: Callable[[str], None] = lambda msg: None) -> pd.DataFrame:
    """Every (method, ratio) cell as a DataFrame; each finished cell (and each method's preparation)
    is cached as JSON under ``cache/<context key>/`` so that an interrupted run resumes (the `ppf
    benchmark` command; the pipeline's flow caches them as Prefect tasks instead)."""
    methods = check_methods(methods)
    ratios = [check_ratio(r) for r in ratios]
    folder = Path(cache) / context_key(root, params)
    wb = Workbench(root, params)
    states = {}
    for name in methods:
        if get(name).prepare is None:
            continue
        limit = prepare_ratio(ratios)
        path = folder / f"{name}-prepared-{limit:g}.json"
        if not path.is_file():
            progress(f"{name}: preparing (up to ratio {limit:g})")
            write_json_atomic(path, get(name).prepare(wb, limit))
        states[name] = json.loads(path.read_text())
    todo = cells(methods, ratios, params.pruning)
    rows = []
    for i, (m, r, c) in enumerate(todo, 1):
        path = folder / f"{m}@{r:g}-{c}.json"
        if not path.is_file():
            progress(f"[{i}/{len(todo)}] {m} at {r:g} ({c}): pruning and evaluating")
            write_json_atomic(path, cell(wb, m, r, states.get(m), c))
        else:
            progress(f"[{i}/{len(todo)}] {m} at {r:g}: cached")
        rows.append(json.loads(path.read_text()))
    return pd.DataFrame(rows)


def _correct(x: Any) -> dict[str, list[float]] | None:
    """A cell's per-example zero-shot results, None where zero-shot was not measured."""
    return x if isinstance(x, dict) and x else None


def compare(df: pd.DataFrame, ratios: list[float], params: Params) -> pd.DataFrame:
    """Every method vs PPF at each ratio, PAIRED on the same test windows: PPF's perplexity relative
    to the method's (ppl_ppf / ppl_method − 1, %, negative = PPF better) with a bootstrap 95 % interval;
    where both were scored zero-shot, PPF's mean accuracy minus the method's, paired on the same
    examples (points, positive = PPF better), with its interval."""
    rows = []
    tokens = params.eval.seqlen - 1
    for r in ratios:
        at = df[(df.target_ratio - r).abs() < 1e-9]
        ppf = at[at.method == "ppf"]
        if not len(ppf):
            continue
        for x in at[at.method != "ppf"].itertuples(index=False):
            d = paired_ppl_difference(ppf.iloc[0].nll_windows, x.nll_windows, tokens, params.benchmark.bootstrap, params.seed)
            row = {"target_ratio": r, "method": x.method, "compensation": x.compensation, "ppl": x.ppl_test,
                   "ppf_ppl": float(ppf.iloc[0].ppl_test),
                   "ppf_vs_pct": d["diff_pct"], "ppf_vs_ci_lo": d["ci_lo"], "ppf_vs_ci_hi": d["ci_hi"],
                   "ppf_wins": bool(d["ci_hi"] < 0), "ppf_loses": bool(d["ci_lo"] > 0)}
            mine, its = _correct(ppf.iloc[0].get("zs_correct")), _correct(getattr(x, "zs_correct", None))
            if mine and its:
                z = paired_accuracy_difference(mine, its, params.benchmark.bootstrap, params.seed)
                row |= {"zs": float(x.zs_mean), "ppf_zs": float(ppf.iloc[0].zs_mean), "ppf_vs_zs": z["diff"],
                        "ppf_vs_zs_ci_lo": z["ci_lo"], "ppf_vs_zs_ci_hi": z["ci_hi"],
                        "ppf_wins_zs": bool(z["ci_lo"] > 0), "ppf_loses_zs": bool(z["ci_hi"] < 0)}
            rows.append(row)
    return pd.DataFrame(rows)


def examples(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Every zero-shot example's 0/1 per cell: results/benchmark_examples.csv (what the paired accuracy
    intervals resample)."""
    return pd.DataFrame([{"method": r["method"], "compensation": r["compensation"], "target_ratio": r["target_ratio"],
                          "task": t, "example": i, "correct": v}
                         for r in rows for t, xs in (_correct(r.get("zs_correct")) or {}).items()
                         for i, v in enumerate(xs)],
                        columns=["method", "compensation", "target_ratio", "task", "example", "correct"])


def report(rows: list[dict[str, Any]], params: Params) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """(results table with the paired-interval columns, per-window NLLs, the PPF-vs-method comparisons,
    the summary) from the finished cells."""
    all_rows = pd.DataFrame(rows)
    all_rows["zs_mean"] = all_rows["zs_mean"].astype(float)
    df = as_configured(all_rows, params)
    comparisons = compare(df, params.benchmark.ratios, params).assign(setting="configured")
    if (all_rows.compensation != "none").any():  # the paper-comparable setting too: PPF without vs each method without
        plain = compare(all_rows[all_rows.compensation == "none"], params.benchmark.ratios, params).assign(setting="none")
        comparisons = pd.concat([comparisons, plain], ignore_index=True)
    nll = pd.DataFrame([{"method": r["method"], "compensation": r["compensation"], "target_ratio": r["target_ratio"],
                         "window": i, "nll": x}
                        for r in rows for i, x in enumerate(r["nll_windows"])])
    table = all_rows.drop(columns=["nll_windows", "zs_correct"], errors="ignore")
    if len(comparisons):
        cols = ["method", "target_ratio", "compensation", "ppf_vs_pct", "ppf_vs_ci_lo", "ppf_vs_ci_hi"]
        table = table.merge(comparisons[cols].drop_duplicates(["method", "target_ratio", "compensation"]),
                            on=["method", "target_ratio", "compensation"], how="left")
    mine = comparisons[comparisons.setting == "configured"] if len(comparisons) else comparisons
    return table, nll, comparisons, summary(df, params.benchmark.ratios, mine)


def as_configured(df: pd.DataFrame, params: Params) -> pd.DataFrame:
    """The rows of every method with its configured compensation (the models a user gets)."""
    return df[df.compensation == df.method.map(lambda m: configured(params.pruning, m))]


def summary(df: pd.DataFrame, ratios: list[float], comparisons: pd.DataFrame | None = None) -> dict[str, Any]:
    """Per ratio: PPF's perplexity / zero-shot and the best baseline's (by perplexity), with the paired
    interval of PPF vs that baseline; ``ppf_wins_ppl`` only where the interval excludes 0 in PPF's favour."""
    out: dict[str, Any] = {}
    dense = df[df.method == "dense"]
    if len(dense):
        out["dense"] = {"ppl_test": float(dense.ppl_test.iloc[0]), "zs_mean": float(dense.zs_mean.iloc[0])}
    for r in ratios:
        at = df[(df.target_ratio - r).abs() < 1e-9]
        base = at[at.method != "ppf"]
        entry: dict[str, Any] = {}
        if len(base):
            best = base.loc[base.ppl_test.idxmin()]
            entry |= {"best_baseline": best.method, "best_baseline_ppl": float(best.ppl_test),
                      "best_baseline_zs": float(best.zs_mean)}
        ppf = at[at.method == "ppf"]
        if len(ppf):
            p = ppf.iloc[0]
            entry |= {"ppf_ppl": float(p.ppl_test), "ppf_zs": float(p.zs_mean), "ppf_policy": p.policy,
                      "ppf_tokens_per_s": float(p.tokens_per_s), "ppf_peak_mem_mb": float(p.peak_mem_mb)}
            if len(base):
                entry["ppl_reduction_vs_best_pct"] = 100 * (1 - p.ppl_test / entry["best_baseline_ppl"])
                if comparisons is not None and len(comparisons):
                    c = comparisons[(comparisons.target_ratio - r).abs().lt(1e-9) & (comparisons.method == best.method)]
                    if len(c):
                        c = c.iloc[0]
                        entry |= {"ppf_vs_best_pct": float(c.ppf_vs_pct), "ppf_vs_best_ci_lo": float(c.ppf_vs_ci_lo),
                                  "ppf_vs_best_ci_hi": float(c.ppf_vs_ci_hi)}
                        if "ppf_vs_zs" in c and pd.notna(c.ppf_vs_zs):
                            entry |= {"ppf_vs_best_zs": float(c.ppf_vs_zs), "ppf_vs_best_zs_ci_lo": float(c.ppf_vs_zs_ci_lo),
                                      "ppf_vs_best_zs_ci_hi": float(c.ppf_vs_zs_ci_hi),
                                      "ppf_zs_verdict": "win" if c.ppf_wins_zs else "loss" if c.ppf_loses_zs else "tie"}
                entry["ppf_wins_ppl"] = bool(entry.get("ppf_vs_best_ci_hi", float("inf")) < 0)
        out[f"{r:g}"] = entry
    return out


def _zs(value: float) -> str:
    """A zero-shot cell: "–" where it was not measured (``benchmark.uncompensated: ppl``)."""
    return "–" if pd.isna(value) else f"{value:.3f}"


def table2(df: pd.DataFrame) -> str:
    """The results as the paper's Table 2: one row per method, per ratio its perplexity and zero-shot mean."""
    ratios = sorted(r for r in df.target_ratio.unique() if r > 0)
    head = "| method | " + " | ".join(f"{r:.0%} ppl ↓ | {r:.0%} zero-shot ↑" for r in ratios) + " |"
    lines = [head, "|---|" + "---|---|" * len(ratios)]
    dense = df[df.method == "dense"]
    if len(dense):
        d = dense.iloc[0]
        lines.append("| dense | " + " | ".join(f"{d.ppl_test:.2f} | {_zs(d.zs_mean)}" for _ in ratios) + " |")
    for method in [m for m in METHODS if m != "dense" and m in set(df.method)]:
        row_cells = []
        for r in ratios:
            row = df[(df.method == method) & np.isclose(df.target_ratio, r)]
            if len(row):
                x = row.iloc[0]
                best_ppl = df[np.isclose(df.target_ratio, r)].ppl_test.min()
                ppl = f"**{x.ppl_test:.2f}**" if x.ppl_test == best_ppl else f"{x.ppl_test:.2f}"
                row_cells.append(f"{ppl} | {_zs(x.zs_mean)}")
            else:
                row_cells.append("– | –")
        lines.append(f"| {method} | " + " | ".join(row_cells) + " |")
    return "\n".join(lines)


# the sensitivity check every task must pass to be read at all: dense against a model clearly broken on perplexity
SENSITIVITY_CELL = ("shortgpt", 0.4)
SENSITIVITY_RHO = 0.8  # issue 28's bar: a task whose accuracy ranks the pruned cells this well sees damage


def _task_correct(ex: pd.DataFrame, method: str, ratio: float, task: str, compensation: str | None = None) -> list[float]:
    sel = ex[(ex.method == method) & np.isclose(ex.target_ratio, ratio) & (ex.task == task)]
    if compensation is not None:
        sel = sel[sel.compensation == compensation]
    return sel.sort_values("example").correct.tolist()


def sees_damage(rho: float, separates: bool) -> str:
    """A task sees pruning damage when its accuracy tracks −test perplexity over the pruned cells
    (Spearman ≥ :data:`SENSITIVITY_RHO`) AND it tells dense from ShortGPT at 40 % (interval above 0);
    otherwise the markdown names it as failing and why."""
    why = []
    if math.isnan(rho) or rho < SENSITIVITY_RHO:
        why.append("too few scored cells" if math.isnan(rho) else f"Spearman {rho:.2f} < {SENSITIVITY_RHO:g}")
    if not separates:
        why.append(f"dense vs {SENSITIVITY_CELL[0]}@{SENSITIVITY_CELL[1]:g} within noise")
    return "**no**: " + "; ".join(why) if why else "yes"


def tasks_section(df: pd.DataFrame, ex: pd.DataFrame, tasks_dir: Path, params: Params) -> list[str]:
    """Per task: its examples, dense's score ± standard error, chance and how far above it dense is;
    how well it tracks the damage (Spearman of the score with −test perplexity over every scored pruned
    cell); dense vs ShortGPT at 40 % paired on the same examples (a task that cannot tell those apart
    cannot see pruning damage)."""
    tasks = sorted(ex.task.unique()) if len(ex) else []
    dense = df[df.method == "dense"]
    if not tasks or not len(dense):
        return []
    d = dense.iloc[0]
    scored = df[(df.method != "dense") & df.zs_mean.notna()]
    m, r = SENSITIVITY_CELL
    lines = ["Zero-shot tasks: the accuracy each is read by, dense against chance, and whether it sees damage: "
             "Spearman of the task's accuracy with −test perplexity over every scored pruned cell "
             f"(n = {len(scored)}), and dense − {m} at {r:.0%} paired on the same examples (bootstrap 95 % interval).", "",
             "| task | metric | examples | dense | ± s.e. | chance | dense above chance | Spearman vs −ppl | "
             f"dense − {m}@{r:g} | 95 % interval | sees damage |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in tasks:
        meta = task_meta(tasks_dir, t) if (Path(tasks_dir) / f"{t}.yaml").is_file() else {"metric": "acc", "chance": float("nan")}
        score, se = float(d.get(f"zs_{t}", float("nan"))), float(d.get(f"zs_{t}_stderr", float("nan")))
        rho = scored[f"zs_{t}"].corr(-scored.ppl_test, method="spearman") if len(scored) > 2 else float("nan")
        a, b = _task_correct(ex, "dense", 0.0, t), _task_correct(ex, m, r, t, configured(params.pruning, m))
        if len(a) == len(b) >= 2:
            z = paired_accuracy_difference({t: a}, {t: b}, params.benchmark.bootstrap, params.seed)
            diff, ci = f"{z['diff']:+.3f}", f"[{z['ci_lo']:+.3f}, {z['ci_hi']:+.3f}]" + (" ✓" if z["ci_lo"] > 0 else "")
            separates = z["ci_lo"] > 0
        else:
            diff, ci, separates = "–", "–", False
        above = score - meta["chance"]
        above_txt = f"{above:+.3f}" + (f" ({above / se:.0f} s.e.)" if se > 0 else "")
        lines.append(f"| {t} | {meta['metric']} | {len(a)} | {score:.3f} | {se:.3f} | {meta['chance']:.3f} | "
                     f"{above_txt} | {rho:.2f} | {diff} | {ci} | {sees_damage(rho, separates)} |")
    return lines + [""]


def markdown(df: pd.DataFrame, summary: dict[str, Any], params: Params, comparisons: pd.DataFrame | None = None,
             ex: pd.DataFrame | None = None, tasks_dir: Path | None = None) -> str:
    """results/benchmark.md: Table 2, the zero-shot tasks (chance, sensitivity), PPF vs every method
    (paired intervals on perplexity and on accuracy), and every cell."""
    lines = [f"# Benchmark: {params.model.name}", "",
             f"Test perplexity (seqlen {params.eval.seqlen}, {params.benchmark.max_windows} windows) and mean "
             f"zero-shot accuracy ({params.benchmark.zero_shot_limit} examples per task); target = actual block "
             "reduction for width methods, nearest reachable for depth methods (see results/benchmark.csv). "
             f"Bold: the lowest perplexity at that ratio. Width methods with pruning.compensation = "
             f"{params.pruning.compensation}, depth methods with pruning.removed_blocks = {params.pruning.removed_blocks}.",
             "", table2(as_configured(df, params)), "",
             *(tasks_section(df, ex, tasks_dir, params) if ex is not None and tasks_dir is not None else []),
             *((["Without compensation (the paper-comparable setting):", "",
                 table2(df[(df.compensation == "none")]), ""]) if (df.compensation != "none").any() else []),
             "PPF vs each method, PAIRED on the same test windows: ppl_PPF / ppl_method − 1 with its bootstrap 95 % "
             f"interval ({params.benchmark.bootstrap} draws). **win** / **loss** only where the interval excludes 0; "
             "otherwise the difference is within the noise of this many windows.", "",
             "Setting `configured`: every method with its configured compensation (PPF too); `none`: all without.", "",
             "Zero-shot: PPF's mean accuracy − the method's, paired on the same examples of every task (points, "
             "+ = PPF better), where both were scored.", "",
             "| setting | ratio | method | its ppl | PPF ppl | PPF vs it | 95 % interval | verdict | its zero-shot | "
             "PPF zero-shot | PPF − it | 95 % interval | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in (comparisons.itertuples(index=False) if comparisons is not None else ()):
        verdict = "**win**" if c.ppf_wins else "**loss**" if c.ppf_loses else "tie (interval includes 0)"
        zs = "| – | – | – | – | – |"
        if pd.notna(getattr(c, "ppf_vs_zs", float("nan"))):
            zv = "**win**" if c.ppf_wins_zs else "**loss**" if c.ppf_loses_zs else "tie"
            zs = (f"| {c.zs:.3f} | {c.ppf_zs:.3f} | {c.ppf_vs_zs:+.3f} | [{c.ppf_vs_zs_ci_lo:+.3f}, "
                  f"{c.ppf_vs_zs_ci_hi:+.3f}] | {zv} |")
        lines.append(f"| {getattr(c, 'setting', 'configured')} | {c.target_ratio:g} | {c.method} | {c.ppl:.2f} | "
                     f"{c.ppf_ppl:.2f} | {c.ppf_vs_pct:+.1f} % | [{c.ppf_vs_ci_lo:+.1f}, {c.ppf_vs_ci_hi:+.1f}] % | "
                     f"{verdict} {zs}")
    lines += ["", "PPF vs the best baseline at each ratio (configured), as a perplexity REDUCTION: 1 − ppl_PPF / ppl_best "
              "(+ = PPF lower; the paired table above has the opposite sign).", "",
              "| ratio | PPF policy | PPF ppl | best baseline | its ppl | PPF's reduction vs best |", "|---|---|---|---|---|---|"]
    for r, e in summary.items():
        if r == "dense" or "ppf_ppl" not in e:
            continue
        lines.append(f"| {r} | {e['ppf_policy']} | {e['ppf_ppl']:.2f} | {e.get('best_baseline', '–')} | "
                     f"{e.get('best_baseline_ppl', float('nan')):.2f} | "
                     f"{e.get('ppl_reduction_vs_best_pct', float('nan')):+.1f} % |")
    cols = ["method", "compensation", "target_ratio", "actual_ratio", "ppl_test", "ppl_test_ci_lo", "ppl_test_ci_hi", "js_test",
            "zs_mean", "zs_mean_stderr", "tokens_per_s", "prefill_tok_s", "peak_mem_mb", "params"]
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df[cols].itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


# ---- the stage's files ----------------------------------------------------------------------------
def publish(root: Path, params: Params, wb: Workbench, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The finished cells as results/benchmark.{csv,md}, results/benchmark_{windows,examples}.csv,
    plots/benchmark/*, metrics/benchmark.json and (with ``ppf`` among the methods)
    models/unrecovered/ppf-<ratio>/; MLflow: a parent run with a nested run per cell. Returns the summary
    with where PPF's models were saved (``saved``; the `recover` stage recovers and registers them)."""
    root = Path(root)
    b = params.benchmark
    df, nll, comparisons, summary_ = report(rows, params)
    write_text_atomic(root / "results" / "benchmark.csv", df.to_csv(index=False, float_format="%.6g"))
    write_text_atomic(root / "results" / "benchmark_windows.csv", nll.to_csv(index=False, float_format="%.9g"))
    ex = examples(rows)
    write_text_atomic(root / "results" / "benchmark_examples.csv", ex.to_csv(index=False))
    write_text_atomic(root / "results" / "benchmark.md", markdown(df, summary_, params, comparisons, ex, root / "data" / "tasks"))
    for name, png in plots.benchmark_curves(as_configured(df, params)).items():
        write_bytes_atomic(root / "plots" / "benchmark" / f"{name}.png", png)
    pruned = as_configured(df, params).query("method != 'dense'")
    write_text_atomic(root / "plots" / "benchmark" / "by_ratio.csv",
                      pruned[["method", "actual_ratio", "ppl_test", "zs_mean", "tokens_per_s", "peak_mem_mb"]]
                      .to_csv(index=False, float_format="%.6g"))
    write_json_atomic(root / "metrics" / "benchmark.json", summary_)
    saved = {r: save_ppf(root, params, wb, r, _ppf_ppl(df, params, r)) for r in b.ratios} if "ppf" in b.methods else {}
    _track(root, params, df, summary_)
    return {**summary_, "saved": {f"{r:g}": str(p) for r, p in saved.items()}}


def _ppf_ppl(df: pd.DataFrame, params: Params, ratio: float) -> dict[str, Any] | None:
    """PPF's measured test perplexity at ``ratio`` (configured compensation) with its interval, for the model card."""
    rows = as_configured(df, params).query("method == 'ppf' and target_ratio == @ratio")
    if rows.empty:
        return None
    r = rows.iloc[0]
    return {"split": "test", "value": float(r.ppl_test), "ci_lo": float(r.ppl_test_ci_lo), "ci_hi": float(r.ppl_test_ci_hi),
            "windows": params.benchmark.max_windows or "all", "seqlen": params.eval.seqlen}


def save_ppf(root: Path, params: Params, wb: Workbench, ratio: float, perplexity: dict[str, Any] | None = None) -> Path:
    """Write models/unrecovered/ppf-<ratio>, PPF's model as pruned (rebuilt: cheap, and a cached cell never
    returns files); the `recover` stage delivers it recovered as models/pruned/ppf-<ratio>."""
    model, info = build(wb, "ppf", ratio)
    out = Path(root) / "models" / "unrecovered" / f"ppf-{ratio:g}"
    extra = {"policy": info["policy"], "target": ratio, "compensation": info["compensation"]}
    if perplexity:
        extra["perplexity"] = perplexity
    save_pruned(model, wb.tokenizer, out, base=params.model.name, extra=extra)
    return out


def _track(root: Path, params: Params, df: pd.DataFrame, summary_: dict) -> None:
    """MLflow: parent run + nested run per cell (the `recover` stage registers PPF's delivered models)."""
    with tracking.run(root, params.tracking.experiment, "benchmark",
                      {"benchmark": params.benchmark.model_dump(), "model": params.model.model_dump()},
                      tags={"stage": "benchmark"}):
        tracking.log_dict(summary_, "summary.json")
        for f in ("results/benchmark.csv", "results/benchmark.md", "plots/benchmark/ppl.png",
                  "plots/benchmark/zeroshot.png", "plots/benchmark/speed.png"):
            tracking.log_artifact(root / f, "results")
        for row in df.to_dict("records"):
            with tracking.run(root, params.tracking.experiment, f"{row['method']}@{row['target_ratio']:g}-{row['compensation']}",
                              {"method": row["method"], "target_ratio": row["target_ratio"], "policy": row["policy"],
                               "compensation": row["compensation"]},
                              nested=True):
                tracking.log_metrics({k: v for k, v in row.items() if k not in ("method", "policy", "compensation")})
