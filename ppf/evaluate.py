"""Zero-shot accuracy of an in-memory model on the built tasks, through lm-eval.

lm-eval does the scoring (log-likelihood of each choice, ``acc`` and length-normalized
``acc_norm``) so our numbers mean what they mean in papers. It is driven in-process with the
model object itself (``HFLM(pretrained=model)``), so a pruned model is evaluated without being
saved and reloaded, offline (the tasks are local JSONL files), and quietly: lm-eval's info logs
are silenced for the duration of the call.
"""

from __future__ import annotations

import logging
import math
import statistics
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from ppf.checkpoint import load_model
from ppf.data.corpus import tokenize_text
from ppf.data.tasks import lm_eval_include_dir
from ppf.errors import PPFError
from ppf.metrics import perplexity
from ppf.workbench import Workbench


@contextmanager
def _quiet(level: int = logging.ERROR):
    """Silence lm-eval for the block: its loggers, progress bars and environment report.

    lm-eval logs at INFO/WARNING for things that are expected here (an in-memory model, local
    data), draws a tqdm bar per stage, and collects provenance we never read: ``git describe``
    (which prints "fatal:" outside a repository with commits) and torch's environment report
    (a second of subprocesses per call). All of it is restored when the block ends.
    """
    import datasets
    import lm_eval.api.task
    import lm_eval.evaluator
    from tqdm import tqdm

    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "datasets")]
    saved = [lg.level for lg in loggers]
    bars = datasets.is_progress_bar_enabled()
    patched = [(lm_eval.api.task, "tqdm", partial(tqdm, disable=True)),
               (lm_eval.evaluator, "get_git_commit_hash", lambda: None),
               (lm_eval.evaluator, "add_env_info", lambda storage: None)]
    originals = [getattr(mod, attr) for mod, attr, _ in patched]
    for lg in loggers:
        lg.setLevel(level)
    datasets.disable_progress_bars()
    for mod, attr, value in patched:
        setattr(mod, attr, value)
    try:
        yield
    finally:
        for (mod, attr, _), value in zip(patched, originals):
            setattr(mod, attr, value)
        if bars:
            datasets.enable_progress_bars()
        for lg, lvl in zip(loggers, saved):
            lg.setLevel(lvl)


def available_tasks(tasks_dir: Path) -> list[str]:
    """The names of the tasks built in ``tasks_dir`` (one ``<name>.yaml`` each)."""
    return sorted(p.stem for p in Path(tasks_dir).glob("*.yaml"))


