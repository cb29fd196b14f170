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
from ppf.data.tasks import lm_eval_include_dir, read_records, task_meta
from ppf.errors import PPFError
from ppf.metrics import matmul_precision, perplexity
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
        for (mod, attr, _), value in zip(patched, originals, strict=True):
            setattr(mod, attr, value)
        if bars:
            datasets.enable_progress_bars()
        for lg, lvl in zip(loggers, saved, strict=True):
            lg.setLevel(lvl)


def available_tasks(tasks_dir: Path) -> list[str]:
    """The names of the tasks built in ``tasks_dir`` (one ``<name>.yaml`` each)."""
    return sorted(p.stem for p in Path(tasks_dir).glob("*.yaml"))


# The paper's zero-shot suite, by lm-eval's own task names (``tasks.lm_eval``; the `paper` profile).
PAPER_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _in_hf_cache(dataset: str) -> bool:
    """Whether ``dataset`` (a hub id) is in the local Hugging Face hub or datasets cache."""
    from datasets import config
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE) / f"datasets--{dataset.replace('/', '--')}"
    return hub.is_dir() or (Path(config.HF_DATASETS_CACHE) / dataset.replace("/", "___")).is_dir()


def check_registry_tasks(names: list[str] | tuple[str, ...], manager=None) -> dict[str, str | None]:
    """{name: its hub dataset} for lm-eval registry tasks, after checking that lm-eval knows each one
    and that its dataset is in the local Hugging Face cache or the hub is reachable; otherwise ONE
    PPFError naming the task, the dataset and the fix (never a wait on the network)."""
    if not names:
        return {}
    if manager is None:
        from lm_eval.tasks import TaskManager

        manager = TaskManager()
    out, reachable = {}, None
    for name in names:
        entry = manager.task_index.get(name)
        if entry is None:
            raise PPFError(f"lm-eval has no task {name!r} (tasks.lm_eval); the paper's suite is "
                           f"{', '.join(PAPER_TASKS)}")
        dataset = (getattr(entry, "cfg", None) or {}).get("dataset_path")
        if dataset and not Path(dataset).exists() and not _in_hf_cache(dataset):
            reachable = _hub_reachable() if reachable is None else reachable
            if not reachable:
                sub = (entry.cfg or {}).get("dataset_name")
                raise PPFError(f"lm-eval task {name!r} needs the dataset '{dataset}'" + (f" ({sub})" if sub else "")
                               + " which is not in the local Hugging Face cache and the hub is unreachable; on a "
                               f"connected machine run python -c \"import datasets; datasets.load_dataset('{dataset}'"
                               + (f", '{sub}'" if sub else "") + ")\" and copy ~/.cache/huggingface here, "
                               "or take it out of tasks.lm_eval")
        out[name] = dataset
    return out


def _metric(r: dict, key: str) -> float:
    return float(r[key]) if key in r and r[key] is not None else float("nan")


