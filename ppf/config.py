"""params.yaml, validated into typed objects.

params.yaml is the ONE config of the project: DVC reads its keys to decide which stage is stale,
the flows and the CLI read it through :func:`load_params`. Every section forbids unknown keys, so
a typo (``calibraton:``) fails loudly instead of being silently ignored, and every error names
the key path, the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ppf.errors import PPFError


class Section(BaseModel):
    """Base of every params section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelParams(Section):
    name: str = Field("smollm2-135m", description="embedded model name or a local transformers directory")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class BigBenchSource(Section):
    """The bigbench sdist: source of the default corpus AND of the zero-shot tasks."""

    version: str = "1.0.0"
    sdist: Path | None = Field(None, description="a local bigbench sdist instead of downloading it")


class BigBenchCorpus(Section):
    """Wikipedia articles of bigbench's ``paragraph_segmentation`` task (offline, the default)."""

    source: Literal["bigbench"] = "bigbench"
    language: str = "en"


class FilesCorpus(Section):
    """A user's own plain-text train/valid/test files."""

    source: Literal["files"]
    train: Path
    valid: Path
    test: Path


class HFCorpus(Section):
    """A ``datasets`` dataset (needs the network), e.g. wikitext / wikitext-2-raw-v1."""

    source: Literal["hf"]
    path: str
    name: str | None = None
    text_field: str = "text"


Corpus = Annotated[BigBenchCorpus | FilesCorpus | HFCorpus, Field(discriminator="source")]


class DataParams(Section):
    bigbench: BigBenchSource = Field(default_factory=BigBenchSource)
    corpus: Corpus = Field(default_factory=BigBenchCorpus)
    valid_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    split_seed: int = 0


class CalibrationParams(Section):
    n_samples: int = Field(32, gt=0)
    seqlen: int = Field(256, ge=2)
    seed: int = 0


class JSParams(Section):
    """Held-out tokens on which the JS divergence (dense vs pruned) is measured.

    Drawn from the valid split, so they never overlap the calibration tokens (train split) that
    importance scores are computed on, nor the test split of the benchmark.
    """

    n_samples: int = Field(16, gt=0)
    seqlen: int = Field(128, ge=2)
    seed: int = 1
    batch_size: int = Field(4, gt=0)


class PruningParams(Section):
    """How a policy becomes a pruned model (the engine's knobs)."""

    unit_importance: Literal["taylor", "activation"] = Field(
        "taylor", description="which heads/channels go inside a layer: LLM-Pruner's first-order Taylor, "
        "or Wanda-style |W|·||X||")
    max_layer_ratio: float = Field(0.9, gt=0, lt=1, description="no layer loses more than this fraction")
    tolerance: float = Field(0.005, gt=0, lt=0.1, description="|actual - target| block ratio allowed")
    outlier_m: float = Field(5.0, gt=0, description="OWL's M: a Wanda score above M x mean is an outlier")


class CollectParams(Section):
    """The mask dataset: which policies are sampled and evaluated for real (paper grid by default)."""

    n_samples: int | None = Field(400, gt=0, description="grid points evaluated (None = the whole grid)")
    seed: int = 0
    ratios: tuple[float, float, float] = (0.1, 0.7, 0.025)
    a_etas: tuple[float, float, float] = (0.0, 0.5, 0.05)
    methods: list[Literal["lod", "esd", "bi"]] = ["lod", "esd", "bi"]
    workers: int = Field(1, gt=0, description="samples evaluated at once (threads); 1 is fastest on a 2-core CPU")


class TasksParams(Section):
    names: list[str] = ["goal_step_wikihow", "social_iqa", "hyperbaton"]
    limit: int | None = Field(500, gt=0, description="examples per task (None = all)")
    seed: int = 0

    @model_validator(mode="after")
    def _known_tasks(self) -> "TasksParams":
        from ppf.data.tasks import TASK_SOURCES

        unknown = [n for n in self.names if n not in TASK_SOURCES]
        if unknown:
            raise ValueError(f"unknown task {unknown[0]!r}; known: {', '.join(sorted(TASK_SOURCES))}")
        if not self.names:
            raise ValueError("names is empty; list at least one task")
        return self


class EvalParams(Section):
    seqlen: int = Field(512, ge=2)
    batch_size: int = Field(4, gt=0)
    max_windows: int | None = Field(64, gt=0, description="perplexity windows per split (None = all)")
    zero_shot_limit: int | None = Field(200, gt=0, description="examples per task for lm-eval")


class TrackingParams(Section):
    experiment: str = "ppf"


class Params(Section):
    seed: int = 0
    model: ModelParams = Field(default_factory=ModelParams)
    data: DataParams = Field(default_factory=DataParams)
    calibration: CalibrationParams = Field(default_factory=CalibrationParams)
    js: JSParams = Field(default_factory=JSParams)
    pruning: PruningParams = Field(default_factory=PruningParams)
    collect: CollectParams = Field(default_factory=CollectParams)
    tasks: TasksParams = Field(default_factory=TasksParams)
    eval: EvalParams = Field(default_factory=EvalParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)


def _describe(err: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    # A discriminated union puts the chosen tag in the path ("corpus.bigbench.sdist"): keep it
    # out of the key the user has to look for.
    where = where.replace(".bigbench.", ".").replace(".files.", ".").replace(".hf.", ".")
    if err["type"] == "extra_forbidden":
        return f"unknown key '{where}' (remove it or check its spelling)"
    if err["type"] == "missing":
        return f"missing key '{where}'"
    msg = err["msg"].removeprefix("Value error, ")
    return f"'{where}' = {err.get('input')!r}: {msg}"


def parse_params(raw: dict[str, Any] | None, source: str = "params.yaml") -> Params:
    """Validate a params mapping; raise one PPFError listing every problem by key path."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise PPFError(f"{source}: {problems}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise PPFError(f"params file '{path}' not found; run from the project root or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PPFError(f"{path}: not valid YAML ({exc.__class__.__name__}: {exc})".replace("\n", " ")) from None
    if raw is not None and not isinstance(raw, dict):
        raise PPFError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    return parse_params(raw, str(path))
