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
    proc = subprocess.Popen(["dvc", "repro", "collect"], cwd=root, env=env, text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not list((root / ".prefect").rglob("*")) or time.time() < deadline - 290:  # the flow is under way
        time.sleep(0.5)
        assert time.time() < deadline and proc.poll() is None
    time.sleep(8)  # some samples finish
    os.killpg(proc.pid, signal.SIGINT)
    start = time.time()
    out, _ = proc.communicate(timeout=60)
    assert time.time() - start < 15, out[-3000:]
    assert proc.returncode != 0 and "Traceback" not in out and "ConnectError" not in out, out[-3000:]
    assert "interrupted: finished work is cached; run the same command again" in out
    assert not (root / "data" / "masks" / "samples.parquet").exists()
    again = subprocess.run(["dvc", "repro", "collect"], cwd=root, env=env, text=True, capture_output=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    df = pd.read_parquet(root / "data" / "masks" / "samples.parquet")
    assert len(df) == 24 + 4 and df.key.is_unique and int(df.holdout.sum()) == 4  # + the within-ratio set (tiny)