def zero_shot(model, tokenizer, tasks_dir: Path, names: list[str] | None = None,
              limit: int | None = None, batch_size: int = 16, registry: list[str] | tuple[str, ...] = ()) -> dict:
    """``{task: {"acc", "acc_norm", "score", "metric", "chance", "n", "correct", ...}, ..., "mean": {...}}``.

    ``names`` defaults to every task in ``tasks_dir``; ``limit`` takes the first ``limit``
    examples of each (the JSONL is already in a seeded order balanced in every prefix). ``registry``
    adds lm-eval's own tasks by name (e.g. :data:`PAPER_TASKS`), checked first by
    :func:`check_registry_tasks`; a task without ``acc_norm`` reports its ``acc`` there. ``score`` is
    the accuracy the task is read by (its metadata's ``ppf_metric``; ``acc_norm`` for a registry task
    that has it), ``correct`` its per-example 0/1 in the file's order (for paired comparisons),
    ``perplexity`` a cloze target's. The mean is unweighted over tasks, so a large task does not drown
    the others. lm-eval's own seeding is switched off so the caller's global RNG state is left alone;
    zero-shot scoring uses no randomness.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tasks_dir = Path(tasks_dir)
    built = available_tasks(tasks_dir) if tasks_dir.is_dir() else []
    names = built if names is None else list(names)
    for name in names:
        if name not in built:
            raise PPFError(f"task {name!r} is not built in {str(tasks_dir)!r} (built: "
                           f"{', '.join(built) or 'none'}); build it first or fix tasks.names")
    meta = {}
    for name in names:
        read_records(tasks_dir, name)  # one clear error for a missing, empty or malformed task file
        meta[name] = task_meta(tasks_dir, name)
    if not names and not registry:
        raise PPFError(f"no tasks built in {str(tasks_dir)!r}; run the data stage first")
    if limit is not None and limit < 1:
        raise PPFError(f"evaluation limit = {limit!r} must be a positive number of examples "
                       f"(or null for all)")
    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory(prefix="ppf-lm-eval-") as work, _quiet():
            include = lm_eval_include_dir(tasks_dir, Path(work)) if names else None
            manager = TaskManager(include_path=str(include) if include else None, include_defaults=bool(registry))
            check_registry_tasks(list(registry), manager)
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            lm.loglikelihood = partial(lm.loglikelihood, disable_tqdm=True)
            out = lm_eval.simple_evaluate(
                model=lm, tasks=[f"ppf_{n}" for n in names] + list(registry), task_manager=manager, limit=limit,
                num_fewshot=0, bootstrap_iters=1,  # 1: closed-form standard errors of the means, no resampling
                log_samples=True, random_seed=None,
                numpy_random_seed=None, torch_random_seed=None, fewshot_random_seed=None,
            )
    finally:
        model.train(was_training)
    results: dict = {}
    for name, key in [(n, f"ppf_{n}") for n in names] + [(n, n) for n in registry]:
        r = out["results"][key]
        acc, se = _metric(r, "acc,none"), _metric(r, "acc_stderr,none")
        norm, norm_se = _metric(r, "acc_norm,none"), _metric(r, "acc_norm_stderr,none")
        res = {"acc": acc, "acc_norm": acc if math.isnan(norm) else norm, "acc_stderr": se,
               "acc_norm_stderr": se if math.isnan(norm) else norm_se, "n": int(out["n-samples"][key]["effective"])}
        metric = meta[name]["metric"] if name in meta else ("acc" if math.isnan(norm) else "acc_norm")
        samples = sorted(out["samples"][key], key=lambda x: x["doc_id"])
        res |= {"metric": metric, "chance": meta.get(name, {}).get("chance", float("nan")),
                "score": res[metric], "score_stderr": res[f"{metric}_stderr"],
                "correct": [float(x[metric]) for x in samples]}
        if samples and "perplexity" in samples[0]:  # a cloze: each sample's target log-likelihood
            res["perplexity"] = math.exp(-statistics.fmean(float(x["perplexity"]) for x in samples))
        results[name] = res
    every = [*names, *registry]
    keys = ("acc", "acc_norm", "score")
    results["mean"] = {m: statistics.fmean(results[n][m] for n in every) for m in keys}
    # the unweighted mean of independent task means: its standard error
    results["mean"] |= {f"{m}_stderr": math.sqrt(sum(results[n][f"{m}_stderr"] ** 2 for n in every)) / len(every)
                        for m in keys}
    return results


def evaluate_model(model_ref: str, root: Path, params, splits: list[str] = ("valid", "test"),
                   zero_shot_tasks: bool = True, base: str | None = None) -> dict:
    """Perplexity per corpus split, zero-shot accuracy and (with ``base``) JS vs the dense model.

    ``model_ref`` is a base model name/path or a pruned ppf checkpoint; ``params`` the validated
    params.yaml (its ``eval`` and ``js`` sections are used). Splits and tasks come from the prepared
    ``root/data``. Returns a JSON-able dict (the shape of metrics/dense.json). Forwards run in
    ``eval.matmul_precision``.
    """
    with matmul_precision(params.eval.matmul_precision):
        return _evaluate_model(model_ref, root, params, splits, zero_shot_tasks, base)


def _evaluate_model(model_ref: str, root: Path, params, splits: list[str], zero_shot_tasks: bool,
                    base: str | None) -> dict:
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
                                        limit=ev.zero_shot_limit, batch_size=max(ev.batch_size, 8),
                                        registry=params.tasks.lm_eval)
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
