"""Zero-shot accuracy of an in-memory model on the built tasks, through lm-eval.

lm-eval does the scoring (log-likelihood of each choice, ``acc`` and length-normalized
``acc_norm``) so our numbers mean what they mean in papers. It is driven in-process with the
model object itself (``HFLM(pretrained=model)``), so a pruned model is evaluated without being
saved and reloaded, offline (the tasks are local JSONL files), and quietly: lm-eval's info logs
are silenced for the duration of the call.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from ppf.data.tasks import lm_eval_include_dir, read_records
from ppf.errors import PPFError


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
                num_fewshot=0, bootstrap_iters=0, log_samples=False, random_seed=None,
                numpy_random_seed=None, torch_random_seed=None, fewshot_random_seed=None,
            )
    finally:
        model.train(was_training)
    results: dict = {}
    for name in names:
        r = out["results"][f"ppf_{name}"]
        results[name] = {"acc": float(r["acc,none"]), "acc_norm": float(r["acc_norm,none"]),
                         "n": int(out["n-samples"][f"ppf_{name}"]["effective"])}
    results["mean"] = {m: statistics.fmean(results[n][m] for n in names)
                       for m in ("acc", "acc_norm")}
    return results


def chance_level(tasks_dir: Path, name: str) -> float:
    """Expected accuracy of random guessing on a built task: the mean of 1 / #choices."""
    records = read_records(tasks_dir, name)
    if not records:
        raise PPFError(f"task {name!r} in {str(tasks_dir)!r} has no examples; rebuild it")
    return statistics.fmean(1 / len(r["choices"]) for r in records)


def evaluate_model(model_ref: str, root: Path, params, splits: list[str] = ("valid", "test"),
                   zero_shot_tasks: bool = True, base: str | None = None) -> dict:
    """Perplexity per corpus split, zero-shot accuracy and (with ``base``) JS vs the dense model.

    ``model_ref`` is a base model name/path or a pruned ppf checkpoint; ``params`` the validated
    params.yaml (its ``eval`` and ``js`` sections are used). Splits and tasks come from the prepared
    ``root/data``. Returns a JSON-able dict (the shape of metrics/dense.json).
    """
    import time

    from ppf.data.corpus import tokenize_text
    from ppf.engine import load_model, token_batches
    from ppf.metrics import js_divergence, perplexity

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
        base_model, base_tok = load_model(base, params.model.dtype)
        _, heldout = token_batches(Path(root), base, base_tok, params)
        js = js_divergence(base_model, model, heldout, params.js.batch_size)
        result["js"] = {"base": str(base), "js": js, "tokens": heldout.numel()}
        del base_model
    if zero_shot_tasks:
        result["zero_shot"] = zero_shot(model, tokenizer, Path(root) / "data" / "tasks",
                                        limit=ev.zero_shot_limit, batch_size=max(ev.batch_size, 8))
    result["seconds"] = time.perf_counter() - start
    return result
