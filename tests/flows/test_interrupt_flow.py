"""Ctrl-C as a new user presses it: SIGINT to the whole foreground group during `dvc repro collect`
(the temporary Prefect server gets it too). The run stops within seconds with one line saying how to
resume, and the rerun loses and duplicates nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pandas as pd
from tiny import git_project, subprocess_env

from conftest import build_wheel


def test_ctrl_c_stops_at_once_and_the_rerun_resumes(tmp_path, tiny_model_cache):
    root = git_project(tmp_path / "project", build_wheel(tmp_path / "gensim-4.4.0-py3-none-any.whl"))
    env = subprocess_env(PPF_CACHE_DIR=str(tiny_model_cache))  # no PREFECT_API_URL: a temporary server per flow
    subprocess.run(["dvc", "repro", "importance"], cwd=root, env=env, check=True, capture_output=True, timeout=600)
    storage = root / ".prefect" / "storage"  # a persisted result per finished (cached) task
    before: set[str] = set()

    def results() -> dict[str, int]:
        """{result file: mtime_ns} of the tasks collect finished (importance's are left out)."""
        files = [f for f in storage.glob("*") if f.is_file() and f.name not in before] if storage.is_dir() else []
        return {f.name: f.stat().st_mtime_ns for f in files}

    before = set(results())
    n = 24 + 4  # the tiny profile's samples + its within-ratio set
    proc = subprocess.Popen(["dvc", "repro", "collect"], cwd=root, env=env, text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # wait for an event, not a fixed time: the first sample's result persisted (a generous overall limit
    # only against a hang)
    deadline = time.monotonic() + 900
    while not results():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no sample finished in 15 minutes"
        time.sleep(0.2)
    at_signal = results()
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=300)  # only against a hang; "at once" is checked by the work done
    assert proc.returncode != 0 and "Traceback" not in out and "ConnectError" not in out, out[-3000:]
    assert "interrupted: finished work is cached; run the same command again" in out
    assert not (root / "data" / "masks" / "samples.parquet").exists()
    # it stopped at once: at most the one sample in flight when the signal came finished, not the rest
    stopped = results()
    assert at_signal.items() <= stopped.items() and len(stopped) <= len(at_signal) + 1 < n, (len(at_signal), len(stopped))
    again = subprocess.run(["dvc", "repro", "collect"], cwd=root, env=env, text=True, capture_output=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    df = pd.read_parquet(root / "data" / "masks" / "samples.parquet")
    assert len(df) == n and df.key.is_unique and int(df.holdout.sum()) == 4
    # the rerun resumed: it evaluated only the missing samples (the finished ones' results untouched)
    resumed = results()
    assert len(resumed) == n and stopped.items() <= resumed.items()
