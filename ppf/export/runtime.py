"""Running an exported GGUF in llama.cpp (``llama_cpp``, the ``ppf[gguf]`` extra): perplexity and speed.

Perplexity is measured exactly as :func:`ppf.metrics.perplexity` measures a PyTorch model — the
same non-overlapping ``seqlen`` windows of the same token ids (tokenized by the transformers
tokenizer, so both runtimes see identical inputs), each window scored on its own, exp of the mean
next-token NLL — with llama.cpp computing the logits of every position (``logits_all``) and the
log-softmax done here in float64 numpy.

Generation speed is batch-1 greedy decoding, timed like :func:`ppf.evaluate.speed` times
``model.generate``: the whole call (a short prompt, then ``new_tokens`` tokens) divided by
``new_tokens``; the best and the median of ``repeats`` runs are reported (on a shared machine the
best is the least disturbed).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ppf.errors import PPFError
from ppf.export.gguf import require_llama_cpp

PROMPT = "The history of the city"


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)


@contextmanager
def open_gguf(path: str | os.PathLike, n_ctx: int, n_threads: int | None = None,
              logits_all: bool = False) -> Iterator[Any]:
    """A ``llama_cpp.Llama`` on ``path`` (closed afterwards); a missing or unreadable file is a PPFError."""
    llama_cpp = require_llama_cpp("running a GGUF")
    path = Path(path)
    if not path.is_file():
        raise PPFError(f"GGUF file '{path}' does not exist; write one with `ppf export DIR --gguf {path}`")
    try:
        llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                              n_threads=n_threads or default_threads(), logits_all=logits_all, verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise PPFError(f"llama.cpp cannot load '{path}' ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                       "is it a GGUF written by `ppf export`?") from None
    try:
        yield llm
    finally:
        llm.close()


def _window_nll(llm: Any, ids: list[int]) -> float:
    llm.reset()
    llm.eval(ids)
    logits = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)
    m = logits.max(axis=-1, keepdims=True)
    logz = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=-1)))
    return float((logz - logits[np.arange(len(ids) - 1), ids[1:]]).sum())


def perplexity(path: str | os.PathLike, tokens: torch.Tensor, seqlen: int, max_windows: int | None = None,
               n_threads: int | None = None) -> dict[str, Any]:
    """``{"ppl", "tokens", "windows", "seconds"}`` of the GGUF on ``tokens``' windows (see module doc)."""
    from ppf.metrics import windows

    data = windows(tokens.long(), seqlen, max_windows)
    t = time.perf_counter()
    with open_gguf(path, n_ctx=seqlen, n_threads=n_threads, logits_all=True) as llm:
        if int(data.max()) >= llm.n_vocab():
            raise PPFError(f"the token ids reach {int(data.max())} but '{path}' has a vocabulary of {llm.n_vocab()}: "
                           "the GGUF was exported from another model than the tokenizer's")
        nll = sum(_window_nll(llm, row.tolist()) for row in data)
    count = data.shape[0] * (seqlen - 1)
    return {"ppl": math.exp(nll / count), "tokens": int(data.numel()), "windows": int(data.shape[0]),
            "seconds": time.perf_counter() - t}


def generation_speed(path: str | os.PathLike, prompt_ids: list[int], new_tokens: int = 64, repeats: int = 3,
                     n_threads: int | None = None, llm: Any = None) -> dict[str, Any]:
    """Batch-1 greedy generation tokens/s of the GGUF: ``{"tok_s" (best), "median_tok_s", "runs"}``."""
    if new_tokens < 1 or repeats < 1:
        raise PPFError(f"new_tokens ({new_tokens}) and repeats ({repeats}) must be >= 1")
    if llm is None:
        with open_gguf(path, n_ctx=len(prompt_ids) + new_tokens + 8, n_threads=n_threads) as opened:
            return generation_speed(path, prompt_ids, new_tokens, repeats, n_threads, opened)
    _generate(llm, prompt_ids, 4)  # warm-up: page in the weights, build the graph
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        _generate(llm, prompt_ids, new_tokens)
        runs.append(new_tokens / (time.perf_counter() - t))
    return {"tok_s": max(runs), "median_tok_s": statistics.median(runs), "runs": runs, "new_tokens": new_tokens}


def _generate(llm: Any, prompt_ids: list[int], n: int) -> list[int]:
    llm.reset()
    out = []
    for tok in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
        out.append(tok)
        if len(out) >= n:
            break
    return out


def tokenizer_agreement(path: str | os.PathLike, tokenizer: Any, text: str) -> float | None:
    """Share of positions where llama.cpp's tokenization of ``text`` equals ``tokenizer``'s (None: no vocab)."""
    with open_gguf(path, n_ctx=64) as llm:
        try:
            mine = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        except Exception:  # a GGUF exported with tokenizer='none' cannot tokenize
            return None
    theirs = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = max(len(mine), len(theirs))
    # strict=False: the longer one's extra tokens count as misses (over n, the longer length)
    return sum(a == b for a, b in zip(mine, theirs, strict=False)) / n if n else 1.0


def evaluate_gguf(path: str | os.PathLike, tokenizer: Any, corpus: Path, splits: list[str], seqlen: int,
                  max_windows: int | None, n_threads: int | None = None, new_tokens: int = 64,
                  repeats: int = 3) -> dict[str, Any]:
    """Perplexity per corpus split and generation speed of a GGUF (the shape of ``ppf eval``'s result)."""
    from ppf.data.corpus import tokenize_text

    missing = [s for s in splits if not (Path(corpus) / f"{s}.txt").is_file()]
    if missing:
        raise PPFError(f"no {missing[0]} split in '{corpus}'; run `dvc repro prepare` in the project first")
    start = time.perf_counter()
    result: dict[str, Any] = {"gguf": str(path), "threads": n_threads or default_threads(), "perplexity": {}}
    for split in splits:
        text = (Path(corpus) / f"{split}.txt").read_text(encoding="utf-8")
        tokens = tokenize_text(tokenizer, text)
        result["perplexity"][split] = perplexity(path, tokens, seqlen, max_windows, n_threads)
        if "tokenizer_agreement" not in result:
            result["tokenizer_agreement"] = tokenizer_agreement(path, tokenizer, text[:4000])
    prompt = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    result["generation"] = generation_speed(path, prompt, new_tokens, repeats, n_threads)
    result["seconds"] = time.perf_counter() - start
    return result


def load_tokenizer(model_ref: str) -> Any:
    """The transformers tokenizer of a ppf checkpoint, an embedded model name or a model directory."""
    from transformers import AutoTokenizer

    from ppf import checkpoint, models

    path = Path(str(model_ref)).expanduser()
    if str(model_ref) not in models.EMBEDDED and (path / checkpoint.LAYERS).is_file():
        checkpoint.register_with_transformers()
        where = path
    else:
        where = models.resolve(model_ref)
    try:
        return AutoTokenizer.from_pretrained(where, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise PPFError(f"cannot load the tokenizer of '{model_ref}' ({str(exc).splitlines()[0]})") from None
