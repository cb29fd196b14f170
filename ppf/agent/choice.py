"""PPF's final choice at a static ratio: a race of PAIRED comparisons on growing valid budgets.

A fixed cut ("keep the best three after 8 windows") throws the winner away whenever contenders are
closer than the noise of 8 windows. Here nothing leaves without evidence:

- identical plans are merged before anything is ranked (two policy texts that plan alike are one
  :class:`Entry` with several names);
- at every stage the alive entries are measured on the first ``w`` valid windows (growing, only the
  new windows are evaluated), the leader is the lowest mean NLL, and an entry leaves only when its
  paired bootstrap interval against the leader (:func:`ppf.stats.paired_ppl_difference`, the same
  windows resampled for both) lies wholly above 0;
- the FLOOR: entries marked ``floor`` (the expressible baseline allocations: LLM-Pruner's,
  ShortGPT's, OWL's, AlphaPruning's, uniform, BlockPruner's order) are the default answer. The best
  of them is never eliminated, and the answer leaves it only for an entry whose paired interval
  against it lies wholly BELOW 0. When the budget ends with the leader tied with the floor, the floor
  is the answer, and the record says so;
- the windows grow only while some entry is still tied with the leader (or the floor's verdict is
  open), up to the last budget, and no answer comes before ``Rule.min_windows``; windows ``< held_out``
  are measured but never compared on (the refinement picks its mutant on them);
- the caller measures the split's windows in a seeded random order, so that every budget is a random
  sample of the split: the first windows in file order come from one or two articles, and a paired
  interval on them is narrow and wrong (measured: 8 such windows put LLM-Pruner's allocation "out"
  at +6.4 % [+2.1, +10.8] against a plan it beat by 9 % on 32 windows and on test).

:func:`race` is the rule, :func:`choose` applies it at every static ratio of the validation's rows,
and the refinement (:mod:`ppf.agent.refine`) uses the same rule to accept a mutant. Only the valid
split is ever used; the test split stays for the benchmark.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppf.stats import paired_ppl_difference

# the baseline allocations PPF's policy space expresses: the floor under its answer
FLOOR = {"llm_pruner": "LLM-Pruner's allocation", "shortgpt": "ShortGPT's allocation", "owl": "OWL's allocation",
         "alpha": "AlphaPruning's allocation", "uniform": "the uniform allocation",
         "blockpruner": "BlockPruner's allocation"}


@dataclass
class Entry:
    """One distinct plan in a race: every contender name that plans to it, and its per-window NLLs."""

    key: str
    names: list[str]
    policy: str
    floor: bool = False
    nll: np.ndarray = field(default_factory=lambda: np.zeros(0))  # summed NLL of valid windows 0 .. len-1
    row: dict[str, Any] = field(default_factory=dict)  # what ``measure`` needs to rebuild the plan

    @property
    def name(self) -> str:
        return self.names[0]


@dataclass(frozen=True)
class Rule:
    """How sure a comparison must be: the paired bootstrap's draws, level and seed, and the tokens
    a window predicts (``eval.seqlen - 1``)."""

    tokens_per_window: int
    n_boot: int = 1000
    level: float = 0.95
    seed: int = 0
    min_windows: int = 0  # a race ends (and answers) only once its stages compare this many windows

    def compare(self, a: Entry, b: Entry, lo: int, hi: int) -> dict[str, float] | None:
        """ppl_a / ppl_b − 1 (%) on windows [lo, hi) with its interval; None with fewer than 2 windows."""
        if hi - lo < 2:
            return None
        return paired_ppl_difference(a.nll[lo:hi], b.nll[lo:hi], self.tokens_per_window, self.n_boot, self.seed,
                                     self.level)

    def ppl(self, e: Entry, lo: int, hi: int) -> float:
        return float(np.exp(e.nll[lo:hi].mean() / self.tokens_per_window))


def merge(rows: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], str]) -> list[Entry]:
    """The rows as entries, one per distinct plan (``key``), names in row order; an entry is on the
    floor when any of its names is a baseline allocation (:data:`FLOOR`)."""
    entries: dict[str, Entry] = {}
    for row in rows:
        k = key(row)
        if k in entries:
            entries[k].names.append(row["contender"])
            entries[k].floor |= row["contender"] in FLOOR
            continue
        entries[k] = Entry(k, [row["contender"]], row["policy"], row["contender"] in FLOOR,
                           np.asarray(row.get("nll_valid", ()), dtype=np.float64), row)
    return list(entries.values())


def race(entries: Sequence[Entry], budgets: Sequence[int], measure: Callable[[Entry, int, int], Sequence[float]],
         rule: Rule, held_out: int = 0, confirm: bool = False) -> tuple[Entry, dict[str, Any], list[dict[str, Any]]]:
    """The race of ``entries`` over the window ``budgets`` (growing; each is the number of valid
    windows the alive entries are compared on at that stage). ``measure(entry, lo, hi)`` gives the
    summed NLL of windows [lo, hi) (only windows not yet measured are asked for). With ``confirm`` the
    race stops early only when nothing but the floor is left: a challenger that looks better is still
    measured to the last budget, and leaves the floor only if it is better THERE (the refinement's rule:
    one early look on few windows decides nothing in its favour).

    Returns (the answer, the decision {reason, leader, floor, vs_floor, windows, ppl_valid, stages},
    one record per (stage, alive entry))."""
    if not entries:
        raise ValueError("race: no entries")
    alive, log = list(entries), []
    leader, floor, vs_floor, w, stage = alive[0], None, None, 0, 0
    for stage, w in enumerate(budgets):
        for e in alive:
            if e.nll.size < w:
                e.nll = np.concatenate([e.nll, np.asarray(measure(e, e.nll.size, w), dtype=np.float64)])
        w = min(w, *(e.nll.size for e in alive))
        leader = min(alive, key=lambda e: (e.nll[held_out:w].mean(), e.name))
        floors = [e for e in alive if e.floor]
        floor = min(floors, key=lambda e: (e.nll[held_out:w].mean(), e.name)) if floors else None
        open_ = False
        keep = []
        for e in alive:
            c = None if e is leader else rule.compare(e, leader, held_out, w)
            out = c is not None and c["ci_lo"] > 0 and e is not floor
            status = "leader" if e is leader else "out" if out else "floor" if e is floor else "tied"
            if e is floor and e is not leader:
                open_ |= c is None or c["ci_lo"] <= 0  # the floor's verdict is still open
            elif status == "tied":
                open_ = True
            log.append({"stage": stage, "windows": w - held_out, "contender": "+".join(e.names), "policy": e.policy,
                        "ppl_valid": rule.ppl(e, held_out, w), "vs_leader_pct": None if c is None else c["diff_pct"],
                        "vs_leader_lo": None if c is None else c["ci_lo"],
                        "vs_leader_hi": None if c is None else c["ci_hi"], "status": status})
            if not out:
                keep.append(e)
        alive = keep
        if confirm:
            open_ = any(e is not floor for e in alive)
        if not open_ and (w - held_out >= rule.min_windows or len(alive) == 1):
            break
    if floor is None or floor is leader:
        answer, reason = leader, "floor: it led" if floor is leader else "led"
    else:
        vs_floor = rule.compare(leader, floor, held_out, w)
        better = vs_floor is not None and vs_floor["ci_hi"] < 0
        answer, reason = (leader, "better than the floor") if better else \
            (floor, "floor: nothing was better with the interval excluding 0")
    decision = {"reason": reason, "leader": leader.name, "floor": None if floor is None else floor.name,
                "vs_floor": vs_floor, "windows": w - held_out, "ppl_valid": rule.ppl(answer, held_out, w),
                "stages": stage + 1, "measured_windows": int(sum(e.nll.size for e in entries))}
    return answer, decision, log


def budgets(first: int, windows: Sequence[int], available: int) -> list[int]:
    """The stages' window counts: the validation's ``first``, then ``windows`` capped at ``available``."""
    out = [min(first, available)]
    for w in windows:
        if min(w, available) > out[-1]:
            out.append(min(w, available))
    return out


def choose(rows: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], str], stage_budgets: Sequence[int],
           measure: Callable[[Entry, int, int], Sequence[float]], rule: Rule
           ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The race at every static ratio of the judged rows that are policies (a search vector carries
    no policy text). Each row has ``nll_valid`` (its first windows, from the validation). Returns
    ({ratio: the choice}, one record per (ratio, stage, entry))."""
    choices, log = {}, []
    static = [x for x in rows if x["setting"] == "static" and x.get("_policy") is not None]
    for r in sorted({x["ratio"] for x in static}):
        t = time.perf_counter()
        entries = merge([x for x in static if x["ratio"] == r], key)
        best, decision, records = race(entries, stage_budgets, measure, rule)
        log += [{"ratio": r, **x} for x in records]
        allocation = next((FLOOR[n] for n in best.names if n in FLOOR), None) if best.floor else None
        choices[f"{r:g}"] = {"contender": next((n for n in best.names if n in FLOOR), best.name) if best.floor
                             else best.name, "contenders": best.names, "policy": best.policy,
                             "allocation": allocation, "ppl_valid": decision["ppl_valid"],
                             "windows": decision["windows"], "candidates": len(entries),
                             "rows": sum(len(e.names) for e in entries), "decision": decision,
                             "_key": best.key, "_nll": best.nll, "_row": best.row, "_seconds": time.perf_counter() - t}
    return choices, log


def public(choice: dict[str, Any]) -> dict[str, Any]:
    """A choice without what only the refinement needs (its NLLs and row) and its wall times: what the
    agent file stores (the same params give the same file)."""
    return {k: v for k, v in choice.items() if not k.startswith("_")}
