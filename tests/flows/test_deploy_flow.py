"""`ppf deploy` against a real local Prefect server: the scheduled deployments are registered with
their cron schedules, a triggered run executes `dvc repro` (+ `dvc push`) and completes, and both
processes this test started are stopped again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from tiny import git_project, subprocess_env

from conftest import build_wheel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check, timeout: float, proc: subprocess.Popen, log: Path):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
        try:
            value = check()
            if value:
                return value
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout} s:\n{log.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_deployments_are_served_and_a_triggered_run_completes(tmp_path, tiny_model_cache):
    root = git_project(tmp_path / "project", build_wheel(tmp_path / "gensim-4.4.0-py3-none-any.whl"))
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = subprocess_env(PREFECT_HOME=str(tmp_path / "prefect-home"), PPF_CACHE_DIR=str(tiny_model_cache),
                         PREFECT_API_URL=api)
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=server_log.open("w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    serve = None
    try:
        _wait("server health", lambda: httpx.get(f"{api}/health", timeout=5).status_code == 200, 180,
              server, server_log)
        serve = subprocess.Popen([str(Path(sys.executable).parent / "ppf"), "deploy"], cwd=root, env=env,
                                 stdout=serve_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

        def deployments():
            found = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
            return found if len(found) == 2 else None

        found = {d["name"]: d for d in _wait("deployments registered", deployments, 180, serve, serve_log)}
        assert set(found) == {"weekly-retrain", "nightly-benchmark"}
        crons = {n: [s["schedule"]["cron"] for s in d["schedules"]] for n, d in found.items()}
        assert crons == {"weekly-retrain": ["0 3 * * 0"], "nightly-benchmark": ["0 2 * * *"]}
        assert found["weekly-retrain"]["parameters"]["targets"] == ["train_agent"]
        assert found["weekly-retrain"]["parameters"]["force"] is True

        # trigger the nightly deployment now, on a cheap target, and wait for the run to finish
        # the server's SQLite can answer 5xx ("database is locked") while the scheduler writes the
        # deployments' scheduled runs on a loaded machine: retry the creation, show the last answer
        answers: list[httpx.Response] = []

        def created():
            answers.append(httpx.post(f"{api}/deployments/{found['nightly-benchmark']['id']}/create_flow_run",
                                      json={"parameters": {"targets": ["prepare"]}}, timeout=30))
            return answers[-1].json() if answers[-1].status_code in (200, 201) else None

        try:
            run = _wait("creating the triggered run", created, 120, server, server_log)
        except AssertionError as e:
            last = answers[-1] if answers else None
            raise AssertionError(f"{e}\nlast answer: {last and (last.status_code, last.text[:2000])}") from None
        assert "id" in run, run

        def finished():
            state = httpx.get(f"{api}/flow_runs/{run['id']}", timeout=10).json()["state"]
            return state if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

        state = _wait("the triggered run", finished, 420, serve, serve_log)
        assert state["type"] == "COMPLETED", f"{state}\n{serve_log.read_text()[-4000:]}"
        assert "  prepare:" in (root / "dvc.lock").read_text()
        assert (root / "data" / "corpus" / "test.txt").stat().st_size > 0
        assert any((tmp_path / "remote").rglob("*")), "deploy.push is on but nothing was pushed"
        artifacts = httpx.post(f"{api}/artifacts/filter", json={}, timeout=10).json()
        assert any("stages run: prepare" in (a.get("data") or "") for a in artifacts)
    finally:
        if serve is not None:
            _stop(serve)
        _stop(server)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the server is still listening"


def _project_with(tmp_path, **deploy):
    import shutil

    import yaml

    repo = Path(__file__).resolve().parents[2]
    shutil.copy(repo / "dvc.yaml", tmp_path / "dvc.yaml")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["deploy"] |= deploy
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path / "params.yaml"


def test_dry_run_lists_the_schedules(tmp_path, capsys, monkeypatch):
    from tiny import run_cli

    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(["deploy", "--dry-run", "--params", str(_project_with(tmp_path))], capsys)
    assert code == 0 and "ppf-refresh/weekly-retrain" in out and "dvc repro --force train_agent" in out


def test_an_unknown_stage_or_a_bad_cron_is_refused_before_anything_is_served(tmp_path, capsys, monkeypatch):
    from tiny import run_cli

    monkeypatch.chdir(tmp_path)
    bad_stage = _project_with(tmp_path, schedules={"x": {"cron": "0 1 * * *", "targets": ["trian_agent"]}})
    code, _, err = run_cli(["deploy", "--dry-run", "--params", str(bad_stage)], capsys)
    assert code == 2 and "unknown stage 'trian_agent'" in err
    bad_cron = _project_with(tmp_path, schedules={"x": {"cron": "0 1 * *", "targets": ["benchmark"]}})
    code, _, err = run_cli(["deploy", "--dry-run", "--params", str(bad_cron)], capsys)
    assert code == 2 and "five fields" in err
    code, _, err = run_cli(["deploy", "--params", str(_project_with(tmp_path)), "--api-url",
                            f"http://127.0.0.1:{_free_port()}/api"], capsys)
    assert code == 2 and "no Prefect server answers" in err and "prefect server start" in err
