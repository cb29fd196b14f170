"""The `recover` recipe (``ppf recover CKPT --out DIR``): a pruned checkpoint distilled from its dense
base model on the train split, measured, and saved as a new checkpoint with its model card.

Inputs are checked before anything is loaded or written: the checkpoint must be a ppf checkpoint
pruned from the project's model (the teacher), ``--out`` new or a ppf checkpoint. The teacher's
targets are cached under ``cache/recover/`` (keyed by teacher, windows, temperature and k), so
every model recovered with the same params reads them once; the resumable state lives beside the
output (``DIR.recover-state/``) until the run completes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ppf import plots, tracking
from ppf.checkpoint import is_checkpoint, load_pruned, save_pruned
from ppf.checkpoint.layout import META, _read_json
from ppf.config import Params, RecoverParams
from ppf.errors import PPFError
from ppf.io import atomic_dir, digest, write_bytes_atomic, write_json_atomic, write_text_atomic
from ppf.metrics import perplexity_of, window_nll, windows
from ppf.recipes import benchmark as B
from ppf.recover import TeacherTargets, distill, train_windows
from ppf.serving import PRUNED
from ppf.stats import paired_ppl_difference, ppl_interval
from ppf.workbench import Workbench

CACHE = Path("cache") / "recover"


def state_dir(out: Path) -> Path:
    """Where a run's resumable state is kept until it completes."""
    return out.with_name(out.name + ".recover-state")


def check(wb: Workbench, checkpoint: Path, out: Path) -> dict[str, Any]:
    """The checkpoint's ppf.json, once it is known to be a ppf checkpoint of the teacher; else one error."""
    if not is_checkpoint(checkpoint):
        raise PPFError(f"'{checkpoint}' is not a ppf checkpoint (no ppf_layers.json); pass a directory written by "
                       "`ppf prune --out` or the benchmark (models/pruned/ppf-<ratio>)")
    meta = _read_json(Path(checkpoint) / META, "the checkpoint's ppf.json")
    base = meta.get("base") if isinstance(meta, dict) else None
    if base != wb.params.model.name:
        raise PPFError(f"'{checkpoint}' was pruned from '{base}', but the teacher (model.name in params.yaml) is "
                       f"'{wb.params.model.name}'; recover it in the project of its base model or set model.name: {base}")
    if Path(out).resolve() == Path(checkpoint).resolve():
        raise PPFError(f"--out '{out}' is the checkpoint itself; write the recovered model to a new directory")
    if out.exists() and not is_checkpoint(out) and (not out.is_dir() or any(out.iterdir())):
        raise PPFError(f"--out '{out}' exists and is not a ppf checkpoint; choose a new directory")
    return meta


def test_perplexity(wb: Workbench, model: torch.nn.Module) -> dict[str, Any]:
    """Test perplexity on the benchmark's windows with its bootstrap interval (reported, never used to decide)."""
    b, ev = wb.params.benchmark, wb.params.eval
    with wb.forwards():
        nll = window_nll(model, wb.split_tokens("test"), ev.seqlen, ev.batch_size, b.max_windows)
    lo, hi = ppl_interval(nll.tolist(), ev.seqlen - 1, b.bootstrap, wb.params.seed)
    return {"split": "test", "value": perplexity_of(nll, ev.seqlen), "ci_lo": lo, "ci_hi": hi,
            "windows": len(nll), "seqlen": ev.seqlen, "nll_windows": [float(x) for x in nll]}


