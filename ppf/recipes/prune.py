"""The `prune` recipe (``ppf prune``): one policy applied to the project's dense model and saved.

Inputs are checked before anything is loaded; the report says the actual block and whole-model
ratios, the parameters before and after and the seconds of every step; the checkpoint is written
atomically (:func:`ppf.checkpoint.save_pruned`) with the policy, the target and the compensation.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ppf.arch import describe
from ppf.block_order import as_order
from ppf.checkpoint import is_checkpoint, save_pruned
from ppf.errors import PPFError
from ppf.policy import Policy
from ppf.workbench import Workbench


def prune(wb: Workbench, policy: Policy, ratio: float, out: Path | None,
          progress: Callable[[str], None] = lambda msg: None, recover: bool = False) -> dict[str, Any]:
    """`ppf prune`: the dense model pruned with ``policy`` to ``ratio``, saved to ``out`` if given;
    with ``recover``, distilled first (:func:`ppf.recipes.recover.recover`: the pruned checkpoint is
    staged beside ``out`` as ``OUT.unrecovered`` until the recovered one is saved).

    Returns a report: actual block and whole-model ratios, parameters before/after, seconds per step.
    Inputs are checked before anything is loaded, and the checkpoint is written atomically.
    """
    if out is not None and out.exists() and not is_checkpoint(out) and (not out.is_dir() or any(out.iterdir())):
        raise PPFError(f"--out '{out}' exists and is not a ppf checkpoint; choose a new directory")
    if is_checkpoint(wb.name):
        raise PPFError(f"'{wb.name}' is already a pruned checkpoint; prune its base model instead")
    times: dict[str, float] = {}
    t = time.perf_counter()
    progress(f"loading {wb.name}")
    before = describe(wb.model)
    times["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    progress("calibration tokens + importance scores (cached after the first run)")
    wb.planner  # noqa: B018  (reads, or computes once, the importance scores)
    if policy.depth and policy.order == "blocks" and wb.planner.block_order is None:
        progress("BlockPruner's block order for blocks=N (searched once, then cached)")
        steps = wb.block_steps(max(wb.params.benchmark.blockpruner.order_ratio, ratio + 0.02), compute=True)
        wb.planner = replace(wb.planner, block_order=as_order(steps))  # the planner, now with the order
    times["importance_s"] = time.perf_counter() - t
    t = time.perf_counter()
    plan = wb.planner.plan(policy, ratio)
    times["plan_s"] = time.perf_counter() - t
    t = time.perf_counter()
    progress("pruning")
    model = wb.pruned(plan)
    after = describe(model)
    comp = model.ppf_compensation
    times["compensation_s"] = comp["seconds"] + comp.get("statistics_s", 0.0)  # its statistics gathered here, once
    times["prune_s"] = time.perf_counter() - t - times["compensation_s"]
    recovery = None
    if out is not None:
        t = time.perf_counter()
        staged = out.with_name(out.name + ".unrecovered") if recover else out
        progress(f"saving to {staged}")
        save_pruned(model, wb.tokenizer, staged, base=str(wb.name),
                    extra={"policy": str(policy), "target": ratio, "compensation": wb.params.pruning.compensation})
        times["save_s"] = time.perf_counter() - t
        if recover:
            from ppf.recipes.recover import recover as run_recover

            t = time.perf_counter()
            recovery = run_recover(wb, staged, out, progress=progress)
            shutil.rmtree(staged, ignore_errors=True)
            times["recover_s"] = time.perf_counter() - t
    return {
        "model": str(wb.name), "policy": str(policy), "target_ratio": ratio,
        "actual_block_ratio": plan.block_ratio,
        "actual_model_ratio": 1 - after.total_params / before.total_params,
        "params_before": before.total_params, "params_after": after.total_params,
        "block_params_before": before.block_params, "block_params_after": after.block_params,
        "layer_ratios": plan.layer_ratios(), "out": str(out) if out else None,
        "compensation": wb.params.pruning.compensation, "compensation_inputs": wb.params.pruning.compensation_inputs,
        "compensation_peak_mb": comp.get("peak_mb"), "seconds": times, "recovery": recovery,
    }
