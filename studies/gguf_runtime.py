"""GGUF / llama.cpp runtime benchmark: dense vs ppf-pruned SmolLM2, f16 and q8_0.

For the dense model and ppf-pruned checkpoints (default: lod:0.2 at 20/40/50 %) this measures

* test perplexity in PyTorch (ppf.metrics.perplexity) and in llama.cpp on the SAME windows
  (non-overlapping ``--seqlen`` windows of data/corpus/test.txt, the first ``--windows`` of them),
* batch-1 greedy generation tokens/s in llama.cpp, all GGUFs in ONE process, interleaved round
  by round (so a noisy neighbour slows every model alike), best and median of ``--repeats``,

and writes a markdown table (default studies/results/gguf.md). Needs the ``ppf[gguf]`` extra
and a prepared corpus (``dvc repro prepare``). Missing checkpoints are pruned with ``ppf prune``.

    python studies/gguf_runtime.py --windows 8 --threads 2
    python studies/gguf_runtime.py --checkpoint 0.4=/tmp/ppf40 --ratios 0.4
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--policy", default="lod:0.2")
    ap.add_argument("--ratios", default="0.2,0.4,0.5")
    ap.add_argument("--types", default="f16,q8_0")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="RATIO=DIR",
                    help="use this pruned checkpoint for RATIO instead of pruning (repeatable)")
    ap.add_argument("--windows", type=int, default=8, help="perplexity windows (of --seqlen tokens)")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp / torch threads")
    ap.add_argument("--speed-threads", default=None,
                    help="comma-separated thread counts to time generation with (default: --threads); "
                         "on a shared machine 1 thread is far less disturbed by neighbours than 2")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--work", type=Path, default=None, help="where checkpoints and GGUFs go (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=ROOT / "studies" / "results" / "gguf.md")
    return ap.parse_args(argv)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    import torch

    from ppf.checkpoint import load_pruned
    from ppf.data.corpus import tokenize_text
    from ppf.export.gguf import export_gguf
    from ppf.export.runtime import PROMPT, generation_speed, load_tokenizer, open_gguf, perplexity
    from ppf.metrics import perplexity as torch_perplexity
    from ppf.models import load

    a = _args(argv)
    torch.set_num_threads(a.threads)
    ratios = [float(r) for r in a.ratios.split(",") if r.strip()]
    types = [t.strip() for t in a.types.split(",") if t.strip()]
    given = {float(k): Path(v) for k, v in (c.split("=", 1) for c in a.checkpoint)}
    work = a.work or Path(tempfile.mkdtemp(prefix="ppf-gguf-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    test = ROOT / "data" / "corpus" / "test.txt"
    if not test.is_file():
        sys.exit(f"no {test}; run `dvc repro prepare` first")

    models: dict[str, str] = {"dense": a.model}
    for r in ratios:
        ck = given.get(r, work / f"ppf-{r:g}")
        if not (ck / "ppf_layers.json").is_file():
            _log(f"pruning {a.model} with {a.policy} to {r:g} -> {ck}")
            subprocess.run([sys.executable, "-m", "ppf.cli", "prune", "--model", a.model, "--ratio", str(r),
                            "--policy", a.policy, "--out", str(ck), "--params", str(ROOT / "params.yaml")],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        models[f"ppf {r:.0%}"] = str(ck)

    tokenizer = load_tokenizer(a.model)
    tokens = tokenize_text(tokenizer, test.read_text(encoding="utf-8"))
    rows: dict[str, dict] = {}
    for name, ref in models.items():
        _log(f"{name}: PyTorch perplexity")
        model = load(ref)[0] if name == "dense" else load_pruned(ref)[0]
        params = sum(p.numel() for p in model.parameters())
        ppl = torch_perplexity(model, tokens, a.seqlen, 1, a.windows)
        del model
        rows[name] = {"params": params, "torch_ppl": ppl, "gguf": {}}
        for t in types:
            path = work / f"{name.replace(' ', '-').replace('%', '')}-{t}.gguf"
            _log(f"{name}: export {t}")
            report = export_gguf(ref, path, t)
            _log(f"{name}: llama.cpp perplexity ({t})")
            rows[name]["gguf"][t] = {"path": path, "mib": report["bytes"] / 2**20,
                                     "ppl": perplexity(path, tokens, a.seqlen, a.windows, a.threads)["ppl"]}

    speed_threads = [int(x) for x in (a.speed_threads or str(a.threads)).split(",") if x.strip()]
    prompt = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    from contextlib import ExitStack

    import os

    load = []
    for nt in speed_threads:
        load.append(os.getloadavg()[0])
        _log(f"generation speed: {a.repeats} interleaved rounds, {nt} threads, {a.new_tokens} tokens")
        with ExitStack() as stack:
            opened = {(n, t): stack.enter_context(open_gguf(g["path"], n_ctx=len(prompt) + a.new_tokens + 8,
                                                            n_threads=nt))
                      for n, row in rows.items() for t, g in row["gguf"].items()}
            for _ in range(a.repeats):
                for (n, t), llm in opened.items():
                    s = generation_speed(rows[n]["gguf"][t]["path"], prompt, a.new_tokens, 1, nt, llm)
                    rows[n]["gguf"][t].setdefault("runs", {}).setdefault(nt, []).append(s["tok_s"])

    lines = [f"# GGUF / llama.cpp runtime: {a.model}, dense vs ppf ({a.policy})", "",
             f"Test perplexity on the first {a.windows} windows of {a.seqlen} tokens of data/corpus/test.txt "
             f"(the same token ids in both runtimes); generation: batch 1, greedy, {a.new_tokens} new tokens, "
             f"{'/'.join(map(str, speed_threads))} thread(s), {a.repeats} rounds interleaved over all models in one "
             "process (best / median tok/s; speed-up = best over the dense model's best, same type). "
             f"llama-cpp-python {_version('llama_cpp_python')}, CPU build (GGML_NATIVE); {os.cpu_count()} CPUs, "
             f"1-min load average {max(load + [os.getloadavg()[0]]):.1f} during the timing (other jobs: a load above "
             "the CPU count makes the 2-thread figures noisy).", "",
             "| model | params | PyTorch ppl | type | GGUF MiB | llama.cpp ppl | Δ vs PyTorch | "
             + " | ".join(f"tok/s best / median ({nt} thr) | speed-up ({nt} thr)" for nt in speed_threads) + " |",
             "|---|---:|---:|---|---:|---:|---:|" + "---:|---:|" * len(speed_threads)]
    for n, row in rows.items():
        for t, g in row["gguf"].items():
            cells = []
            for nt in speed_threads:
                runs, dense = g["runs"][nt], max(rows["dense"]["gguf"][t]["runs"][nt])
                cells.append(f"{max(runs):.1f} / {statistics.median(runs):.1f} | {max(runs) / dense:.2f}x")
            lines.append(f"| {n} | {row['params'] / 1e6:.1f} M | {row['torch_ppl']:.2f} | {t} | {g['mib']:.0f} | "
                         f"{g['ppl']:.2f} | {100 * (g['ppl'] / row['torch_ppl'] - 1):+.2f} % | " + " | ".join(cells) + " |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    _log(f"wrote {a.out}")


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    main()
