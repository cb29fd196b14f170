"""Beyond the paper: the final choice refined on the TRUE model by budget-preserving mutations.

The final choice (:func:`ppf.agent.choice.choose`) picks the best of a handful of contenders;
nothing looks at the policies next to it. EvoPress / Týr-the-Pruner / DarwinLM search allocations
with mutations that keep the compression budget and multi-fidelity selection; this is that idea
over ppf's policy space, in a (1 + λ) form sized for a CPU:

- a mutant changes ONE part of the parent policy (a_eta, the importance method, the normalisation,
  a protected edge layer, the depth, the attention share: :func:`mutate`) and is made
  :func:`~ppf.policy.feasible` at the SAME target ratio — the planner then meets that ratio exactly
  (± ``pruning.tolerance``), so every mutant spends the same budget;
- per generation, ``proposals`` distinct mutants are drawn, the predictor keeps the ``offspring``
  it rates best (a millisecond screen; it never decides), and those are pruned for real and
  measured on few valid windows (low fidelity);
- the best of them races the parent on the choice's growing valid budgets (the same rule as the
  choice, :func:`ppf.agent.choice.race`, with the windows it was picked on left out) and replaces the
  parent only when its paired interval against it lies wholly below 0, so a mutant that was lucky on
  few tokens, or equal within the noise, does not win.

Only the valid attn is used; the test split stays for the benchmark.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ppf.agent.choice import Entry, Rule, race
from ppf.agent.env import AGENT_METHODS
from ppf.plan import DenseShape
from ppf.policy import A_ETA_MAX, Policy, feasible

PARTS = ("a_eta", "method", "norm", "first", "last", "depth", "attn")


def mutate(policy: Policy, rng: random.Random, shape: DenseShape, methods: Sequence[str] = AGENT_METHODS,
           step: float = 0.05) -> Policy:
    """``policy`` with one part changed at random (the result may equal ``policy``; the caller skips it)."""
    p, part = policy, rng.choice(PARTS)
    if part == "a_eta" or (part in ("method", "norm") and p.method == "uniform"):
        if p.method == "uniform":  # uniform has no a_eta: follow some importance a little
            return replace(p, method=rng.choice(list(methods)), a_eta=round(rng.uniform(0.0, step), 6))
        return replace(p, a_eta=round(min(A_ETA_MAX, max(0.0, p.a_eta + rng.gauss(0.0, step))), 6))
    if part == "method":
        return replace(p, method=rng.choice([m for m in (*methods, "uniform") if m != p.method]))
    if part == "norm":
        return replace(p, norm="rank" if p.norm == "minmax" else "minmax")
    if part in ("first", "last"):
        value = max(0, getattr(p, part) + rng.choice((-1, 1)))
        return p if p.first + p.last - getattr(p, part) + value >= shape.n_layers - 1 else replace(p, **{part: value})
    if part == "depth":
        return replace(p, depth=max(0, p.depth + rng.choice((-1, 1))))
    # the attention share: none (the layer's own ratio) <-> a share <-> LLM-Pruner's whole KV groups
    if p.attn is None or p.attn == "groups":
        choices = [x for x in (None, "groups", round(rng.uniform(0.0, 0.5), 3)) if x != p.attn]
        return replace(p, attn=rng.choice(choices))
    share = float(p.attn)  # a number here: None and "groups" are handled above
    return replace(p, attn=round(min(1.0, max(0.0, share + rng.gauss(0.0, step))), 3))


def mutants(parent: Policy, ratio: float, n: int, rng: random.Random, shape: DenseShape, max_layer_ratio: float,
            block_order: Sequence[Sequence[Any]] | None, seen: set, methods: Sequence[str] = AGENT_METHODS,
            tries: int = 50, key: Callable[[Policy], Any] = str) -> list[Policy]:
    """Up to ``n`` feasible mutants of ``parent`` at ``ratio`` whose ``key`` (the policy text, or what the
    caller says makes two policies the same, e.g. their plan) is not in ``seen`` (updated)."""
    out: list[Policy] = []
    seen.add(key(parent))
    for _ in range(tries * n):
        if len(out) == n:
            break
        child = feasible(mutate(parent, rng, shape, methods), ratio, shape, max_layer_ratio, block_order=block_order)
        k = key(child)
        if k not in seen:
            seen.add(k)
            out.append(child)
    return out


def refine(start: Entry, ratio: float, *, propose: Callable[[Policy, random.Random], list[Policy]],
           screen: Callable[[list[Policy]], list[Policy]], entry_of: Callable[[Policy], Entry],
           measure: Callable[[Entry, int, int], Sequence[float]], low: int, budgets: Sequence[int], rule: Rule,
           generations: int, seed: int = 0) -> tuple[Entry, list[dict[str, Any]]]:
    """The (1 + λ) refinement of ``start`` (an :class:`~ppf.agent.choice.Entry` with its valid NLLs).

    Per generation: ``propose(parent, rng)`` draws mutants, ``screen`` keeps the offspring to judge,
    each is measured on the first ``low`` valid windows, and the best of them races the parent
    (:func:`~ppf.agent.choice.race`, the parent on the floor) on ``budgets`` windows, the ``low``
    windows it was picked on left out of the comparison: it leaves as soon as it is worse, and replaces
    the parent only when its paired interval against it lies wholly below 0 on the LAST budget (measured
    to the end: an early look on few windows decides nothing in its favour). Returns (the last
    parent, one record per measurement)."""
    rng = random.Random(f"{seed}:{ratio:.4f}")
    parent, log = start, []
    later = [b for b in budgets if b > low]
    for g in range(1, generations + 1):
        offspring = screen(propose(Policy.parse(parent.policy), rng))
        if not offspring or not later:
            break
        judged = []
        for child in offspring:
            e = entry_of(child)
            e.nll = np.asarray(measure(e, 0, low), dtype=np.float64)
            judged.append(e)
        judged.sort(key=lambda e: (float(e.nll[:low].mean()), e.policy))
        log += [{"generation": g, "policy": e.policy, "windows": low, "ppl_valid": rule.ppl(e, 0, low),
                 "status": "judged", "accepted": False} for e in judged]
        best = judged[0]
        parent.floor, best.floor = True, False
        answer, decision, records = race([parent, best], later, measure, rule, held_out=low, confirm=True)
        accepted = answer is best
        for x in records:
            mine = x["policy"] == best.policy
            vs = rule.compare(best, parent, low, low + x["windows"]) if mine else None
            log.append({"generation": g, "policy": x["policy"], "windows": x["windows"], "ppl_valid": x["ppl_valid"],
                        "status": x["status"], "vs_parent_pct": None if vs is None else vs["diff_pct"],
                        "vs_parent_lo": None if vs is None else vs["ci_lo"], "vs_parent_hi": None if vs is None else vs["ci_hi"],
                        "accepted": accepted and mine and x["stage"] == decision["stages"] - 1})
        if accepted:
            parent = best
    return parent, log


def refine_choices(choices: dict[str, dict[str, Any]], predictor: Any, params: Any, entry_of: Callable[[Policy, float], Entry],
                   measure: Callable[[Entry, int, int], Sequence[float]], budgets: Sequence[int], rule: Rule
                   ) -> tuple[dict[str, dict[str, Any]], list[dict]]:
    """Every static ratio's final choice refined (:func:`refine`, ``agent.refine``): mutants screened by
    ``predictor`` (lowest predicted signal per actual ratio), made into entries by ``entry_of(policy,
    ratio)``, judged on ``agent.validation.ppl_windows``, the best raced against the choice on
    ``budgets``. Returns (the choices, each with ``refined_from`` / ``refined_from_ppl_valid`` and, when a
    mutant won, ``contender: refined``; one record per measurement with its ratio)."""
    a = params.agent
    cfg, planner = a.refine, predictor.planner
    if cfg.generations == 0:
        return choices, []
    methods = [m for m in AGENT_METHODS if m in planner.layer_scores]
    out, log = {}, []
    for key, c in choices.items():
        ratio, seen = float(key), set[bytes]()

        def plan_key(p: Policy, ratio: float = ratio) -> bytes:  # policies that plan alike are one candidate
            return b"".join(np.asarray(m).tobytes() for m in planner.masks(p, ratio)[:3])

        def propose(parent: Policy, rng: random.Random, ratio: float = ratio, seen: set[bytes] = seen) -> list[Policy]:
            return mutants(parent, ratio, cfg.proposals, rng, planner.shape, planner.max_layer_ratio,
                           planner.block_order, seen, methods, key=plan_key)

        def screen(policies: list[Policy], ratio: float = ratio) -> list[Policy]:
            rated = []
            for p in policies:
                pred = predictor.predict(p, ratio)
                rated.append((pred["score"] / pred["actual_ratio"], str(p), p))
            return [p for _, _, p in sorted(rated, key=lambda x: (x[0], x[1]))[: cfg.offspring]]

        def entry_at(p: Policy, ratio: float = ratio) -> Entry:
            return entry_of(p, ratio)

        t = time.perf_counter()
        start = Entry(c["_key"], list(c["contenders"]), c["policy"], True, np.asarray(c["_nll"]), c["_row"])
        best, records = refine(start, ratio, propose=propose, screen=screen,
                               entry_of=entry_at, measure=measure,
                               low=a.validation.ppl_windows, budgets=budgets, rule=rule,
                               generations=cfg.generations, seed=cfg.seed)
        out[key] = {**c, "refined_from": c["policy"], "refined_from_ppl_valid": c["ppl_valid"], "policy": best.policy}
        if best is not start:  # both on the same windows: all the start was measured on, at least the choice's
            w = start.nll.size
            if best.nll.size < w:
                best.nll = np.concatenate([best.nll, np.asarray(measure(best, best.nll.size, w), dtype=np.float64)])
            out[key] |= {"contender": "refined", "refined_from_contender": c["contender"], "allocation": None,
                         "ppl_valid": rule.ppl(best, 0, w), "refined_from_ppl_valid": rule.ppl(start, 0, w),
                         "windows": w, "refined_vs_choice": rule.compare(best, start, a.validation.ppl_windows, w),
                         "_key": best.key, "_nll": best.nll, "_row": best.row}
        out[key]["_refine_seconds"] = time.perf_counter() - t
        log += [{"ratio": ratio, **r} for r in records]
    return out, log
