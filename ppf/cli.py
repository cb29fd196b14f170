"""The `ppf` command: the user's front door.

Each command is a thin shell over library functions; a :class:`PPFError` becomes one red line on
stderr and exit status 2, so scripts can rely on it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ppf.errors import PPFError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ppf — predictive pruning of Llama-family LLMs.")
console = Console(width=None if sys.stdout.isatty() else 160)  # tables stay readable when piped
err = Console(stderr=True)

def _ratio(value: float | None) -> float | None:
    """Typer callback: a target ratio is checked once, here at the edge."""
    from ppf.policy import check_ratio

    return None if value is None else check_ratio(value)


def _policy(value: str) -> str:
    """Typer callback: a policy text must parse (``agent`` is the trained agent's choice)."""
    from ppf.policy import Policy

    if value != "agent":
        Policy.parse(value)
    return value


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="embedded model name (smollm2-135m) or a local directory")]
ParamsOpt = Annotated[Path, typer.Option("--params", help="the project's params.yaml")]


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _project(params: Path, model: str | None = None):
    """(validated params, with ``model`` as the model when given; the project root)."""
    from ppf.config import load_params
    from ppf.paths import project_root

    p = load_params(params)
    if model is not None:
        p = p.with_model(model)
    return p, (params.resolve().parent if params.is_file() else project_root())


def _show(data: dict, as_json: bool, title: str, rows: list[tuple[str, str]]) -> None:
    """A report: ``data`` as JSON, or ``rows`` as a two-column (field, value) table — the shape of every report here."""
    if as_json:
        console.print_json(json.dumps(data))
        return
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", justify="right")
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


@app.command()
def info(model: ModelOpt = "smollm2-135m",
         as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False) -> None:
    """Print a model's architecture: layers, heads, KV heads, head_dim, MLP size, parameters."""
    from ppf.arch import describe, describe_config
    from ppf.checkpoint import is_checkpoint, load_model
    from ppf.models import load_config

    # a pruned checkpoint's layers differ from its (dense) config: describe the real modules
    arch = describe(load_model(model)[0]) if is_checkpoint(model) else describe_config(load_config(model))
    rows = [
        ("model type", arch.model_type),
        ("layers", str(arch.n_layers)),
        ("hidden size", str(arch.hidden)),
        ("attention heads", str(arch.n_heads)),
        ("KV heads", f"{arch.n_kv_heads} ({'GQA' if arch.n_kv_heads < arch.n_heads else 'MHA'})"),
        ("head_dim", str(arch.head_dim)),
        ("MLP size", str(arch.intermediate)),
        ("vocab", _fmt_int(arch.vocab)),
        ("tied embeddings", str(arch.tied_embeddings)),
        ("attention bias", str(arch.attention_bias)),
        ("params: embedding", _fmt_int(arch.embedding_params)),
        ("params: blocks", _fmt_int(arch.block_params)),
        ("params: other", _fmt_int(arch.other_params)),
        ("params: total", _fmt_int(arch.total_params)),
    ]
    if not arch.uniform:
        rows += [("heads per layer", " ".join(map(str, arch.heads_per_layer))),
                 ("KV heads per layer", " ".join(map(str, arch.kv_heads_per_layer))),
                 ("MLP per layer", " ".join(map(str, arch.intermediate_per_layer)))]
    _show(dataclasses.asdict(arch), as_json, model, rows)


