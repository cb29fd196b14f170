"""Engine costs on the real model: what each step of the pruning engine costs, and what it gives.

Not a test (nothing is asserted): it measures, on the prepared project data,
  * the time of each layer-importance method and each unit-importance kind,
  * per (ratio, policy): policy → plan → compressed mask, physical pruning, one JS evaluation,
    one perplexity evaluation, save + reload (identical logits?),
  * tokens/s (batched prefill at seqlen 512, batch-1 greedy generation) and weight memory of the
    dense and pruned models,
  * compensation (``--compensations``): the dense statistics once (seconds, peak memory), then per
    plan and method the seconds it adds and the JS / valid perplexity after it.
Writes studies/results/engine.json and engine.md.

Run (after `dvc repro prepare`):  python studies/engine_costs.py [--ratios 0.2 0.4 0.5] [--policies ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from ppf.compensate import compensate, dense_statistics
from ppf.config import load_params
from ppf.evaluate import speed
from ppf.importance import layer_importance, unit_importance
from ppf.io import write_json_atomic, write_text_atomic
from ppf.masks import compress
from ppf.metrics import js_divergence, next_token_logprobs, perplexity
from ppf.policy import Policy
from ppf.prune import prune_model
from ppf.workbench import Workbench

ROOT = Path(__file__).resolve().parent.parent


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.4, 0.5])
    ap.add_argument("--policies", nargs="+", default=["uniform", "lod:0.2", "esd:0.2", "bi:0.2"])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", default=str(ROOT / "studies" / "results"))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--compensations", nargs="*", default=["bias", "lsq"], help="compensations to time per plan "
                    "(with pruning.compensation_inputs); none to skip")
    args = ap.parse_args()
    params = load_params(args.params)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = params.model.name
    wb = Workbench(ROOT, params)
    model, tok = wb.model, wb.tokenizer
    calib, heldout = wb.tokens
    valid = wb.split_tokens("valid")
    ev = params.eval
    res: dict = {"model": name, "calibration": list(calib.shape), "heldout": list(heldout.shape),
                 "eval": ev.model_dump(), "threads": torch.get_num_threads(), "importance_s": {}}

    for method in ("lod", "esd", "bi"):
        _, s = timed(layer_importance, model, calib, methods=[method])
        res["importance_s"][method] = s
    for kind in ("taylor", "activation"):
        _, s = timed(unit_importance, model, calib, kind=kind)
        res["importance_s"][f"units_{kind}"] = s
    wb.importance(compute=True, save_to=ROOT / "data" / "importance")

    ref, res["reference_logprobs_s"] = timed(next_token_logprobs, model, heldout, params.js.batch_size)
    ppl, s = timed(perplexity, model, valid, ev.seqlen, ev.batch_size, ev.max_windows)
    res["dense"] = {"ppl_valid": ppl, "ppl_s": s, **speed(model, tok)}
    print(f"dense: ppl {ppl:.2f} ({s:.0f} s)", flush=True)

    pp = params.pruning
    comps = [c for c in args.compensations if c != "none"]
    if comps and pp.compensation_inputs == "dense":
        st = dense_statistics(model, wb.compensation_tokens, params.js.batch_size, gram="lsq" in comps)
        res["compensation_statistics"] = {"seconds": st.seconds, "peak_mb": st.peak_mb, "tokens": st.tokens}
        print(f"dense statistics for compensation: {st.seconds:.1f} s, peak {st.peak_mb:.0f} MB", flush=True)
    else:
        st = None
    rows = []
    for ratio in args.ratios:
        for policy in args.policies:
            row = {"ratio": ratio, "policy": policy}
            plan, row["plan_ms"] = timed(wb.planner.plan, Policy.parse(policy), ratio)
            row["plan_ms"] *= 1e3
            _, mask_s = timed(compress, plan)
            row["mask_ms"] = mask_s * 1e3
            row["actual_block_ratio"] = plan.block_ratio
            pruned = copy.deepcopy(model)
            _, row["prune_s"] = timed(prune_model, pruned, plan)
            row["js"], row["js_s"] = timed(js_divergence, ref, pruned, heldout, params.js.batch_size)
            row["ppl_valid"], row["ppl_s"] = timed(perplexity, pruned, valid, ev.seqlen, ev.batch_size, ev.max_windows)
            with tempfile.TemporaryDirectory() as d:
                from ppf.checkpoint import load_pruned, save_pruned

                _, row["save_s"] = timed(save_pruned, pruned, tok, Path(d) / "m", base=name)
                (back, _), row["load_s"] = timed(load_pruned, Path(d) / "m")
                x = heldout[:2]
                row["reload_identical"] = bool(torch.equal(pruned(x).logits, back(x).logits))
            for c in comps:
                fitted = prune_model(copy.deepcopy(model), plan)
                info = compensate(model, fitted, wb.compensation_tokens, c, pp.damping, params.js.batch_size,
                                  pp.compensation_inputs, st)
                row[f"{c}_s"], row[f"{c}_peak_mb"] = info["seconds"], info["peak_mb"]
                row[f"{c}_js"] = js_divergence(ref, fitted, heldout, params.js.batch_size)
                row[f"{c}_ppl_valid"] = perplexity(fitted, valid, ev.seqlen, ev.batch_size, ev.max_windows)
                del fitted
            row.update(speed(pruned, tok))
            row["params"] = sum(p.numel() for p in pruned.parameters())
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
            del pruned, back
    res["rows"] = rows

    out = Path(args.out)
    write_json_atomic(out / "engine.json", res)
    d = res["dense"]
    lines = [f"# Engine costs — {name} ({res['threads']} CPU threads)", "",
             "Importance (s, calibration " + "x".join(map(str, res["calibration"])) + "): "
             + ", ".join(f"{k} {v:.1f}" for k, v in res["importance_s"].items()), "",
             f"Dense: valid ppl {d['ppl_valid']:.2f} ({ev.max_windows} x {ev.seqlen} tokens, {d['ppl_s']:.0f} s), "
             f"prefill {d['prefill_tok_s']:.0f} tok/s, generate {d['generate_tok_s']:.1f} tok/s, "
             f"weights {d['weights_mb']:.0f} MB, peak {d['peak_mem_mb']:.0f} MB", "",
             "| ratio | policy | actual | valid ppl | JS (nats) | plan ms | mask ms | prune s | JS s | ppl s "
             "| reload identical | prefill tok/s | gen tok/s | weights MB | peak MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['ratio']:.2f} | {r['policy']} | {r['actual_block_ratio']:.4f} | {r['ppl_valid']:.2f} | "
                     f"{r['js']:.4f} | {r['plan_ms']:.1f} | {r['mask_ms']:.2f} | {r['prune_s']:.2f} | {r['js_s']:.1f} | "
                     f"{r['ppl_s']:.0f} | {r['reload_identical']} | {r['prefill_tok_s']:.0f} | "
                     f"{r['generate_tok_s']:.1f} | {r['weights_mb']:.0f} | {r['peak_mem_mb']:.0f} |")
    if comps:
        cs = res.get("compensation_statistics")
        lines += ["", f"Compensation ({pp.compensation_inputs} inputs, {wb.compensation_tokens.numel():,} calibration "
                  "tokens" + (f"; the dense statistics once: {cs['seconds']:.1f} s, peak {cs['peak_mb']:.0f} MB" if cs else "")
                  + "): seconds added per plan, and the valid perplexity / JS after it", "",
                  "| ratio | policy | none ppl | " + " | ".join(f"{c} s | {c} ppl | {c} JS" for c in comps) + " |",
                  "|---|---|---|" + "---|---|---|" * len(comps)]
        for r in rows:
            lines.append(f"| {r['ratio']:.2f} | {r['policy']} | {r['ppl_valid']:.2f} | "
                         + " | ".join(f"{r[c + '_s']:.2f} | {r[c + '_ppl_valid']:.2f} | {r[c + '_js']:.4f}" for c in comps)
                         + " |")
    write_text_atomic(out / "engine.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
