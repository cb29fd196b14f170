"""Scheduled refreshes: ``dvc repro`` of chosen stages as a Prefect flow, served on cron schedules.

DVC stays the one that decides what reruns (and keeps dvc.lock true to the outputs); Prefect
schedules, runs, retries and records it. ``deploy.schedules`` in params.yaml names each deployment
with its cron, its dvc targets and whether to force them; ``ppf deploy`` registers them all with
the Prefect server at PREFECT_API_URL and serves them (runs each scheduled or manually triggered
run in a subprocess) until stopped. The stage commands it starts report to the same server, so
every stage's flow run shows up beside the refresh that started it.

A run: ``dvc repro [--force] TARGETS`` → ``dvc push`` (``deploy.push``) → a markdown artifact with
``dvc metrics show``. A failing stage fails the run with the end of DVC's output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.common import ROOT
from ppf.config import load_params
from ppf.errors import PPFError


def _dvc(root: Path, *args: str) -> str:
    """Run ``dvc ARGS`` in ``root`` with this interpreter's environment on PATH; return its output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"`dvc {' '.join(args)}` failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc.stdout


@task(task_run_name="dvc repro {targets}")
def repro(root: str, targets: list[str], force: bool) -> str:
    return _dvc(Path(root), "repro", *(["--force"] if force else []), *targets)


@task(task_run_name="dvc push")
def push(root: str) -> str:
    return _dvc(Path(root), "push")


@flow(name="ppf-refresh")
def refresh(root: str = str(ROOT), targets: list[str] = ["benchmark"], force: bool = False,  # noqa: B006
            push_outputs: bool = False) -> dict:
    """``dvc repro`` the targets (what changed upstream reruns too), push the outputs, report metrics."""
    log = repro(root, targets, force)
    ran = [line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage '")]
    if push_outputs:
        push(root)
    metrics = _dvc(Path(root), "metrics", "show", "--md")
    create_markdown_artifact(f"# ppf refresh: {' '.join(targets)}\n\nstages run: {', '.join(ran) or 'none'}\n\n"
                             f"{metrics}", key="ppf-refresh")
    return {"targets": targets, "stages_run": ran, "pushed": push_outputs}


def stages(root: Path) -> list[str]:
    import yaml

    return list((yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {}))


def deployments(root: Path, params_path: str = "params.yaml") -> list:
    """One deployment of :func:`refresh` per ``deploy.schedules`` entry, checked against dvc.yaml."""
    from prefect.client.schemas.schedules import CronSchedule

    d = load_params(root / params_path).deploy
    known = stages(root)
    out = []
    for name, s in d.schedules.items():
        unknown = [t for t in s.targets if t not in known]
        if unknown:
            raise PPFError(f"deploy.schedules.{name}.targets: unknown stage '{unknown[0]}'; dvc.yaml has "
                           f"{', '.join(known)}")
        try:
            schedule = CronSchedule(cron=s.cron, timezone=d.timezone)
        except ValueError as exc:
            raise PPFError(f"deploy.schedules.{name}.cron {s.cron!r} is not valid ({str(exc).splitlines()[0]}); "
                           "use five cron fields, e.g. '0 3 * * 0'") from None
        out.append(refresh.to_deployment(
            name=name, schedules=[schedule], tags=["ppf"],
            description=f"dvc repro{' --force' if s.force else ''} {' '.join(s.targets)}",
            parameters={"root": str(root), "targets": list(s.targets), "force": s.force, "push_outputs": d.push}))
    return out


def serve(root: Path, params_path: str = "params.yaml") -> None:
    """Register the deployments with the server at PREFECT_API_URL and run them until stopped."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments(root, params_path), limit=1)  # one pipeline run at a time