def recover(wb: Workbench, checkpoint: Path, out: Path | None, rp: RecoverParams | None = None,
            on_step: Callable[[dict[str, Any]], None] | None = None,
            progress: Callable[[str], None] = lambda msg: None, measure: bool = True,
            curve: bool = False) -> dict[str, Any]:
    """`ppf recover`: distil ``checkpoint`` from the project's dense model; save to ``out`` if given.

    Returns the report: the recovery record (curve of valid perplexity, losses, best step, tokens,
    seconds, tokens/s), test perplexity before and after (``measure``), where it was saved.
    ``curve``: the test perplexity is also measured at every valid check (``ppl_test`` in each curve
    point; for the benchmark's recovery curve; the best step is still chosen on valid only)."""
    rp = rp or wb.params.recover
    checkpoint = Path(checkpoint)
    meta = check(wb, checkpoint, out if out is not None else checkpoint.with_name(checkpoint.name + ".recovered"))
    t = time.perf_counter()
    progress(f"loading {checkpoint}")
    student, tokenizer = load_pruned(checkpoint, wb.params.model.device)
    dtype = next(student.parameters()).dtype
    student = student.float()  # trained in float32 (bf16 autocast inside); saved in the checkpoint's dtype
    before = test_perplexity(wb, student) if measure else None
    progress("the teacher's targets (computed once per teacher, windows, temperature and k)")
    train = train_windows(wb.split_tokens("train"), rp)
    t_teacher = time.perf_counter()
    with wb.forwards():
        targets, cached = TeacherTargets.cached(wb.model, wb.params.model.name, train, rp, wb.root / CACHE)
    teacher_s = time.perf_counter() - t_teacher
    valid = windows(wb.split_tokens("valid"), wb.params.eval.seqlen, rp.valid_windows)
    progress("distilling")
    sid = digest(checkpoint / "model.safetensors")  # a state resumes only its own student (by content)
    state = state_dir(out) if out is not None else None
    probe = (lambda m: {"ppl_test": test_perplexity(wb, m)["value"]}) if curve else None
    model, rec = distill(student, targets, train, valid, rp, state, sid, on_step, probe)
    after = test_perplexity(wb, model) if measure else None
    rec |= {"lr": rp.lr, "temperature": rp.temperature, "seed": rp.seed, "budget_tokens": rp.tokens,
            "teacher_s": teacher_s, "teacher_cached": cached,
            "tok_s": rec["tokens"] / max(1e-9, rec["seconds"])}
    saved = None
    if out is not None:
        progress(f"saving to {out}")
        extra = dict(meta.get("extra") or {})
        extra["recovery"] = {k: rec[k] for k in ("tokens", "trained", "lr", "temperature", "seed", "best_step",
                                                 "steps_run", "stopped", "best_ppl_valid", "budget_tokens")}
        extra["recovered_from"] = str(checkpoint)
        for key, ppl in (("perplexity", after), ("perplexity_before", before)):
            if ppl is not None:
                extra[key] = {k: v for k, v in ppl.items() if k != "nll_windows"}
        saved = save_pruned(model.to(dtype), tokenizer, out,  # type: ignore[arg-type]
                            base=meta["base"], extra=extra)
        assert state is not None
        shutil.rmtree(state, ignore_errors=True)  # only now: a run killed while saving resumes from its last state
    return {"checkpoint": str(checkpoint), "out": str(saved) if saved else None, "recovery": rec,
            "ppl_before": before, "ppl_after": after, "seconds": time.perf_counter() - t}


# ---- the `recover` stage: PPF and the best baselines recovered with the same budget and seed --------
UNRECOVERED = Path("models") / "unrecovered"   # the benchmark's PPF checkpoints, as pruned
DELIVERED = Path("models") / "pruned"          # PPF's delivered checkpoints: the recovered ones


def stage_cells(root: Path, params: Params) -> list[tuple[str, float]]:
    """(method, ratio) the stage recovers: PPF and ``recover.baselines`` at every benchmark ratio, where
    ``best`` is the lowest configured baseline of results/benchmark.csv there (a named baseline the
    benchmark did not run, ``benchmark.methods``, is left out: the recovered setting extends the benchmark)."""
    csv = Path(root) / "results" / "benchmark.csv"
    if not csv.exists():
        raise PPFError(f"{csv} is missing: the recover stage follows the benchmark; run `dvc repro benchmark` first")
    named = [b for b in B.check_methods([b for b in params.recover.baselines if b != "best"])
             if b in params.benchmark.methods]
    conf = B.as_configured(pd.read_csv(csv), params)
    cells = []
    for r in params.benchmark.ratios:
        at = conf[((conf.target_ratio - r).abs() < 1e-9) & ~conf.method.isin(["ppf", "dense"])]
        best = [str(at.sort_values("ppl_test").method.iloc[0])] if "best" in params.recover.baselines and len(at) else []
        for m in dict.fromkeys(["ppf", *best, *named]):
            cells.append((m, r))
    return cells


