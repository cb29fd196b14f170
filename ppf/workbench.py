"""One dense model and everything pruning and judging it needs, for one project and its params.

A :class:`Workbench` is built from (project root, params) and computes each thing once, on first
use: the model's shape (from its config alone), the token batches (calibration from train,
held-out JS tokens from valid: ONE reader), the importance scores (cached on disk), the
:class:`~ppf.policy.Planner` (the one way to make a plan), the dense model, its reference
log-probabilities on the held-out tokens, and tokenized corpus splits. :meth:`Workbench.pruned`
makes a pruned copy that shares with the dense model what pruning never touches (embeddings, head,
final norm), so a policy costs one copy of the blocks and one forward.

Collection, the agent's true judge, ``ppf predict --verify``, ``ppf prune``, the benchmark and the
flows all use it; nothing else loads a dense model for pruning.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ppf.block_order import as_order, cached_removal_order
from ppf.compensate import DenseStatistics, compensate_plan, dense_statistics
from ppf.config import Params
from ppf.data.corpus import calibration_batch, tokenize_text
from ppf.errors import PPFError
from ppf.importance import Importance, cached_importance
from ppf.io import read_tensors
from ppf.metrics import divergences, matmul_precision, next_token_logprobs, perplexity, perplexity_of, window_nll
from ppf.models import load, load_config
from ppf.paths import cache_dir
from ppf.plan import DenseShape, PruningPlan
from ppf.policy import Planner, UnitRanks
from ppf.prune import prune_model

TOKENS = Path("data") / "calibration" / "tokens.safetensors"


class Workbench:
    """The dense model ``params.model.name`` of the project at ``root``, loaded lazily.

    Importance scores are read from the project's ``data/importance`` (or the user cache); with
    ``compute_importance`` a miss computes them with the dense model (for callers that load it anyway).
    """

    def __init__(self, root: str | Path, params: Params, compute_importance: bool = False):
        self.root, self.params, self.compute_importance = Path(root), params, compute_importance
        self.name = params.model.name
        self._splits: dict[str, torch.Tensor] = {}
        self._statistics: DenseStatistics | None = None

    @classmethod
    def of(cls, model: nn.Module, tokenizer: Any, params: Params, calibration: torch.Tensor, heldout: torch.Tensor,
           root: str | Path = ".") -> "Workbench":
        """A workbench around an in-memory dense model and token batches (tests, notebooks): the
        importance is computed from them, in memory."""
        wb = cls(root, params)
        # the cached properties, given instead of computed (a cached_property takes an assignment)
        wb._loaded, wb.tokens, wb.shape = (model.eval(), tokenizer), (calibration, heldout), DenseShape.of(model)
        pp = params.pruning
        wb.planner = wb._planner(cached_importance(model, wb.name, calibration, pp.unit_importance, pp.outlier_m, (), None))
        return wb

    # ---- numbers only (no weights) -------------------------------------------------------------
    @cached_property
    def shape(self) -> DenseShape:
        return DenseShape.of(load_config(self.name))

    @cached_property
    def tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(calibration [N, L] from train, held-out [n, l] from valid) for this model.

        The prepared file is used when it was made for this model and these settings; otherwise the
        batches are drawn the same way from the prepared corpus with this model's tokenizer.
        """
        p = self.params
        path = self.root / TOKENS
        if path.is_file():
            tensors, meta = read_tensors(path)
            if meta.get("model") == str(self.name) and meta.get("calibration") == p.calibration.model_dump() \
                    and meta.get("heldout") == p.heldout.model_dump():
                return tensors["calibration"], tensors["heldout"]
        corpus = self.root / "data" / "corpus"
        if not (corpus / "train.txt").is_file() or not (corpus / "valid.txt").is_file():
            raise PPFError(f"no prepared corpus in '{corpus}'; run `dvc repro prepare` in the project first")
        cal, js = p.calibration, p.heldout
        return (calibration_batch(self.split_tokens("train"), cal.n_samples, cal.seqlen, cal.seed),
                calibration_batch(self.split_tokens("valid"), js.n_samples, js.seqlen, js.seed))

    def importance(self, compute: bool = False, save_to: Path | None = None) -> Importance:
        """The dense model's importance scores, from the project's ``data/importance`` or the user
        cache; with ``compute`` a miss runs the model (saved to ``save_to``, default the user cache)."""
        pp = self.params.pruning
        folders = (self.root / "data" / "importance", cache_dir() / "importance")
        if save_to is not None:
            folders = (Path(save_to),)
        return cached_importance(self.model if compute else None, self.name, self.tokens[0], pp.unit_importance,
                                 pp.outlier_m, folders, save_to or (cache_dir() / "importance" if compute else None))

    def block_steps(self, max_ratio: float | None, compute: bool = False, save_to: Path | None = None,
                    progress: Callable[[int, float], None] = lambda step, ratio: None) -> list[dict] | None:
        """BlockPruner's greedy removal order up to ``max_ratio`` on ``benchmark.blockpruner``'s
        calibration slice, from ``data/importance`` or the user cache; with ``compute`` a miss runs the
        search (saved to ``save_to``, default the user cache); None on a miss without ``compute``.
        ``max_ratio=None``: the whole stored order (never searched)."""
        bp = self.params.benchmark.blockpruner
        batch = self.tokens[0][: bp.n_samples, : bp.seqlen].long()
        folders = (self.root / "data" / "importance", cache_dir() / "importance")
        if save_to is not None:
            folders = (Path(save_to),)
        return cached_removal_order(self.model if compute else None, self.name, batch, self.shape, max_ratio,
                                    folders, save_to or (cache_dir() / "importance" if compute else None), progress)

    @cached_property
    def planner(self) -> Planner:
        return self._planner(self.importance(compute=self.compute_importance))

    def _planner(self, imp: Importance) -> Planner:
        """The planner over ``imp``, with BlockPruner's order where one is stored (any length: a
        policy's ``blocks=N`` takes its first ``depth`` blocks, and says so when it is too short)."""
        pp = self.params.pruning
        return Planner(str(self.name), self.shape, dict(imp.layer), UnitRanks.of(imp.units, self.shape),
                       pp.max_layer_ratio, pp.tolerance, self.stored_block_order())

    def stored_block_order(self) -> tuple[tuple[str, int], ...] | None:
        """BlockPruner's whole stored order as ``((kind, layer), ...)`` (no search; None when none is stored)."""
        steps = self.block_steps(None)
        return None if steps is None else as_order(steps)

    # ---- the dense model -----------------------------------------------------------------------
    @cached_property
    def _loaded(self) -> tuple[nn.Module, Any]:
        m = self.params.model
        model, tokenizer = load(m.name, m.dtype, m.device)
        return model.eval(), tokenizer

    @property
    def model(self) -> nn.Module:
        return self._loaded[0]

    @property
    def tokenizer(self) -> Any:
        return self._loaded[1]

    def split_tokens(self, split: str) -> torch.Tensor:
        """A prepared corpus split (train / valid / test, or a text file's path) as one token stream."""
        if split not in self._splits:
            path = self.root / "data" / "corpus" / f"{split}.txt"
            if split not in ("train", "valid", "test"):
                path = self.root / split
            if not path.is_file():
                raise PPFError(f"no corpus file '{path}'; run `dvc repro prepare` (or fix the path)")
            self._splits[split] = tokenize_text(self.tokenizer, path.read_text(encoding="utf-8"))
        return self._splits[split]

    @cached_property
    def reference(self) -> torch.Tensor:
        """The dense model's next-token log-probabilities on the held-out tokens (computed once)."""
        with self.forwards():
            return next_token_logprobs(self.model, self.tokens[1], self.params.heldout.batch_size)

    def forwards(self) -> Any:
        """The context every evaluation forward runs in: ``eval.matmul_precision``."""
        return matmul_precision(self.params.eval.matmul_precision)

    # ---- pruned copies -------------------------------------------------------------------------
    def copy(self) -> nn.Module:
        """A copy of the dense model sharing the modules pruning never touches."""
        m = self.model
        shared = [m.get_input_embeddings(), m.get_output_embeddings(), m.model.norm]
        memo = {id(t): t for mod in shared if mod is not None for t in (*mod.parameters(), *mod.buffers())}
        return copy.deepcopy(m, memo=memo)

    @property
    def compensation_tokens(self) -> torch.Tensor:
        return self.tokens[0][: self.params.pruning.compensation_samples or self.params.calibration.n_samples]

    @property
    def statistics(self) -> DenseStatistics:
        """The dense model's activation statistics on the compensation tokens (gathered once; every
        plan's compensation and every removed block's mean read them)."""
        return self._shared_statistics()[0]

    def _shared_statistics(self) -> tuple[DenseStatistics, bool]:
        """(the shared statistics, whether this call gathered them)."""
        fresh = self._statistics is None
        if self._statistics is None:
            pp = self.params.pruning
            self._statistics = dense_statistics(self.model, self.compensation_tokens, self.params.pruning.compensation_batch_size,
                                                gram=pp.compensation == "lsq" and pp.compensation_inputs == "dense")
        return self._statistics, fresh

    def pruned(self, plan: PruningPlan, compensation: str | None = None, blocks: str | None = None) -> nn.Module:
        """The dense model pruned to ``plan`` (a copy; the dense model stays as it is), then compensated
        (:func:`ppf.compensate.compensate_plan`: ``pruning.compensation`` unless ``compensation`` says
        otherwise, the removed blocks as ``pruning.removed_blocks`` unless ``blocks`` does; its record in
        ``model.ppf_compensation``, the shared dense statistics' one-time cost in its ``statistics_s`` when
        this call gathered them)."""
        model = prune_model(self.copy(), plan)
        model.ppf_compensation = compensate_plan(self.model, model, self.compensation_tokens, self.params.pruning,
                                                 self.params.pruning.compensation_batch_size, self._shared_statistics,
                                                 compensation, blocks)
        return model

    @torch.no_grad()
    def js(self, model: nn.Module) -> float:
        """JS(dense || model) on the held-out tokens."""
        return self.divergences(model)["js"]

    def divergences(self, model: nn.Module) -> dict[str, float]:
        """JS, KL(dense || model) and the NLL above dense on the held-out tokens, in one pass."""
        with self.forwards():  # nested with the reference's own: the same precision, restored on exit
            return divergences(self.reference, model, self.tokens[1], self.params.heldout.batch_size)

    @torch.no_grad()
    def perplexity(self, model: nn.Module, split: str, max_windows: int | None) -> float:
        ev = self.params.eval
        with self.forwards():
            return perplexity(model, self.split_tokens(split), ev.seqlen, ev.batch_size, max_windows)

    def n_windows(self, split: str) -> int:
        """How many non-overlapping ``eval.seqlen`` windows the split holds."""
        return self.split_tokens(split).numel() // self.params.eval.seqlen

    def window_order(self, split: str, seed: int | None) -> list[int]:
        """The order in which a growing budget takes the split's windows: a seeded permutation, so that
        every prefix is a random sample of the whole split (the first windows in file order come from
        one or two articles, and a paired interval on them is narrow and wrong); ``None``: file order."""
        n = self.n_windows(split)
        return list(range(n)) if seed is None else [int(i) for i in np.random.default_rng(seed).permutation(n)]

    @torch.no_grad()
    def window_nll(self, model: nn.Module, split: str, lo: int, hi: int, seed: int | None = None) -> list[float]:
        """The summed NLL of windows ``lo .. hi - 1`` of ``split`` in :meth:`window_order` (``seed``;
        ``None``: file order, the same windows and numbers as the first ``hi`` of :meth:`perplexity`'s): a
        budget can grow window by window."""
        ev = self.params.eval
        n = self.n_windows(split)
        if not 0 <= lo < hi <= n:
            raise PPFError(f"windows {lo}..{hi - 1} of the {split} split: it holds {n} windows of {ev.seqlen} tokens")
        with self.forwards():
            chosen = torch.as_tensor(self.window_order(split, seed)[lo:hi])
            tokens = self.split_tokens(split)[: n * ev.seqlen].view(n, ev.seqlen)[chosen].reshape(-1)
            return window_nll(model, tokens, ev.seqlen, ev.batch_size).tolist()

    @torch.no_grad()
    def judge(self, plan: PruningPlan, ppl_windows: int | None = None, window_seed: int | None = None) -> dict[str, Any]:
        """Prune for real and measure: true JS, KL and NLL above dense on the held-out tokens
        (:func:`ppf.metrics.divergences`; + valid perplexity on the first ``ppl_windows`` windows of
        :meth:`window_order` (``window_seed``), with each window's summed NLL in ``nll_valid``, for
        paired comparisons)."""
        t = time.perf_counter()
        pruned = self.pruned(plan)
        out: dict[str, Any] = {**self.divergences(pruned), "compensation": pruned.ppf_compensation["method"]}
        if ppl_windows is not None:
            nll = self.window_nll(pruned, "valid", 0, min(ppl_windows, self.n_windows("valid")), window_seed)
            out |= {"ppl_valid": perplexity_of(torch.tensor(nll, dtype=torch.float64), self.params.eval.seqlen),
                    "nll_valid": nll}
        out["seconds"] = time.perf_counter() - t
        return out
