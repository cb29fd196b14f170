"""One no-grad pass over the calibration batch that gathers every activation statistic ppf needs.

Layer importance (OWL's LOD, ShortGPT's BI) and Wanda-style unit importance all read the same few
numbers, so they are collected together with forward hooks in a single sweep instead of one sweep
per method: for a 135M model on CPU the forward passes are the whole cost.

Per decoder layer we keep
  * ``sq[name]``: the sum over calibration tokens of x_j^2 for every input feature j of the four
    distinct linear inputs (q/k/v share one input, gate/up share one), so ``sqrt(sq)`` is Wanda's
    ||X_j||_2;
  * ``cos``: the sum over tokens of cos(h_in, h_out) of the whole block (ShortGPT).
Hooks sit on the decoder layers themselves rather than using ``output_hidden_states``, because the
last entry of that tuple may be taken after the final norm, which would distort the last layer's BI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ppf.arch import ATTN, MLP, LayerView
from ppf.errors import PPFError

LINEARS = ATTN + MLP  # the seven prunable linears of a decoder layer
# the linear whose input we hook -> the linears that read that same input
INPUTS = {"q_proj": ("q_proj", "k_proj", "v_proj"), "o_proj": ("o_proj",),
          "gate_proj": ("gate_proj", "up_proj"), "down_proj": ("down_proj",)}
SOURCE = {reader: hooked for hooked, readers in INPUTS.items() for reader in readers}


@dataclass
class LayerStats:
    sq: dict[str, torch.Tensor] = field(default_factory=dict)  # hooked linear -> sum_t x_tj^2 (float32)
    cos: float = 0.0  # sum over tokens of cos(h_in, h_out)
    tokens: int = 0

    def input_norm(self, linear: str) -> torch.Tensor:
        """||X_j||_2 over calibration tokens for each input feature of ``linear`` (any of the 7)."""
        return self.sq[SOURCE[linear]].sqrt()

    @property
    def bi(self) -> float:
        """ShortGPT's Block Influence: 1 - mean cosine similarity between block input and output."""
        return 1.0 - self.cos / max(self.tokens, 1)


def check_calib(calib: torch.Tensor) -> None:
    if not isinstance(calib, torch.Tensor) or calib.dim() != 2 or calib.dtype != torch.long or calib.numel() == 0:
        got = f"{tuple(calib.shape)} {calib.dtype}" if isinstance(calib, torch.Tensor) else type(calib).__name__
        raise PPFError(f"calibration tokens must be a non-empty LongTensor [N, L], got {got}; "
                       "tokenize the calibration text into fixed-length rows first")


@torch.no_grad()
def collect(model: nn.Module, views: list[LayerView], calib: torch.Tensor, *, batch_size: int = 4,
            norms: bool = True, cosine: bool = True) -> list[LayerStats]:
    """Run ``calib`` through the decoder (no lm_head) in micro-batches and return per-layer stats."""
    check_calib(calib)
    stats = [LayerStats() for _ in views]
    handles = []

    def sq_hook(st: LayerStats, name: str):
        def hook(_mod, args):
            x = args[0].detach().float()
            s = x.pow(2).sum(dim=tuple(range(x.dim() - 1)))
            st.sq[name] = st.sq[name] + s if name in st.sq else s
        return hook

    def cos_hook(st: LayerStats):
        def hook(_mod, args, kwargs, out):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = out[0] if isinstance(out, tuple) else out
            c = torch.nn.functional.cosine_similarity(h_in.float(), h_out.float(), dim=-1)
            st.cos += c.sum().item()
            st.tokens += c.numel()
        return hook

    for view, st in zip(views, stats, strict=True):
        if norms:
            for name in INPUTS:
                handles.append(getattr(view, name).register_forward_pre_hook(sq_hook(st, name)))
        if cosine:
            handles.append(view.module.register_forward_hook(cos_hook(st), with_kwargs=True))
    device = next(model.parameters()).device
    try:
        for batch in calib.split(batch_size):
            model.model(input_ids=batch.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return stats