def _input(root: Path, wb: Workbench, method: str, ratio: float, key: str) -> Path:
    """The checkpoint to recover: the benchmark's PPF model, or the baseline rebuilt (and kept in the cache)."""
    if method == "ppf":
        src = Path(root) / UNRECOVERED / f"ppf-{ratio:g}"
        if not is_checkpoint(src):
            raise PPFError(f"{src} is missing: the benchmark stage writes it; run `dvc repro benchmark` first")
        return src
    src = Path(root) / CACHE / "inputs" / f"{method}-{ratio:g}-{key}"
    if not is_checkpoint(src):
        model, info = B.build(wb, method, ratio)
        save_pruned(model, wb.tokenizer, src, base=wb.params.model.name,  # type: ignore[arg-type]
                    extra={"policy": info["policy"], "target": ratio, "compensation": info["compensation"]})
    return src


def cell_key(root: Path, params: Params, method: str, ratio: float, context: str) -> str:
    """What a recovered cell depends on: the pruned model (benchmark context + PPF's policy), the recovery
    params, the windows it is measured on."""
    src = Path(root) / UNRECOVERED / f"ppf-{ratio:g}" / META
    policy = _read_json(src, "the checkpoint's ppf.json").get("policy") if method == "ppf" and src.exists() else None
    payload = {"context": context, "method": method, "ratio": ratio, "policy": policy,
               "recover": params.recover.model_dump(exclude={"baselines"}), "eval": params.eval.model_dump(),
               "windows": params.benchmark.max_windows, "bootstrap": params.benchmark.bootstrap}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cell_row(method: str, ratio: float, policy: str | None, rep: dict[str, Any]) -> dict[str, Any]:
    """One recovered cell as the stage's tables read it: :func:`recover`'s report flattened, with the curve
    and the per-window test NLL before and after."""
    rec, before, after = rep["recovery"], rep["ppl_before"], rep["ppl_after"]
    return {"method": method, "target_ratio": ratio, "policy": policy, "out": rep["out"],
            "ppl_before": before["value"], "ppl_before_ci_lo": before["ci_lo"], "ppl_before_ci_hi": before["ci_hi"],
            "ppl_after": after["value"], "ppl_after_ci_lo": after["ci_lo"], "ppl_after_ci_hi": after["ci_hi"],
            "tokens": rec["tokens"], "budget_tokens": rec["budget_tokens"], "best_step": rec["best_step"],
            "stopped": rec["stopped"], "best_ppl_valid": rec["best_ppl_valid"], "tok_s": rec["tok_s"],
            "train_s": rec["seconds"], "teacher_s": rec["teacher_s"], "seconds": rep["seconds"],
            "trained": rec["trained"], "trainable_params": rec["trainable_params"],
            "curve": rec["curve"], "nll_before": before["nll_windows"], "nll_after": after["nll_windows"]}


