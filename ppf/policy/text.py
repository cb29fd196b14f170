"""The policy as text and as a value: :class:`Policy` (parse, ``str``, validation), the names of its
parts (:data:`IMPORTANCE_METHODS`, :data:`NORMS`, :data:`DEPTH_ORDERS`, :data:`PARTS`) and the checks
of a scaling factor and of a ratio (:func:`check_a_eta`, :func:`check_ratio`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ppf.errors import PPFError

IMPORTANCE_METHODS = ("lod", "esd", "bi", "uniform")
A_ETA_MAX = 0.5  # the paper's range for the scaling factor: [0, 0.5]
NORMS = ("minmax", "rank")  # how layer scores are scaled before Eq 4
DEPTH_ORDERS = ("layers", "blocks")  # whole layers by Block Influence (ShortGPT) | BlockPruner's block order
PARTS = ("norm", "keep", "layers", "blocks", "attn")  # the extended text form's parts, in this order (layers | blocks)
# parts an older text form used, and what replaced them
RENAMED_PARTS = {"split": "attn=S (the attention share)", "depth": "layers=N (whole layers) or blocks=N (attention / MLP blocks)",
                 "order": "layers=N or blocks=N (the unit names the order)"}


# ---- the policy --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """An agent action: which layer-importance ``method`` and how strongly to follow it (``a_eta``) —
    the paper's policy — and, beyond it, where the allocation may go that (method, a_eta) cannot:

    * ``norm``: how the layer scores are scaled before Eq 4 — ``minmax`` (the paper: one outlier layer
      squeezes all the others together) or ``rank`` (the scores' ranks, evenly spaced: an outlier is
      just the first or last);
    * ``first`` / ``last``: protected edge layers, never pruned (LLM-Pruner keeps 4 and 2);
    * ``depth`` units removed first, of the kind ``order`` names: ``layers`` — whole decoder layers of
      lowest Block Influence (ShortGPT; text ``layers=N``) — or ``blocks`` — attention / MLP blocks in
      BlockPruner's greedy order (text ``blocks=N``); the rest of the target is then width-pruned over
      the layers depth and protection left alone;
    * ``attn``: the share of a layer's removed parameters taken from its attention (the rest from
      its MLP); ``None`` prunes both at the layer's ratio, as the paper does; ``groups`` is
      LLM-Pruner's rule — one unit ratio r per layer, the attention losing whole KV groups
      (floor(r·KV heads), each with its query heads), the MLP the fraction r of its channels.

    ``uniform`` ignores importance, so its ``a_eta`` (and ``norm``) are stored as defaults: two uniform
    policies are equal. The text form is ``lod:0.2`` (the paper's policy) with optional parts,
    e.g. ``lod:0.2,norm=rank,keep=4:2,layers=3,attn=0.1`` (:meth:`parse`, ``str``).
    """

    method: str
    a_eta: float = 0.0
    norm: str = "minmax"
    first: int = 0
    last: int = 0
    depth: int = 0
    order: str = "layers"
    attn: float | str | None = None

    def __post_init__(self) -> None:
        if self.method not in IMPORTANCE_METHODS:
            raise PPFError(f"unknown importance method {self.method!r}; use one of {', '.join(IMPORTANCE_METHODS)}")
        uniform = self.method == "uniform"
        object.__setattr__(self, "a_eta", 0.0 if uniform else check_a_eta(self.a_eta))
        if self.norm not in NORMS:
            raise PPFError(f"unknown score normalisation norm={self.norm!r}; use one of {', '.join(NORMS)}")
        if uniform:
            object.__setattr__(self, "norm", "minmax")
        for name in ("first", "last", "depth"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise PPFError(f"{name}={v!r} must be a whole number >= 0")
            object.__setattr__(self, name, int(v))
        if self.order not in DEPTH_ORDERS:
            raise PPFError(f"unknown depth order={self.order!r}; use one of {', '.join(DEPTH_ORDERS)}")
        if self.depth == 0:
            object.__setattr__(self, "order", "layers")
        if isinstance(self.attn, str) and self.attn.strip().lower() == "groups":
            object.__setattr__(self, "attn", "groups")
        elif self.attn is not None:
            try:
                x = float(self.attn)
            except (TypeError, ValueError):
                raise PPFError(f"attn={self.attn!r} is not a number; use the attention share in [0, 1], e.g. "
                               "attn=0.25, or attn=groups (LLM-Pruner's whole KV groups)") from None
            if not (math.isfinite(x) and 0.0 <= x <= 1.0):
                raise PPFError(f"attn={self.attn!r} is outside [0, 1]; it is the share of a layer's reduction "
                               "taken from attention, e.g. attn=0.25")
            object.__setattr__(self, "attn", x)

    def with_parts(self, parts: str) -> "Policy":
        """This policy with the extended ``parts`` of the text form (``",norm=rank,keep=2:1"``) added."""
        return Policy.parse(str(self) + parts) if parts else self

    @property
    def is_paper(self) -> bool:
        """True for the paper's (method, a_eta) policy: none of the extended parts in use."""
        return (self.norm, self.first, self.last, self.depth, self.attn) == ("minmax", 0, 0, 0, None)

    @classmethod
    def parse(cls, text: str) -> "Policy":
        """``"lod:0.2"``, ``"esd:0.1"``, ``"bi:0.3"`` or ``"uniform"``, optionally followed by
        ``,norm=minmax|rank``, ``,keep=FIRST:LAST``, ``,layers=N`` or ``,blocks=N``, ``,attn=S``
        (case and spaces ignored)."""
        if not isinstance(text, str):
            raise PPFError(f"policy {text!r} is not text; write it as method:a_eta, e.g. lod:0.2")
        head, *parts = [p.strip() for p in text.strip().lower().split(",")]
        method, sep, value = head.partition(":")
        method, value = method.strip(), value.strip()
        if method not in IMPORTANCE_METHODS:
            raise PPFError(f"unknown importance method {method!r} in policy {text!r}; use one of {', '.join(IMPORTANCE_METHODS)}")
        if method == "uniform" and not sep:
            a = 0.0
        elif not sep or not value:
            raise PPFError(f"policy {text!r} has no scaling factor; write it as {method}:<a_eta>, e.g. {method}:0.2")
        else:
            try:
                a = float(value)
            except ValueError:
                raise PPFError(f"a_eta {value!r} in policy {text!r} is not a number; write e.g. {method}:0.2") from None
        kw: dict[str, Any] = {}
        for part in parts:
            key, eq, val = (x.strip() for x in part.partition("="))
            if key in RENAMED_PARTS:
                raise PPFError(f"policy {text!r}: the part {key}= is gone; write {RENAMED_PARTS[key]}")
            if key not in PARTS or not eq or not val:
                raise PPFError(f"unknown part {part!r} in policy {text!r}; the parts after the method are "
                               "norm=minmax|rank, keep=FIRST:LAST, layers=N or blocks=N, attn=S")
            if key in kw or (key == "keep" and "first" in kw) or (key in DEPTH_ORDERS and "depth" in kw):
                raise PPFError(f"policy {text!r} gives {key} twice (or both layers= and blocks=); give one of each part")
            if key == "norm":
                kw[key] = val
            elif key == "attn":
                kw["attn"] = val
            else:
                nums = val.split(":") if key == "keep" else [val]
                if len(nums) != (2 if key == "keep" else 1) or not all(n.strip().isdigit() for n in nums):
                    want = "keep=FIRST:LAST with whole numbers, e.g. keep=4:2" if key == "keep" else f"{key}=N, e.g. {key}=3"
                    raise PPFError(f"{part!r} in policy {text!r} is not {want}")
                if key == "keep":
                    kw["first"], kw["last"] = int(nums[0]), int(nums[1])
                else:
                    kw["depth"], kw["order"] = int(nums[0]), key
        return cls(method, a, **kw)

    def __str__(self) -> str:
        # repr(float) is the shortest text that round-trips, so parse(str(p)) == p for any a_eta
        out = "uniform" if self.method == "uniform" else f"{self.method}:{self.a_eta!r}"
        if self.norm != "minmax":
            out += f",norm={self.norm}"
        if self.first or self.last:
            out += f",keep={self.first}:{self.last}"
        if self.depth:
            out += f",{self.order}={self.depth}"
        if self.attn is not None:
            out += f",attn={self.attn if self.attn == 'groups' else repr(self.attn)}"
        return out


def check_a_eta(a_eta: float) -> float:
    """``a_eta`` as a float, or a PPFError unless it lies in the paper's range [0, 0.5]."""
    try:
        a = float(a_eta)
    except (TypeError, ValueError):
        raise PPFError(f"a_eta {a_eta!r} is not a number; use a value in [0, {A_ETA_MAX}]") from None
    if not (math.isfinite(a) and 0.0 <= a <= A_ETA_MAX):
        raise PPFError(f"a_eta {a_eta!r} is outside [0, {A_ETA_MAX}]; use a scaling factor in that range")
    return a


def check_ratio(r: float, name: str = "target") -> float:
    """``r`` as a float, or a PPFError unless 0 < r < 1 (0 prunes nothing, 1 prunes everything)."""
    try:
        x = float(r)
    except (TypeError, ValueError):
        raise PPFError(f"{name} ratio {r!r} is not a number; use a fraction strictly between 0 and 1, e.g. 0.3") from None
    if not (math.isfinite(x) and 0.0 < x < 1.0):
        raise PPFError(f"{name} ratio {r!r} is outside (0, 1); use a fraction strictly between 0 and 1, e.g. 0.3")
    return x
