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

from flows.common import ROOT, PPFError, load_params


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


def check_server(url: str) -> None:
    """A PPFError naming ``url`` unless a Prefect server answers there."""
    import httpx

    try:
        httpx.get(f"{url}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        raise PPFError(f"no Prefect server answers at {url} ({type(exc).__name__}); start one with "
                       "`prefect server start` in another terminal, or pass --api-url") from None


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.scheduled [--params P] [--api-url URL] [--dry-run]`` (what ``ppf deploy`` runs):
    check the schedules; without ``--dry-run`` serve them to the server at URL until stopped."""
    import argparse

    ap = argparse.ArgumentParser(description="serve the scheduled refreshes of deploy.schedules")
    ap.add_argument("--params", default="params.yaml", help="params file, relative to the project root")
    ap.add_argument("--api-url", default=None, help="Prefect server API (default: $PREFECT_API_URL)")
    ap.add_argument("--dry-run", action="store_true", help="check the schedules; serve nothing")
    args = ap.parse_args(argv)
    root = Path.cwd()
    try:
        if args.dry_run:
            deployments(root, args.params)  # validates targets and cron expressions
            return 0
        url = (args.api_url or os.environ.get("PREFECT_API_URL") or "http://127.0.0.1:4200/api").rstrip("/")
        check_server(url)
        print(f"serving to {url} (Ctrl-C stops; scheduled runs start from the server)", file=sys.stderr, flush=True)
        os.environ["PREFECT_API_URL"] = url
        serve(root, args.params)
    except PPFError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