def stage_cell(root: Path, wb: Workbench, method: str, ratio: float, context: str,
               progress: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """One recovered cell: recovered into the cache (resumable; a finished cell is read back, not rerun),
    its record with the curve and the per-window test NLL before and after."""
    key = cell_key(root, wb.params, method, ratio, context)
    out = Path(root) / CACHE / "models" / f"{method}-{ratio:g}-{key}"
    done = out.with_name(out.name + ".json")
    if done.exists() and is_checkpoint(out):
        return json.loads(done.read_text())
    src = _input(root, wb, method, ratio, context)
    rep = recover(wb, src, out, progress=progress, curve=wb.params.recover.curve)
    meta = _read_json(src / META, "the checkpoint's ppf.json")
    row = cell_row(method, ratio, (meta.get("extra") or {}).get("policy"), rep)
    write_json_atomic(done, row)
    return row


def _spearman(a: list[float], b: list[float]) -> float | None:
    return float(pd.Series(a).rank().corr(pd.Series(b).rank())) if len(a) >= 3 else None


def compare(rows: list[dict[str, Any]], params: Params) -> pd.DataFrame:
    """Recovered PPF vs every recovered baseline at each ratio, PAIRED on the same test windows (as the
    benchmark does), and each recovered model vs itself before recovery."""
    out, tokens = [], params.eval.seqlen - 1
    b = params.benchmark
    for r in sorted({x["target_ratio"] for x in rows}):
        at = [x for x in rows if x["target_ratio"] == r]
        ppf = next((x for x in at if x["method"] == "ppf"), None)
        for x in at:
            d = paired_ppl_difference(x["nll_after"], x["nll_before"], tokens, b.bootstrap, params.seed)
            out.append({"target_ratio": r, "method": x["method"], "versus": "itself unrecovered", "ppl": x["ppl_after"],
                        "versus_ppl": x["ppl_before"], "pct": d["diff_pct"], "ci_lo": d["ci_lo"], "ci_hi": d["ci_hi"]})
            if ppf is not None and x is not ppf:
                d = paired_ppl_difference(ppf["nll_after"], x["nll_after"], tokens, b.bootstrap, params.seed)
                out.append({"target_ratio": r, "method": "ppf", "versus": f"{x['method']} recovered", "ppl": ppf["ppl_after"],
                            "versus_ppl": x["ppl_after"], "pct": d["diff_pct"], "ci_lo": d["ci_lo"], "ci_hi": d["ci_hi"]})
    return pd.DataFrame(out)


def ranking(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Does recovery keep the methods' order? Spearman between perplexity before and after, per ratio (with
    >= 3 methods) and over every recovered cell; per ratio, whether the best method stays the best."""
    per = {}
    for r in sorted({x["target_ratio"] for x in rows}):
        at = [x for x in rows if x["target_ratio"] == r]
        first = [min(at, key=lambda x: x[k])["method"] for k in ("ppl_before", "ppl_after")]
        per[f"{r:g}"] = {"spearman": _spearman([x["ppl_before"] for x in at], [x["ppl_after"] for x in at]),
                         "best_before": first[0], "best_after": first[1], "kept": first[0] == first[1]}
    return {"per_ratio": per, "spearman_all": _spearman([x["ppl_before"] for x in rows], [x["ppl_after"] for x in rows])}


def _verdict(lo: float, hi: float) -> str:
    return "**win**" if hi < 0 else "**loss**" if lo > 0 else "tie (interval includes 0)"


def markdown(rows: list[dict[str, Any]], comp: pd.DataFrame, rank: dict[str, Any], dense: float | None,
             params: Params) -> str:
    rp, b = params.recover, params.benchmark
    lines = [f"# Recovery: {params.model.name}", "",
             f"Each model distilled from the dense one on the train split with the same budget and seed: "
             f"{rp.tokens:,} tokens ({rp.train}, lr {rp.lr:g}, {rp.batch_size}x{rp.accumulation}x{rp.seqlen} tokens a step, "
             f"KL x{rp.kl_weight:g} at T={rp.temperature:g} + LM x{rp.lm_weight:g}, seed {rp.seed}); the best of the "
             f"valid checks ({rp.valid_windows} valid windows) is kept. Test perplexity on {b.max_windows or 'all'} "
             f"test windows of {params.eval.seqlen} with its bootstrap 95 % interval.", "",
             "| ratio | method | before | after | 95 % interval | x dense | tokens | best step | tokens/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for x in sorted(rows, key=lambda x: (x["target_ratio"], x["method"] != "ppf", x["method"])):
        xd = f"{x['ppl_after'] / dense:.2f}x" if dense else "–"
        lines.append(f"| {x['target_ratio']:g} | {x['method']} | {x['ppl_before']:.2f} | {x['ppl_after']:.2f} | "
                     f"[{x['ppl_after_ci_lo']:.2f}, {x['ppl_after_ci_hi']:.2f}] | {xd} | {x['tokens']:,} | "
                     f"{x['best_step']} ({x['stopped']}) | {x['tok_s']:,.0f} |")
    lines += ["", "PAIRED on the same test windows: ppl / its ppl − 1 with its bootstrap 95 % interval; **win** / "
              "**loss** only where the interval excludes 0.", "",
              "| ratio | method | versus | its ppl | ppl | difference | 95 % interval | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    for c in comp.itertuples(index=False):
        lines.append(f"| {c.target_ratio:g} | {c.method} | {c.versus} | {c.versus_ppl:.2f} | {c.ppl:.2f} | {c.pct:+.1f} % | "
                     f"[{c.ci_lo:+.1f}, {c.ci_hi:+.1f}] % | {_verdict(c.ci_lo, c.ci_hi)} |")
    lines += ["", "Does recovery keep the ranking? (if not, the predictor and the agent optimise the unrecovered "
              "perplexity, not the delivered one)", ""]
    for r, e in rank["per_ratio"].items():
        rho = "–" if e["spearman"] is None else f"{e['spearman']:.2f}"
        lines.append(f"- {r}: best before {e['best_before']}, after {e['best_after']} "
                     f"({'kept' if e['kept'] else 'CHANGED'}); Spearman before/after {rho}")
    if rank["spearman_all"] is not None:
        lines.append(f"- every recovered cell: Spearman before/after {rank['spearman_all']:.2f}")
    return "\n".join(lines) + "\n"


def curve_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([{"method": x["method"], "target_ratio": x["target_ratio"], **p}
                         for x in rows for p in x["curve"]])


def publish(root: Path, params: Params, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Write results/recover.{csv,md}, plots/recover/, metrics/recover.json, PPF's delivered checkpoints
    (models/pruned/ppf-<ratio>, the recovered ones) and the MLflow runs; register the delivered models."""
    root = Path(root)
    bench = pd.read_csv(root / "results" / "benchmark.csv")
    dense_rows = bench[bench.method == "dense"]
    dense = float(dense_rows.ppl_test.iloc[0]) if len(dense_rows) else None
    comp, rank = compare(rows, params), ranking(rows)
    flat = pd.DataFrame([{k: v for k, v in x.items() if k not in ("curve", "nll_before", "nll_after")} for x in rows])
    write_text_atomic(root / "results" / "recover.csv", flat.to_csv(index=False, float_format="%.6g"))
    write_text_atomic(root / "results" / "recover.md", markdown(rows, comp, rank, dense, params))
    curve = curve_frame(rows)
    write_text_atomic(root / "plots" / "recover" / "curve.csv", curve.to_csv(index=False, float_format="%.6g"))
    write_bytes_atomic(root / "plots" / "recover" / "curve.png", plots.recovery_curves(curve, dense))
    metrics: dict[str, Any] = {"ranking": rank}
    for x in rows:
        e = metrics.setdefault(f"{x['target_ratio']:g}", {})
        e[x["method"]] = {"ppl_before": x["ppl_before"], "ppl_after": x["ppl_after"], "tokens": x["tokens"],
                          "tok_s": x["tok_s"], "seconds": x["seconds"]}
        if dense and x["method"] == "ppf":
            e["ppf_x_dense"] = x["ppl_after"] / dense
    for c in comp[comp.method == "ppf"].itertuples(index=False):
        if c.versus.endswith(" recovered"):
            e = metrics[f"{c.target_ratio:g}"]
            e[f"ppf_vs_{c.versus.split()[0]}"] = {"pct": c.pct, "ci_lo": c.ci_lo, "ci_hi": c.ci_hi}
    write_json_atomic(root / "metrics" / "recover.json", metrics)
    delivered = {}
    for x in rows:
        if x["method"] == "ppf":
            dst = root / DELIVERED / f"ppf-{x['target_ratio']:g}"
            with atomic_dir(dst) as tmp:
                shutil.copytree(x["out"], tmp, dirs_exist_ok=True)
            delivered[x["target_ratio"]] = dst
    return {**metrics, "registered": _track(root, params, rows, delivered)}


def _track(root: Path, params: Params, rows: list[dict[str, Any]], delivered: dict[float, Path]) -> dict[str, str]:
    """MLflow: a parent run, a nested run per cell with its curve (step = tokens); the delivered PPF models
    registered as ``ppf-pruned-<ratio>`` (the recovered ones)."""
    registered = {}
    with tracking.run(root, params.tracking.experiment, "recover", {"recover": params.recover.model_dump()},
                      tags={"stage": "recover"}):
        for f in ("results/recover.csv", "results/recover.md", "plots/recover/curve.png"):
            tracking.log_artifact(root / f, "results")
        for x in rows:
            with tracking.run(root, params.tracking.experiment, f"recover {x['method']}@{x['target_ratio']:g}",
                              {"method": x["method"], "target_ratio": x["target_ratio"], "policy": x["policy"]}, nested=True):
                for p in x["curve"]:
                    tracking.log_metrics({k: v for k, v in p.items() if k != "step"}, step=int(p["tokens"]))
                tracking.log_metrics({k: x[k] for k in ("ppl_before", "ppl_after", "tokens", "tok_s", "seconds")})
                if x["method"] == "ppf" and params.benchmark.register_models:
                    name = f"ppf-pruned-{x['target_ratio']:g}"
                    registered[name] = tracking.log_and_register(
                        "pruned", delivered[x["target_ratio"]], name, PRUNED,
                        {"policy": str(x["policy"]), "ppl_test": f"{x['ppl_after']:.4g}", "recovered": "true",
                         "ppl_test_unrecovered": f"{x['ppl_before']:.4g}", "model": params.model.name})
    return registered