@app.command()
def prune(model: ModelOpt = "smollm2-135m",
          ratio: Annotated[float, typer.Option("--ratio", "-r", callback=_ratio,
                                               help="target reduction of the attention and MLP blocks' "
                                                    "parameters, in (0, 1)")] = 0.2,
          policy: Annotated[str, typer.Option("--policy", "-p", callback=_policy,
                                              help="lod:A | esd:A | bi:A | uniform  (A = a_eta in [0, 0.5]) | "
                                                   "agent (the trained agent decides)")] = "uniform",
          out: Annotated[Path | None, typer.Option("--out", "-o", help="write the pruned checkpoint here")] = None,
          recover: Annotated[bool, typer.Option("--recover/--no-recover",
                                                help="with --out: distil the pruned model from the dense one before "
                                                     "saving (the recover params; --no-recover: as pruned)")] = True,
          params: ParamsOpt = Path("params.yaml"),
          as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Prune a model with a policy to a target ratio; print actual ratio, parameters and time. With --out, the
    checkpoint is recovered by default (as `ppf recover`; resumable: rerun the same command after Ctrl-C)."""
    from ppf.policy import Policy
    from ppf.recipes.prune import prune as run_prune
    from ppf.workbench import Workbench

    p, root = _project(params, model)
    wb = Workbench(root, p, compute_importance=True)
    if policy == "agent":  # the trained agent decides
        from ppf.recipes.agent import policy_for

        chosen = policy_for(wb, ratio)
        if chosen["warning"]:
            err.print(f"[bold yellow]warning:[/] {chosen['warning']}", highlight=False, soft_wrap=True)
        pol = chosen["policy"]
    else:
        pol = Policy.parse(policy)
    with err.status("pruning") as status:
        report = run_prune(wb, pol, ratio, out, progress=lambda m: status.update(m), recover=recover)
    rows = [("actual block ratio", f"{report['actual_block_ratio']:.4f}"),
            ("actual whole-model reduction", f"{report['actual_model_ratio']:.4f}"),
            ("params before -> after", f"{report['params_before']:,} -> {report['params_after']:,}"),
            ("block params before -> after", f"{report['block_params_before']:,} -> {report['block_params_after']:,}"),
            ("layer ratios min / max", f"{min(report['layer_ratios']):.3f} / {max(report['layer_ratios']):.3f}"),
            ("compensation", f"{report['compensation']}" + (f" ({report['compensation_inputs']} inputs, peak "
                                                             f"{report['compensation_peak_mb']:,.0f} MB)"
                                                             if report["compensation"] != "none" else ""))]
    rows += [(f"time: {k.removesuffix('_s')}", f"{v:.2f} s") for k, v in report["seconds"].items()]
    if report.get("recovery"):
        r = report["recovery"]
        rows += [("recovered", f"{r['recovery']['tokens']:,} tokens, {r['recovery']['tok_s']:,.0f} tok/s, test ppl "
                               f"{r['ppl_before']['value']:.2f} -> {r['ppl_after']['value']:.2f}")]
    rows += [("saved to", report["out"])] if report["out"] else []
    _show(report, as_json, f"{model} pruned with {pol} to {ratio:.3f}", rows)
    if not out:
        err.print("nothing saved; pass --out DIR to save", highlight=False)


@app.command(name="eval")
def eval_(model: ModelOpt = "smollm2-135m",
          base: Annotated[str | None, typer.Option(help="the dense model to measure JS divergence against")] = None,
          params: ParamsOpt = Path("params.yaml"),
          splits: Annotated[str, typer.Option(help="comma-separated corpus splits")] = "valid,test",
          zero_shot: Annotated[bool, typer.Option("--zero-shot/--no-zero-shot", help="also run the lm-eval tasks")] = False,
          gguf: Annotated[Path | None, typer.Option("--gguf", help="evaluate this GGUF in llama.cpp instead "
                                                    "(perplexity on the same windows, tokenized by --model's tokenizer, "
                                                    "and generation tokens/s; needs ppf[gguf])")] = None,
          threads: Annotated[int | None, typer.Option(help="llama.cpp threads for --gguf (default: all cores)")] = None,
          as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Perplexity (valid/test), JS vs --base and zero-shot accuracy of a model or pruned checkpoint."""
    from ppf.evaluate import evaluate_model

    p, root = _project(params)
    if gguf is not None:
        return _eval_gguf(gguf, model, p, root, splits, threads, as_json, zero_shot, base)
    with err.status(f"evaluating {model}"):
        result = evaluate_model(model, root, p, splits=[s.strip() for s in splits.split(",") if s.strip()],
                                zero_shot_tasks=zero_shot, base=base)
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = _perplexity_table(f"{model}", result["perplexity"], p.eval.seqlen)
    if "js" in result:
        table.add_row(f"JS vs {result['js']['base']} (nats, {result['js']['tokens']:,} tokens)", f"{result['js']['js']:.5f}")
    for task, v in result.get("zero_shot", {}).items():
        label = "zero-shot mean" if task == "mean" else f"zero-shot {task}"
        table.add_row(f"{label} acc / acc_norm", f"{v['acc']:.4f} / {v['acc_norm']:.4f}")
    table.add_row("seconds", f"{result['seconds']:.1f}")
    console.print(table)


def _perplexity_table(title: str, perplexity: dict, seqlen: int) -> Table:
    """A metric / value table starting with one perplexity row per split (`ppf eval`, `ppf eval --gguf`)."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for split, v in perplexity.items():
        table.add_row(f"perplexity ({split}, seqlen {seqlen}, {v['tokens']:,} tokens)", f"{v['ppl']:.3f}")
    return table


def _eval_gguf(gguf: Path, model: str, p, root: Path, splits: str, threads: int | None, as_json: bool,
               zero_shot: bool, base: str | None) -> None:
    from ppf.export.runtime import evaluate_gguf, load_tokenizer

    if zero_shot or base:
        raise PPFError("--gguf measures perplexity and speed only; drop --zero-shot / --base")
    if threads is not None and threads < 1:
        raise PPFError(f"--threads {threads} must be >= 1")
    tokenizer = load_tokenizer(model)
    with err.status(f"evaluating {gguf} in llama.cpp"):
        result = evaluate_gguf(gguf, tokenizer, root / "data" / "corpus",
                               [s.strip() for s in splits.split(",") if s.strip()],
                               p.eval.seqlen, p.eval.max_windows, n_threads=threads)
    result["tokenizer"] = model
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = _perplexity_table(f"{gguf} (llama.cpp, {result['threads']} threads)", result["perplexity"], p.eval.seqlen)
    g = result["generation"]
    table.add_row(f"generation tok/s (batch 1, {g['new_tokens']} tokens; best / median)",
                  f"{g['tok_s']:.1f} / {g['median_tok_s']:.1f}")
    if result.get("tokenizer_agreement") is not None:
        table.add_row(f"llama.cpp tokenizer = {model}'s", f"{100 * result['tokenizer_agreement']:.1f} %")
    table.add_row("seconds", f"{result['seconds']:.1f}")
    console.print(table)


@app.command()
def export(model: Annotated[str, typer.Argument(help="a ppf checkpoint directory, an embedded model name "
                                                      "(smollm2-135m) or a transformers model directory")],
           gguf: Annotated[Path, typer.Option("--gguf", help="the GGUF file to write (for llama.cpp)")],
           type_: Annotated[str, typer.Option("--type", help="f32 | f16 | bf16 | q8_0 | q4_0 | q4_1 | q5_0 | q5_1, "
                                                           "or with ppf[gguf]: q4_k_m | q5_k_m | q6_k | ...")] = "f16",
           tokenizer: Annotated[str, typer.Option(help="auto (the base model's) | hf | none (token ids only) "
                                                       "| gguf:PATH")] = "auto",
           tokenizer_pre: Annotated[str | None, typer.Option(help="llama.cpp pre-tokenizer name for an hf BPE tokenizer")] = None,
           as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Export a pruned checkpoint (or a base model) to GGUF for llama.cpp: per-layer heads and MLP widths
    (arch deci), the base model's tokenizer and chat template."""
    from ppf.export.gguf import export_gguf

    with err.status(f"exporting {model} to {gguf}"):
        report = export_gguf(model, gguf, type_, tokenizer=tokenizer, tokenizer_pre=tokenizer_pre)
    rows = [("type", report["type"]), ("size", f"{report['bytes'] / 2**20:.1f} MiB"), ("layers", str(report["layers"])),
            ("heads per layer", " ".join(map(str, report["heads"]))),
            ("KV heads per layer", " ".join(map(str, report["kv_heads"]))),
            ("MLP per layer", " ".join(map(str, report["kept_ffn"])))]
    if report["ffn"] != report["kept_ffn"]:
        rows.append(("MLP as written (zero-padded)", " ".join(map(str, report["ffn"]))))
    if report["f16_fallback"]:
        rows.append(("kept f16 (rows not whole blocks)", str(len(report["f16_fallback"]))))
    rows += [("tokenizer", report["tokenizer"]), ("seconds", f"{report['seconds']:.1f}")]
    _show(report, as_json, f"{model} -> {gguf}", rows)
    if as_json:
        return
    for note in report["notes"]:
        err.print(f"[bold yellow]note:[/] {note}", highlight=False, soft_wrap=True)


@app.command()
def recover(checkpoint: Annotated[Path, typer.Argument(help="a ppf checkpoint (ppf prune --out, models/pruned/ppf-<ratio>)")],
            out: Annotated[Path, typer.Option("--out", "-o", help="write the recovered checkpoint here")],
            tokens: Annotated[int | None, typer.Option(help="training tokens (default: recover.tokens)")] = None,
            lr: Annotated[float | None, typer.Option(help="peak learning rate (default: recover.lr)")] = None,
            minutes: Annotated[float | None, typer.Option(help="also stop after this many minutes")] = None,
            train: Annotated[str | None, typer.Option(help="blocks | lora (default: recover.train)")] = None,
            params: ParamsOpt = Path("params.yaml"),
            as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Recover a pruned checkpoint: distil it from its dense base model on the train split (resumable:
    rerun the same command after Ctrl-C)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ppf.config import overridden
    from ppf.recipes.recover import recover as run_recover
    from ppf.workbench import Workbench

    p, root = _project(params)
    p = overridden(p, "command line", recover={"tokens": tokens, "lr": lr, "minutes": minutes, "train": train})
    wb = Workbench(root, p)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f} tokens"),
               TextColumn("{task.fields[info]}"), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=as_json) as bar:
        task = bar.add_task("recovering", total=p.recover.tokens, info="")

        def on_step(e: dict) -> None:
            info = f"{e['tok_s']:,.0f} tok/s  loss {e['loss']:.3f} (kl {e['kl']:.3f}, lm {e['lm']:.3f})"
            info += f"  valid ppl {e['ppl_valid']:.2f}" if "ppl_valid" in e else ""
            bar.update(task, completed=e["tokens"], info=info)

        report = run_recover(wb, checkpoint, out, on_step=on_step, progress=lambda m: bar.update(task, description=m))
    rec = report["recovery"]
    if as_json:
        console.print_json(json.dumps({k: v for k, v in report.items() if k not in ("ppl_before", "ppl_after")}
                                      | {k: {x: y for x, y in (report[k] or {}).items() if x != "nll_windows"}
                                         for k in ("ppl_before", "ppl_after")}))
        return
    rows = [("trained", f"{rec['trained']} ({rec['trainable_params']:,} parameters)"),
            ("tokens", f"{rec['tokens']:,} of {rec['budget_tokens']:,} ({rec['stopped']})"),
            ("tokens/s", f"{rec['tok_s']:,.0f}"),
            ("best valid step", f"{rec['best_step']} (valid ppl {rec['best_ppl_valid']:.2f})")]
    for key, label in (("ppl_before", "test ppl before"), ("ppl_after", "test ppl after")):
        v = report[key]
        rows.append((label, f"{v['value']:.2f} [{v['ci_lo']:.2f}, {v['ci_hi']:.2f}]"))
    rows += [("seconds", f"{report['seconds']:.1f}"), ("saved to", str(report["out"]))]
    _show(report, False, f"{checkpoint} recovered", rows)