def zero_shot(model, tokenizer, tasks_dir: Path, names: list[str] | None = None,
              limit: int | None = None, batch_size: int = 16) -> dict:
    """``{task: {"acc", "acc_norm", "n"}, ..., "mean": {"acc", "acc_norm"}}`` for the model.

    ``names`` defaults to every task in ``tasks_dir``; ``limit`` takes the first ``limit``
    examples of each (the JSONL is already a seeded subsample). The mean is unweighted over
    tasks, so a large task does not drown the others. lm-eval's own seeding is switched off so
    the caller's global RNG state is left alone; zero-shot scoring uses no randomness.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tasks_dir = Path(tasks_dir)
    built = available_tasks(tasks_dir)
    names = built if names is None else list(names)
    for name in names:
        if name not in built:
            raise PPFError(f"task {name!r} is not built in {str(tasks_dir)!r} (built: "
                           f"{', '.join(built) or 'none'}); build it first or fix tasks.names")
    if not names:
        raise PPFError(f"no tasks built in {str(tasks_dir)!r}; run the data stage first")
    if limit is not None and limit < 1:
        raise PPFError(f"evaluation limit = {limit!r} must be a positive number of examples "
                       f"(or null for all)")
    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory(prefix="ppf-lm-eval-") as work, _quiet():
            include = lm_eval_include_dir(tasks_dir, Path(work))
            manager = TaskManager(include_path=str(include), include_defaults=False)
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            lm.loglikelihood = partial(lm.loglikelihood, disable_tqdm=True)
            out = lm_eval.simple_evaluate(
                model=lm, tasks=[f"ppf_{n}" for n in names], task_manager=manager, limit=limit,
                num_fewshot=0, bootstrap_iters=1,  # 1: closed-form standard errors of the means, no resampling
                log_samples=False, random_seed=None,
                numpy_random_seed=None, torch_random_seed=None, fewshot_random_seed=None,
            )
    finally:
        model.train(was_training)
    results: dict = {}
    for name in names:
        r = out["results"][f"ppf_{name}"]
        results[name] = {"acc": float(r["acc,none"]), "acc_norm": float(r["acc_norm,none"]),
                         "acc_stderr": float(r["acc_stderr,none"]), "acc_norm_stderr": float(r["acc_norm_stderr,none"]),
                         "n": int(out["n-samples"][f"ppf_{name}"]["effective"])}
    results["mean"] = {m: statistics.fmean(results[n][m] for n in names) for m in ("acc", "acc_norm")}
    # the unweighted mean of independent task means: its standard error
    results["mean"] |= {f"{m}_stderr": math.sqrt(sum(results[n][f"{m}_stderr"] ** 2 for n in names)) / len(names)
                        for m in ("acc", "acc_norm")}
    return results


def evaluate_model(model_ref: str, root: Path, params, splits: list[str] = ("valid", "test"),
                   zero_shot_tasks: bool = True, base: str | None = None) -> dict:
    """Perplexity per corpus split, zero-shot accuracy and (with ``base``) JS vs the dense model.

    ``model_ref`` is a base model name/path or a pruned ppf checkpoint; ``params`` the validated
    params.yaml (its ``eval`` and ``js`` sections are used). Splits and tasks come from the prepared
    ``root/data``. Returns a JSON-able dict (the shape of metrics/dense.json).
    """
    start = time.perf_counter()
    ev = params.eval
    corpus = Path(root) / "data" / "corpus"
    missing = [s for s in splits if not (corpus / f"{s}.txt").is_file()]
    if missing:
        raise PPFError(f"no {missing[0]} split in '{corpus}'; run `dvc repro prepare` in the project first")
    model, tokenizer = load_model(model_ref, params.model.dtype)
    result: dict = {"model": str(model_ref), "perplexity": {}}
    for split in splits:
        tokens = tokenize_text(tokenizer, (corpus / f"{split}.txt").read_text(encoding="utf-8"))
        n_windows = tokens.numel() // ev.seqlen
        if ev.max_windows is not None:
            n_windows = min(n_windows, ev.max_windows)
        ppl = perplexity(model, tokens, ev.seqlen, ev.batch_size, ev.max_windows)
        result["perplexity"][split] = {"ppl": ppl, "tokens": n_windows * ev.seqlen}
    if base is not None:
        dense = Workbench(root, params.with_model(base))
        result["js"] = {"base": str(base), "js": dense.js(model), "tokens": dense.tokens[1].numel()}
        del dense
    if zero_shot_tasks:
        result["zero_shot"] = zero_shot(model, tokenizer, Path(root) / "data" / "tasks",
                                        limit=ev.zero_shot_limit, batch_size=max(ev.batch_size, 8))
    result["seconds"] = time.perf_counter() - start
    return result


def _rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        import os

        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``), so that the RSS a call then
    grows by is what it allocates — not hidden by pages an earlier model freed but the
    allocator kept (which made a dense model look like it needed no activation memory)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS growth may under-count
        pass


def peak_memory_during(fn, *args, interval: float = 0.002, **kwargs) -> tuple[object, float]:
    """(fn's result, peak memory in MB while it ran above what was resident before).

    On CUDA: torch's max allocated bytes. On CPU: the peak RSS growth (after freed pages went back
    to the OS), sampled by a thread every ``interval`` seconds — the activations and buffers the
    call needed on top of the weights.
    """
    import threading

    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn(*args, **kwargs)
        return out, (torch.cuda.max_memory_allocated() - base) / 2**20
    _release_free_memory()
    base, peak, done = _rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            done.wait(interval)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out = fn(*args, **kwargs)
    finally:
        done.set()
        t.join()
    return out, max(0, max(peak[0], _rss_bytes()) - base) / 2**20


def speed(model, tokenizer, seqlen: int = 512, batch: int = 4, new_tokens: int = 32) -> dict:
    """Throughput and memory of a model: batched prefill and batch-1 greedy generation.

    Returns prefill tokens/s (batch x seqlen, no cache), generation tokens/s (batch 1, KV cache),
    the weights' size and the peak memory of the prefill on top of them (MB).
    """
    import time

    import torch

    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    x = torch.randint(min(100, vocab // 2), min(10_000, vocab), (batch, seqlen),
                      generator=torch.Generator().manual_seed(0)).to(device)
    prompt = tokenizer("The history of the city", return_tensors="pt").to(device)
    with torch.no_grad():
        model(x[:1, :64], use_cache=False)  # warm-up
        t = time.perf_counter()
        _, prefill_peak = peak_memory_during(model, x, use_cache=False)
        prefill_s = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(**prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=tokenizer.eos_token_id)
        gen_s = time.perf_counter() - t
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"prefill_tok_s": x.numel() / prefill_s, "generate_tok_s": new_tokens / gen_s,
            "weights_mb": weights / 2**20, "prefill_peak_mb": prefill_peak,
            "peak_mem_mb": weights / 2**20 + prefill_peak}