@app.command()
def predict(model: ModelOpt = "smollm2-135m",
            ratio: Annotated[float, typer.Option("--ratio", "-r", callback=_ratio, help="target block ratio, in (0, 1)")] = 0.2,
            policy: Annotated[str, typer.Option("--policy", "-p", help="lod:A | esd:A | bi:A | uniform")] = "uniform",
            predictor: Annotated[str | None, typer.Option(
                help="predictor directory/file, or registry:champion | registry:<version> "
                     "(default: the project's models/predictor)")] = None,
            verify: Annotated[bool, typer.Option("--verify", help="also prune for real and measure the true value")] = False,
            params: ParamsOpt = Path("params.yaml"),
            as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Predict the signal the predictor learned (predictor.signal: NLL above dense by default, or JS, KL)
    of a policy at a ratio with the trained CNN (no weights touched)."""
    import tempfile

    from ppf.policy import Policy
    from ppf.predictor import Predictor
    from ppf.recipes import predictor as recipe
    from ppf.workbench import Workbench

    pol = Policy.parse(policy)
    p, root = _project(params, model)
    wb = Workbench(root, p)
    with tempfile.TemporaryDirectory() as scratch:
        pred = Predictor.load(recipe.locate(predictor, root, p, scratch), wb.planner)
    out = pred.predict(pol, ratio)
    report = {"model": model, "policy": str(pol), "target_ratio": ratio, "actual_ratio": out["actual_ratio"],
              "signal": out["signal"], "predicted": out["score"], "predictor_ms": out["ms"], "input": pred.meta["input"]}
    name = {"js": "JS", "kl": "KL", "nll": "NLL above dense"}[out["signal"]]
    if verify:
        with err.status(f"pruning and measuring the true {name}"):
            report |= recipe.verify(wb, pol, ratio, out["signal"])
    rows = [("actual block ratio", f"{report['actual_ratio']:.4f}"),
            (f"predicted {name}", f"{report['predicted']:.5f}"), ("predictor time", f"{report['predictor_ms']:.2f} ms")]
    if verify:
        rows += [(f"true {name}", f"{report['true']:.5f}"), ("error", f"{report['predicted'] - report['true']:+.5f}"),
                 ("true evaluation time", f"{report['true_eval_ms']:.0f} ms")]
    _show(report, as_json, f"{model}: {pol} at {ratio:.3f}", rows)


@app.command()
def policy(model: ModelOpt = "smollm2-135m",
           ratio: Annotated[float, typer.Option("--ratio", "-r", callback=_ratio, help="target block ratio, in (0, 1)")] = 0.3,
           agent: Annotated[str | None, typer.Option(
               help="agent file/directory, or registry:champion | registry:<version> "
                    "(default: the registered champion, else the project's models/agent)")] = None,
           params: ParamsOpt = Path("params.yaml")) -> None:
    """The trained agent's policy for a ratio, as JSON: method, a_eta, per-layer ratios, the predicted signal."""
    from ppf.recipes.agent import policy_for
    from ppf.workbench import Workbench

    p, root = _project(params, model)
    result = policy_for(Workbench(root, p), ratio, agent)
    result["policy"] = str(result["policy"])
    if result["warning"]:
        err.print(f"[bold yellow]warning:[/] {result['warning']}", highlight=False, soft_wrap=True)
    console.print_json(json.dumps(result))


@app.command()
def benchmark(model: ModelOpt = "smollm2-135m",
              methods: Annotated[str | None, typer.Option(help="comma-separated, from the registry ppf.baselines "
                                                          "(see `ppf methods`; default: benchmark.methods)")] = None,
              ratios: Annotated[str | None, typer.Option(help="comma-separated target block ratios "
                                                         "(default: benchmark.ratios)")] = None,
              params: ParamsOpt = Path("params.yaml"),
              out: Annotated[Path | None,
                             typer.Option(help="CSV to write (default: results/benchmark-<model>.csv)")] = None) -> None:
    """PPF vs the baselines on a model: perplexity, zero-shot, speed, memory. Finished cells are
    cached, so an interrupted run resumes."""
    from ppf.recipes.benchmark import run, table2
    from ppf.importance.cache import slug
    from ppf.io import write_text_atomic
    from ppf.paths import cache_dir

    p, root = _project(params, model)
    try:
        ms = [m.strip() for m in methods.split(",") if m.strip()] if methods else list(p.benchmark.methods)
        rs = [float(r) for r in ratios.split(",") if r.strip()] if ratios else list(p.benchmark.ratios)
    except ValueError:
        raise PPFError(f"--ratios {ratios!r} is not a comma-separated list of numbers, e.g. 0.2,0.4") from None
    with err.status("benchmark") as status:
        df = run(root, p, ms, rs, cache_dir() / "benchmark", progress=lambda m: (status.update(m), err.print(m)))
    df = df.drop(columns=["nll_windows"])  # per-window NLLs stay in the cell cache
    out = out or root / "results" / f"benchmark-{slug(model)}.csv"
    write_text_atomic(out, df.to_csv(index=False, float_format="%.6g"))
    console.print(table2(df))
    err.print(f"wrote {out}")


@app.command()
def summary(params: ParamsOpt = Path("params.yaml")) -> None:
    """What the pipeline found: PPF vs the best baseline per ratio (paired 95 % intervals), where the
    pruned models and plots are, and what to try next (the end of `bash setup.sh`)."""
    _, root = _project(params)
    path = root / "metrics" / "benchmark.json"
    if not path.is_file():
        raise PPFError(f"no {path.relative_to(root)} yet; run the pipeline first (`dvc repro`)")
    bench = json.loads(path.read_text())
    table = Table(title=f"PPF vs the best re-run baseline (test perplexity; {root / 'results' / 'benchmark.md'})")
    for col in ("ratio", "PPF policy", "PPF ppl", "best baseline", "its ppl", "PPF vs best", "95 % interval", "verdict"):
        table.add_column(col, justify="left" if col in ("PPF policy", "best baseline", "verdict") else "right")
    for r, e in bench.items():
        if r == "dense" or "ppf_ppl" not in e:
            continue
        lo, hi = e.get("ppf_vs_best_ci_lo"), e.get("ppf_vs_best_ci_hi")
        verdict = "–" if lo is None else "win" if hi < 0 else "loss" if lo > 0 else "tie (within the noise)"
        table.add_row(r, e["ppf_policy"], f"{e['ppf_ppl']:.2f}", e.get("best_baseline", "–"),
                      f"{e.get('best_baseline_ppl', float('nan')):.2f}", "–" if lo is None else f"{e['ppf_vs_best_pct']:+.1f} %",
                      "–" if lo is None else f"[{lo:+.1f}, {hi:+.1f}] %", verdict)
    console.print(table)
    if "dense" in bench:
        console.print(f"dense: test ppl {bench['dense']['ppl_test']:.2f}, zero-shot {bench['dense']['zs_mean']:.3f}")
    pruned = sorted(str(p.relative_to(root)) for p in (root / "models" / "pruned").glob("ppf-*"))
    raw = sorted(str(p.relative_to(root)) for p in (root / "models" / "unrecovered").glob("ppf-*"))
    rec = root / "metrics" / "recover.json"
    if rec.exists():
        for r, e in json.loads(rec.read_text()).items():
            if isinstance(e, dict) and "ppf" in e:
                vs = [(k.removeprefix("ppf_vs_"), v) for k, v in e.items() if k.startswith("ppf_vs_")]
                console.print(f"recovered {r}: PPF {e['ppf']['ppl_before']:.2f} -> {e['ppf']['ppl_after']:.2f}"
                              + "".join(f"; vs {m} recovered {v['pct']:+.1f} % [{v['ci_lo']:+.1f}, {v['ci_hi']:+.1f}]"
                                        for m, v in vs), highlight=False)
    console.print(f"PPF models, recovered: {', '.join(pruned) or 'none yet (dvc repro recover)'}; as pruned: "
                  f"{', '.join(raw) or 'none'} (load: ppf.load_pruned(DIR))\n"
                  f"plots: {root / 'plots'}/{{predictor,agent,benchmark}}/*.png; all metrics: `dvc metrics show`\n"
                  "next: `ppf policy --ratio 0.33` · `ppf prune --ratio 0.33 --policy agent --out pruned/a` · "
                  "`dvc exp run -S benchmark.ratios='[0.3]'` · "
                  f"`mlflow ui --backend-store-uri sqlite:///{root / 'mlruns' / 'mlflow.db'}`", highlight=False, soft_wrap=True)


@app.command()
def methods() -> None:
    """The registered pruning methods (ppf.baselines): name, kind, what it is, how it deviates from its original."""
    from ppf.baselines import METHODS

    table = Table("method", "kind", "what it is here", "deviation from the original")
    for m in METHODS.values():
        table.add_row(m.name, m.kind, m.summary, m.deviation)
    console.print(table)


_KEY_METRICS = {
    "predictor": ["mae", "spearman", "r2", "max_error", "speedup", "predictor_ms"],
    "agent": ["mean_ppl_agent", "mean_ppl_uniform", "mean_ppl_grid_best", "policy_latency_ms"],
    "pruned": ["ppl_test", "zs_mean", "tokens_per_s", "peak_mem_mb", "actual_ratio"],
}
_KEY_PARAMS = {"predictor": ["predictor.input", "predictor.epochs", "predictor.lr", "predictor.holdout"],
               "agent": ["agent.episodes", "agent.window", "agent.noise", "agent.noise_decay"],
               "pruned": ["policy"]}


def _registered(kind: str, p, root: Path) -> list[str]:
    from ppf import tracking

    if kind == "predictor":
        return [p.tracking.predictor_name]
    if kind == "agent":
        return [p.tracking.agent_name]
    if kind == "pruned":
        return tracking.registered_names(root, "ppf-pruned-")
    raise PPFError(f"unknown kind {kind!r}; compare one of predictor, agent, pruned")


@app.command()
def compare(kind: Annotated[str, typer.Argument(help="predictor | agent | pruned")],
            params: ParamsOpt = Path("params.yaml"),
            as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Registered versions side by side: held-out metrics, training data hash, params, git commit, champion."""
    from ppf import tracking

    p, root = _project(params)
    names = _registered(kind, p, root)
    rows = [v for name in names for v in tracking.versions(root, name)]
    store = tracking.store_dir(root)
    if not rows:
        raise PPFError(f"no registered {kind} versions in {store}; run the pipeline (`dvc repro`) first")
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    metrics, prm = _KEY_METRICS[kind], _KEY_PARAMS[kind]
    table = Table(title=f"registered {kind} versions ({store})")
    for col in ["name", "v", "champion", *metrics, "data", *[k.split(".")[-1] for k in prm], "git commit"]:
        table.add_column(col, justify="right" if col in metrics else "left", no_wrap=col in ("name", "data", "git commit"))
    for v in rows:
        data = v["tags"].get("dataset") or v["params"].get("dataset") or v["tags"].get("model", "")
        table.add_row(v["name"], v["version"], "✓" if "champion" in v["aliases"] else "",
                      *[f"{v['metrics'][m]:.4g}" if m in v["metrics"] else "–" for m in metrics],
                      data[:12], *[v["params"].get(k, "–") for k in prm], v["run_tags"].get("git_commit", "–")[:8])
    console.print(table)


@app.command()
def promote(name: Annotated[str, typer.Argument(help="registered model, e.g. ppf-predictor")],
            version: Annotated[str, typer.Argument(help="the version to make champion")],
            params: ParamsOpt = Path("params.yaml")) -> None:
    """Make VERSION the champion of NAME (the previous champion is remembered for `ppf rollback`)."""
    from ppf import tracking

    _, root = _project(params)
    tracking.configure(root)
    try:
        previous = tracking.promote(name, version)
    except LookupError as exc:
        raise PPFError(f"{exc}; see `ppf compare`") from None
    console.print(f"{name}: champion {previous or '(none)'} -> {version}")


@app.command()
def rollback(name: Annotated[str, typer.Argument(help="registered model, e.g. ppf-predictor")],
             params: ParamsOpt = Path("params.yaml")) -> None:
    """Give the champion alias of NAME back to the version that held it before."""
    from ppf import tracking

    _, root = _project(params)
    tracking.configure(root)
    try:
        old, new = tracking.rollback(name)
    except LookupError as exc:
        raise PPFError(str(exc)) from None
    console.print(f"{name}: champion {old} -> {new} (rolled back)")


@app.command()
def profile(name: Annotated[str, typer.Argument(help="tiny | default | paper")],
            params: ParamsOpt = Path("params.yaml")) -> None:
    """Write a profile's budgets into params.yaml (other keys and comments kept); dvc repro then reruns what changed."""
    from ppf import profile as profiles

    changed = profiles.apply(params, name)
    console.print(f"{params}: profile '{name}' ({len(changed)} value(s) changed{': ' if changed else ''}"
                  f"{', '.join(changed)})", highlight=False, soft_wrap=True)


@app.command()
def deploy(params: ParamsOpt = Path("params.yaml"),
           api_url: Annotated[str | None, typer.Option(help="Prefect server API (default: $PREFECT_API_URL, "
                                                           "else http://127.0.0.1:4200/api)")] = None,
           dry_run: Annotated[bool, typer.Option("--dry-run",
                                                 help="check and list the schedules; serve nothing")] = False) -> None:
    """Register the scheduled refreshes of `deploy.schedules` with a Prefect server and serve them until Ctrl-C.

    Start the server first, in another terminal: `prefect server start`."""
    import os

    p, root = _project(params)
    url = (api_url or os.environ.get("PREFECT_API_URL") or "http://127.0.0.1:4200/api").rstrip("/")
    table = Table("deployment", "cron", "timezone", "runs")
    for name, s in p.deploy.schedules.items():
        table.add_row(f"ppf-refresh/{name}", s.cron, p.deploy.timezone,
                      f"dvc repro{' --force' if s.force else ''} {' '.join(s.targets)}"
                      + (" && dvc push" if p.deploy.push else ""))
    console.print(table)
    # the Prefect part is the flows' (flows/scheduled.py), run as its own process: the library never imports a flow
    import subprocess

    command = [sys.executable, "-m", "flows.scheduled", "--params", params.name, "--api-url", url]
    with subprocess.Popen(command + (["--dry-run"] if dry_run else []), cwd=root, stderr=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:  # its errors and Prefect's log, as they come
            err.print(line.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)
    if proc.returncode:
        raise typer.Exit(proc.returncode)


@app.command(name="params")
def params_(params: ParamsOpt = Path("params.yaml")) -> None:
    """Validate params.yaml and print the full, typed configuration (defaults filled in)."""
    from ppf.config import load_params

    console.print_json(load_params(params).model_dump_json())


def _click_modules() -> list:
    """The exception modules of the click that typer runs on: its vendored copy (typer >= 0.16), click."""
    mods = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mods.append(__import__(name, fromlist=["ClickException"]))
        except ImportError:
            pass
    return mods


def _click_error(exc: BaseException) -> int | None:
    """Report a click/typer usage error as one line on stderr; its exit code (None: not one)."""
    from rich.markup import escape

    exits = tuple(m.Exit for m in (typer, *_click_modules()) if hasattr(m, "Exit"))
    if isinstance(exc, exits):
        return exc.exit_code
    for mod in _click_modules():
        if isinstance(exc, getattr(mod, "NoArgsIsHelpError", ())):  # bare `ppf`: the help text
            exc.show()
            return exc.exit_code
        if isinstance(exc, mod.ClickException):
            message = " ".join(exc.format_message().split())
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if isinstance(exc, mod.UsageError) and ctx is not None else ""
            err.print(f"[bold red]error:[/] {escape(message + hint)}", highlight=False, soft_wrap=True)
            return exc.exit_code
    return None


def main() -> None:
    """Entry point: run the app, turning PPFError into one line and exit code 2."""
    try:
        code = app(standalone_mode=False)  # typer turns Ctrl-C into a returned 130 in this mode
    except PPFError as exc:
        from rich.markup import escape

        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)  # "ppf[gguf]" is text
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit code
        code = _click_error(exc)
        if code is None:
            raise
        sys.exit(code)
    if isinstance(code, int) and code:
        if code == 130:
            err.print("aborted")
        sys.exit(code)


if __name__ == "__main__":
    main()
