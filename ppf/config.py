"""params.yaml, validated into typed objects.

params.yaml is the ONE config of the project: DVC reads its keys to decide which stage is stale,
the flows and the CLI read it through :func:`load_params`. Every section forbids unknown keys, so
a typo (``calibraton:``) fails loudly instead of being silently ignored, and every error names
the key path, the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ppf.errors import PPFError


class Section(BaseModel):
    """Base of every params section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelParams(Section):
    name: str = Field("smollm2-135m", description="embedded model name or a local transformers directory")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field("cpu", description="where the model runs: cpu, cuda, cuda:N")


class GensimSource(Section):
    """The gensim wheel: its test data is the default corpus (an English Wikipedia dump excerpt) and
    the default zero-shot tasks (word analogies, review polarity); :mod:`ppf.data.gensim_wheel`."""

    version: str = "4.4.0"
    wheel: Path | None = Field(None, description="a local gensim wheel instead of downloading it")


class BigBenchSource(Section):
    """The bigbench sdist: an optional source of the corpus and of three zero-shot tasks (PyPI no
    longer serves 1.0.0: a local copy or a mirror)."""

    version: str = "1.0.0"
    sdist: Path | None = Field(None, description="a local bigbench sdist instead of downloading it")


class EnwikiCorpus(Section):
    """English Wikipedia articles of the MediaWiki dump excerpt in the gensim wheel (offline, the default)."""

    source: Literal["enwiki"] = "enwiki"
    min_chars: int = Field(2000, ge=0, description="articles shorter than this (stubs, lists) are left out")


class BigBenchCorpus(Section):
    """Wikipedia articles of bigbench's ``paragraph_segmentation`` task (a local bigbench 1.0.0 sdist)."""

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


Corpus = Annotated[EnwikiCorpus | BigBenchCorpus | FilesCorpus | HFCorpus, Field(discriminator="source")]


class DataParams(Section):
    gensim: GensimSource = Field(default_factory=GensimSource)
    bigbench: BigBenchSource = Field(default_factory=BigBenchSource)
    corpus: Corpus = Field(default_factory=EnwikiCorpus)
    valid_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    split_seed: int = 0


class CalibrationParams(Section):
    n_samples: int = Field(32, gt=0)
    seqlen: int = Field(256, ge=2)
    seed: int = 0


class HeldoutParams(Section):
    """Held-out tokens on which the signals of a pruned model are measured (JS and KL against the dense
    model, NLL above dense: :func:`ppf.metrics.divergences`).

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
    compensation: Literal["none", "bias", "lsq"] = Field(
        "lsq", description="after width pruning, restore the removed heads'/channels' contribution from "
        "calibration activations: none | bias (FLAP) | lsq (damped least-squares refit of the kept columns)")
    compensation_inputs: Literal["dense", "sequential"] = Field(
        "dense", description="where the compensation's input statistics come from: dense (the dense model's, "
        "gathered once and shared by every plan) | sequential (layer after layer on the pruned model's own "
        "inputs, one pass per plan, as SparseGPT; less memory for big models)")
    damping: float = Field(0.01, gt=0, description="lsq ridge damping, relative to the mean Gram diagonal")
    compensation_samples: int | None = Field(None, gt=0, description="calibration sequences (of calibration.seqlen) "
                                             "the compensation is fitted on; null = all calibration.n_samples")
    compensation_batch_size: int = Field(4, gt=0, description="sequences per forward while the compensation "
                                         "gathers its statistics")
    removed_blocks: Literal["none", "mean"] = Field(
        "mean", description="depth pruning (removed layers / attention / MLP blocks): none (they add nothing) | "
        "mean (they add their dense mean output over the calibration tokens)")


class SpaceParams(Section):
    """Which parts of PPF's extended policy space the collected samples vary (:class:`ppf.policy.Policy`);
    ``fraction: 0`` is the paper's grid alone."""

    fraction: float = Field(0.6, ge=0, le=1, description="share of the samples that also draw the extended parts")
    norms: list[Literal["minmax", "rank"]] = Field(["minmax", "rank"], min_length=1,
                                                   description="score normalisations drawn from")
    keep: int = Field(4, ge=0, description="protected first / last layers, each drawn from 0..keep")
    depth: int = Field(6, ge=0, description="whole layers removed (Block Influence order), drawn from 0..depth "
                       "(never more than the ratio allows)")
    attn: tuple[float, float] | None = Field((0.0, 0.5), description="attention share of each layer's reduction, drawn "
                                               "uniformly from this range (None: attention at the layer's ratio)")
    groups: float = Field(0.25, ge=0, le=1, description="share of the extended draws that take LLM-Pruner's "
                          "rule instead (attn=groups: whole KV groups at one unit ratio)")
    orders: list[Literal["layers", "blocks"]] = Field(["layers"], min_length=1, description="depth orders drawn from: "
                                                      "layers (Block Influence, 0..depth whole layers) and/or blocks "
                                                      "(BlockPruner's stored order, 0..block_depth attention / MLP blocks)")
    block_depth: int = Field(0, ge=0, description="attention / MLP blocks removed in BlockPruner's order, drawn from "
                             "0..block_depth (never more than the ratio or the stored order allows)")

    @model_validator(mode="after")
    def _split_range(self) -> "SpaceParams":
        if self.attn is not None and not (0.0 <= self.attn[0] <= self.attn[1] <= 1.0):
            raise ValueError(f"attn range {list(self.attn)} must satisfy 0 <= lo <= hi <= 1")
        if len(set(self.orders)) != len(self.orders):
            raise ValueError(f"orders {self.orders} names an order twice; list each once")
        if "blocks" in self.orders and self.block_depth == 0:
            raise ValueError("orders has blocks but block_depth is 0; set block_depth (e.g. 12) or drop blocks")
        return self


class WithinRatioParams(Section):
    """The within-ratio test set: at each of ``ratios``, ``n`` policies of the space, evaluated for real
    and never trained on — how well the predictor ranks policies at ONE ratio, which is what the agent asks."""

    ratios: list[float] = Field([0.2, 0.4, 0.5], description="e.g. the benchmark ratios; [] = no such set")
    n: int = Field(20, ge=3, description="policies per ratio")
    seed: int = 1

    @model_validator(mode="after")
    def _ratios(self) -> "WithinRatioParams":
        bad = [r for r in self.ratios if not 0 < r < 1]
        if bad:
            raise ValueError(f"within-ratio ratio {bad[0]} is outside (0, 1)")
        return self


class CollectParams(Section):
    """The mask dataset: which policies are sampled and evaluated for real (paper grid by default)."""

    n_samples: int | None = Field(250, gt=0, description="grid points evaluated (None = the whole grid)")
    seed: int = 0
    ratios: tuple[float, float, float] = (0.1, 0.7, 0.025)
    a_etas: tuple[float, float, float] = (0.0, 0.5, 0.05)
    methods: list[Literal["lod", "esd", "bi"]] = ["lod", "esd", "bi"]
    workers: int = Field(1, gt=0, description="samples evaluated at once; 1 is fastest on a 2-core CPU")
    runner: Literal["threads", "dask"] = Field(
        "threads", description="threads in the flow's process, or a Dask cluster (prefect-dask)")
    dask_address: str | None = Field(
        None, description="a running Dask scheduler (tcp://host:8786); None = a local cluster of `workers` processes")
    space: SpaceParams = Field(default_factory=SpaceParams)
    within: WithinRatioParams = Field(default_factory=WithinRatioParams)


class TasksParams(Section):
    names: list[str] = Field(["cloze", "continuation", "analogy", "polarity"],
                             description="local tasks: cloze, continuation (the corpus's test split); analogy, polarity "
                             "(gensim wheel); goal_step_wikihow, social_iqa, hyperbaton (a bigbench 1.0.0 sdist)")
    lm_eval: list[str] = Field(default_factory=list, description="lm-eval registry tasks scored beside the local ones "
                               "(their datasets from the local HF cache or the hub), e.g. the paper's boolq, rte, "
                               "hellaswag, winogrande, arc_easy, arc_challenge, openbookqa")
    limit: int | None = Field(500, gt=0, description="examples per task, the first of a seeded order balanced over "
                              "labels / categories in every prefix (None = all)")
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
    max_windows: int | None = Field(32, gt=0, description="perplexity windows per split (None = all)")
    zero_shot_limit: int | None = Field(100, gt=0, description="examples per task for lm-eval")
    matmul_precision: Literal["ieee", "bf16"] = Field(
        "bf16", description="fp32 matrix products of every evaluation forward (perplexity, JS, zero-shot, speed): "
        "ieee = exact fp32; bf16 = bf16 products with fp32 sums on a CPU with bf16 units (AMX / AVX512-BF16), "
        "exact fp32 elsewhere. Pruning, importance, compensation and BlockPruner's search always run in ieee")


class PredictorParams(Section):
    """The CNN performance predictor (paper, "CNN-based Performance Prediction Model") and its training."""

    input: Literal["o_proj", "attention", "mlp", "o_proj+mlp", "blocks"] = Field(
        "blocks", description="the mask image: o_proj heads (the paper), q/k/v/o heads, MLP channel "
        "density, o_proj heads + MLP density as two planes, or blocks: o_proj heads + the exact kept MLP "
        "width per layer (removed blocks are all-zero rows)")
    width: int = Field(32, gt=0, description="channels of the dilated convolutions")
    dilations: tuple[int, int, int] = (1, 2, 3)
    spp_levels: list[int] = Field([1, 2, 4], min_length=1, description="SPP output grids (n x n)")
    attention: bool = Field(True, description="the spatial attention module")
    spp: bool = Field(True, description="the spatial pyramid pooling branch")
    density: bool = Field(True, description="the global-density branch")
    hidden: tuple[int, int] = (128, 32)
    log_target: bool = Field(True, description="fit log(signal) and answer exp of it (a training set with "
                             "values <= 0 is shifted up first): a signal spanning a wide range is then ranked as "
                             "well at its low end")
    epochs: int = Field(80, gt=0)
    batch_size: int = Field(1, gt=0, description="1 is the paper's finding")
    lr: float = Field(0.003, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    test_fraction: float = Field(0.2, gt=0, lt=1, description="held-out share of the samples")
    holdout: Literal["policy", "sample"] = Field(
        "policy", description="hold out whole policies (method, a_eta) at every ratio, or single samples")
    seed: int = 0
    speed_samples: int = Field(5, gt=0, description="held-out policies evaluated for real to time "
                                "predictor vs true evaluation")
    signal: Literal["js", "kl", "nll"] = Field(
        "nll", description="the signal the predictor learns and the agent's reward divides by the actual ratio "
        "(Eq 6 with js): js (the paper), kl (KL(dense || pruned), EvoPress' fitness) or nll (held-out NLL above "
        "dense, log of the perplexity ratio); all three are collected, metrics/agent.json's reward_agreement "
        "says which ranks policies like valid perplexity")


class AgentValidation(Section):
    """Validation of the agent on the TRUE model (the paper's dynamic setting: 18 ratios in [0.2, 0.4]; here 8)."""

    n_ratios: int = Field(8, gt=0)
    range: tuple[float, float] = (0.2, 0.4)
    ppl_windows: int = Field(8, gt=0, description="valid-split perplexity windows (eval.seqlen) per pruned model")
    grid_step: float = Field(0.05, gt=0, le=0.5, description="a_eta step of the exhaustive grid baseline")
    owl_lambda: float = Field(0.08, ge=0, le=0.5, description="OWL's lambda (its LLaMA default)")
    alpha_epsilon: float = Field(0.3, ge=0, le=1, description="AlphaPruning's epsilon (its LLaMA default)")


class AgentChoice(Section):
    """The final choice at each static ratio (valid split only, never test; :mod:`ppf.agent.choice`):
    every policy contender of the validation, identical plans merged, races on growing valid budgets
    — its ``validation.ppl_windows``, then ``windows`` (capped at the split's) — measured PAIRED; a
    contender leaves only when its ``level`` bootstrap interval against the leader lies wholly above
    0, and the answer leaves the best baseline allocation only for a plan whose interval against it
    lies wholly below 0. The answer is PPF's policy at that ratio (``ppf policy``, ``ppf prune -p
    agent``, the benchmark)."""

    windows: list[int] = Field([16, 32, 64, 128], description="valid windows of the stages after the validation's "
                               "(growing; only the contenders still tied are measured further)")
    level: float = Field(0.95, gt=0.5, lt=1, description="confidence of the paired intervals that decide")
    bootstrap: int = Field(1000, ge=100, description="paired bootstrap draws per comparison")
    min_windows: int = Field(32, gt=0, description="no contender is answered before the stages reach this many "
                             "windows (eliminations may come earlier)")
    seed: int = Field(0, description="seed of the bootstrap draws and of the order the valid windows are taken "
                      "in (a random sample of the split at every budget)")

    @model_validator(mode="after")
    def _stages(self) -> "AgentChoice":
        if any(w <= 0 for w in self.windows) or any(b <= a for a, b in pairwise(self.windows)):
            raise ValueError(f"agent.choice.windows {self.windows} must be positive and growing, e.g. [16, 32, 64]")
        return self


class AgentRefine(Section):
    """Beyond the paper: the final choice refined on the TRUE model (:mod:`ppf.agent.refine`): per
    generation ``proposals`` budget-preserving mutants of the current policy (one part changed, the
    same target ratio), the ``offspring`` the predictor rates best judged on ``validation.ppl_windows``
    valid windows, the best of those re-measured on the choice's last windows and kept only if better
    there. ``generations: 0`` leaves the choice as it is."""

    generations: int = Field(3, ge=0, description="(1 + lambda) steps per static ratio; 0 = off")
    offspring: int = Field(4, gt=0, description="mutants judged on the true model per generation")
    proposals: int = Field(16, gt=0, description="mutants drawn per generation; the predictor keeps `offspring`")
    seed: int = 0

    @model_validator(mode="after")
    def _screen(self) -> "AgentRefine":
        if self.proposals < self.offspring:
            raise ValueError(f"agent.refine.proposals ({self.proposals}) must be >= agent.refine.offspring "
                             f"({self.offspring}): the predictor keeps the offspring out of the proposals")
        return self


class AgentParams(Section):
    """The DDPG agent (paper, "Implementation Details"): 150 episodes, window 5, noise 0.5 x 0.95."""

    dynamic: tuple[float, float] = Field((0.2, 0.4), description="ratio range of the dynamic agent")
    static: list[float] = Field([0.2, 0.4, 0.5], description="one static agent per ratio")
    episodes: int = Field(150, gt=0)
    window: int = Field(5, gt=0, description="sampling window size k")
    noise: float = Field(0.5, ge=0, description="initial std of the Gaussian action noise")
    noise_decay: float = Field(0.95, gt=0, le=1, description="noise multiplier after every episode")
    gamma: float = Field(0.0, ge=0, lt=1, description="discount; the next ratio does not depend on the action")
    learning_rate: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, gt=0)
    buffer_size: int = Field(10_000, gt=0)
    learning_starts: int = Field(25, ge=0, description="random steps before learning")
    gradient_steps: int = Field(20, gt=0, description="updates after every episode")
    tau: float = Field(0.05, gt=0, le=1)
    net_arch: list[int] = Field([64, 64], min_length=1)
    seed: int = 0
    restarts: int = Field(3, gt=0, description="agents trained per mode (seeds seed, seed+1, ...); the one with "
                          "the best mean predicted reward over the mode's ratios is kept")
    validation: AgentValidation = Field(default_factory=AgentValidation)
    choice: AgentChoice = Field(default_factory=AgentChoice)
    refine: AgentRefine = Field(default_factory=AgentRefine)

    @model_validator(mode="after")
    def _choice_after_validation(self) -> "AgentParams":
        if self.choice.windows and self.choice.windows[0] <= self.validation.ppl_windows:
            raise ValueError(f"agent.choice.windows {self.choice.windows} must start above "
                             f"agent.validation.ppl_windows ({self.validation.ppl_windows}): each stage measures on more tokens")
        return self


class SearchParams(Section):
    """Beyond the paper: CMA-ES over full per-layer ratio vectors, predictor as fitness (static ratios)."""

    budget: int = Field(800, gt=0, description="predictor calls per ratio")
    sigma0: float = Field(0.03, gt=0, description="initial step size in ratio units")
    top_k: int = Field(3, gt=0, description="best candidates evaluated for real")
    seed: int = 0


class ActiveParams(Section):
    """Active learning after train_predictor (:mod:`ppf.active`): the predictor's best policies at each
    static agent ratio evaluated for real, added to the training rows, the predictor refit; again."""

    rounds: int = Field(2, ge=1, description="propose -> evaluate -> refit rounds")
    k: int = Field(3, ge=1, description="new policies evaluated for real per ratio and round")
    budget: int = Field(300, gt=0, description="predictor calls of each round's CMA-ES per ratio")
    seed: int = 0
    feed_agent: bool = Field(True, description="train_agent trains on the refit predictor (models/predictor_active) "
                             "instead of models/predictor")


class BlockPrunerParams(Section):
    n_samples: int = Field(2, gt=0, description="calibration sequences scoring each candidate removal")
    seqlen: int = Field(128, ge=2)
    order_ratio: float = Field(0.52, ge=0, lt=1, description="the importance stage searches BlockPruner's greedy "
                               "order up to this block ratio once (policies with blocks=N remove blocks in "
                               "it; this baseline reads its prefix); 0 = not searched there")


class BenchmarkParams(Section):
    """PPF vs re-run baselines on the same model, data and engine (results/benchmark.csv)."""

    methods: list[str] = ["dense", "llm_pruner", "owl", "alpha", "shortgpt", "blockpruner", "ppf"]
    ratios: list[float] = Field([0.2, 0.4, 0.5], min_length=1)
    max_windows: int | None = Field(32, gt=0, description="test perplexity windows of eval.seqlen (None = all)")
    zero_shot_limit: int | None = Field(100, gt=0, description="examples per task (the first of the balanced order)")
    extra_corpus: str | None = Field(None, description="a second text file (relative to the project) "
                                     "whose perplexity is reported too")
    speed_seqlen: int = Field(256, ge=2, description="batched prefill: tokens per sequence")
    speed_batch: int = Field(4, gt=0)
    new_tokens: int = Field(32, gt=0, description="batch-1 greedy generation length")
    llm_pruner_keep: tuple[int, int] = Field((4, 2), description="first / last layers LLM-Pruner leaves "
                                             "unpruned (its LLaMA-7B default: layers 4..29 of 32 pruned)")
    blockpruner: BlockPrunerParams = Field(default_factory=BlockPrunerParams)
    js_windows: int = Field(4, gt=0, description="test windows (of eval.seqlen) for JS(dense || pruned) on the test split")
    uncompensated: Literal["ppl", "full"] = Field("ppl", description="what the cells without compensation (the "
                                                  "paper-comparable setting) measure: ppl (test perplexity and JS; "
                                                  "speed and memory are those of the compensated model) or full")
    bootstrap: int = Field(2000, ge=100, description="paired bootstrap draws over the test windows (95 % intervals)")
    register_models: bool = Field(True, description="log + register the PPF-pruned models in MLflow")

    @model_validator(mode="after")
    def _known_methods(self) -> "BenchmarkParams":
        from ppf.baselines import METHODS  # the registry imports torch: only when a benchmark section is checked

        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}; known: {', '.join(METHODS)}")
        bad = [r for r in self.ratios if not 0 < r < 1]
        if bad:
            raise ValueError(f"ratio {bad[0]} is outside (0, 1)")
        return self


class RecoverParams(Section):
    """Recovery after pruning: distillation from the dense base model on the train split (ppf/recover.py)."""

    tokens: int = Field(100_000, gt=0, description="the budget: training tokens per model")
    minutes: float | None = Field(None, gt=0, description="also stop after this many minutes of training (a run "
                                  "cut by the clock is not reproducible; null = the token budget only)")
    lr: float = Field(2e-4, gt=0, description="AdamW's peak learning rate")
    warmup: float = Field(0.05, ge=0, lt=1, description="share of the steps with a linear warm-up, then cosine")
    lr_final: float = Field(0.1, ge=0, le=1, description="the last step's learning rate, as a share of lr")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="gradient norm clip (0 = none)")
    seqlen: int = Field(256, ge=8, description="tokens per train window")
    batch_size: int = Field(4, gt=0, description="windows per forward")
    accumulation: int = Field(1, gt=0, description="forwards per optimizer step")
    temperature: float = Field(1.0, gt=0, description="distillation temperature T (the KL is scaled by T^2)")
    kl_weight: float = Field(1.0, ge=0, description="weight of KL(teacher || student) over the teacher's top-k + rest")
    lm_weight: float = Field(1.0, ge=0, description="weight of the next-token cross-entropy on the train text")
    top_k: int = Field(64, gt=0, description="teacher log-probs cached per token (the rest of its mass: one bucket)")
    train: Literal["blocks", "lora"] = Field("blocks", description="what trains: every decoder-layer parameter "
                                            "(embeddings, tied head, final norm frozen) or LoRA adapters (peft)")
    lora_rank: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    autocast: Literal["bfloat16", "none"] = Field("bfloat16", description="mixed precision of the forwards")
    eval_every: int = Field(25, gt=0, description="steps between valid-perplexity checks")
    valid_windows: int = Field(8, gt=0, description="valid windows of eval.seqlen for the checks (never test)")
    patience: int = Field(4, ge=0, description="checks without a better valid perplexity before stopping (0 = never)")
    checkpoint_every: int = Field(25, gt=0, description="steps between resumable states")
    seed: int = 0
    baselines: list[str] = Field(["best", "llm_pruner"], description="the `recover` stage recovers PPF and these "
                                 "at every benchmark ratio (best = the lowest configured baseline there)")
    curve: bool = Field(True, description="the `recover` stage also measures test perplexity at every valid check")

    @model_validator(mode="after")
    def _some_loss(self) -> "RecoverParams":
        if self.kl_weight == 0 and self.lm_weight == 0:
            raise ValueError("kl_weight and lm_weight are both 0: nothing to train on; set one of them > 0")
        return self


class TrackingParams(Section):
    experiment: str = "ppf"
    predictor_name: str = Field("ppf-predictor", description="registered model name of the predictor")
    agent_name: str = Field("ppf-agent", description="registered model name of the agent")


class Schedule(Section):
    """One scheduled refresh: ``dvc repro [--force] TARGETS`` on a cron schedule."""

    cron: str = Field(description="five cron fields, e.g. '0 3 * * 0' (Sundays 03:00)")
    targets: list[str] = Field(min_length=1, description="dvc.yaml stages to reproduce (and what they depend on)")
    force: bool = Field(False, description="rerun the targets and their upstream stages even if unchanged")

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError(f"cron {v!r} must have five fields (minute hour day month weekday), e.g. '0 3 * * 0'")
        return v


class DeployParams(Section):
    """``ppf deploy``: the scheduled deployments served to a Prefect server."""

    timezone: str = "UTC"
    push: bool = Field(True, description="`dvc push` to the default DVC remote after every scheduled run")
    schedules: dict[str, Schedule] = Field(default_factory=lambda: {
        "weekly-retrain": Schedule(cron="0 3 * * 0", targets=["train_agent"], force=True),
        "nightly-benchmark": Schedule(cron="0 2 * * *", targets=["benchmark"]),
    })


class Params(Section):
    seed: int = 0
    model: ModelParams = Field(default_factory=ModelParams)
    data: DataParams = Field(default_factory=DataParams)
    calibration: CalibrationParams = Field(default_factory=CalibrationParams)
    heldout: HeldoutParams = Field(default_factory=HeldoutParams)
    pruning: PruningParams = Field(default_factory=PruningParams)
    collect: CollectParams = Field(default_factory=CollectParams)
    tasks: TasksParams = Field(default_factory=TasksParams)
    eval: EvalParams = Field(default_factory=EvalParams)
    predictor: PredictorParams = Field(default_factory=PredictorParams)
    agent: AgentParams = Field(default_factory=AgentParams)
    search: SearchParams = Field(default_factory=SearchParams)
    active: ActiveParams = Field(default_factory=ActiveParams)
    benchmark: BenchmarkParams = Field(default_factory=BenchmarkParams)
    recover: RecoverParams = Field(default_factory=RecoverParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)
    deploy: DeployParams = Field(default_factory=DeployParams)

    @model_validator(mode="after")
    def _blocks_order_is_stored(self) -> "Params":
        space = self.collect.space
        if space.fraction > 0 and "blocks" in space.orders and self.benchmark.blockpruner.order_ratio <= 0:
            raise ValueError("collect.space.orders has blocks but benchmark.blockpruner.order_ratio is 0, so no block "
                             "order is stored to draw from; set order_ratio (e.g. 0.52) or drop blocks")
        return self

    @model_validator(mode="after")
    def _compensation_fits_calibration(self) -> "Params":
        if (self.pruning.compensation_samples or 0) > self.calibration.n_samples:
            raise ValueError(f"pruning.compensation_samples {self.pruning.compensation_samples} is more than the "
                             f"{self.calibration.n_samples} calibration sequences; lower it or raise calibration.n_samples")
        return self

    def with_model(self, name: str) -> "Params":
        """The same params for another model (a name, a local directory or a checkpoint)."""
        return self.model_copy(update={"model": self.model.model_copy(update={"name": name})})


def _describe(err: Mapping[str, Any]) -> str:
    where = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    # A discriminated union puts the chosen tag in the path ("corpus.bigbench.sdist"): keep it
    # out of the key the user has to look for.
    where = where.replace(".enwiki.", ".").replace(".bigbench.", ".").replace(".files.", ".").replace(".hf.", ".")
    if err["type"] == "extra_forbidden":
        return f"unknown key '{where}' (remove it or check its spelling)"
    if err["type"] == "missing":
        return f"missing key '{where}'"
    msg = err["msg"].removeprefix("Value error, ")
    return f"'{where}' = {err.get('input')!r}: {msg}"


# keys that once meant something: an error that says what replaced them (never silently ignored)
RETIRED = {
    "js": "the section of held-out tokens is named heldout now (it serves all three signals: js, kl, nll); rename "
          "js: to heldout: (n_samples, seqlen, seed, batch_size); the compensation's batch is pruning.compensation_batch_size",
    "collect.space.split": "the attention share of a policy is named attn now (policy text attn=S); rename "
                           "collect.space.split to collect.space.attn",
    "predictor.split": "the predictor's hold-out rule is named holdout now; rename predictor.split to predictor.holdout "
                       "(policy | sample)",
    "agent.choice.survivors": "the final choice no longer cuts to a fixed number of survivors: a contender leaves "
                              "only when its paired interval against the leader lies above 0 (agent.choice.level "
                              "sets how sure, agent.choice.windows the growing budgets); remove the key",
}


def _retired(raw: dict[str, Any], source: str) -> None:
    for path, why in RETIRED.items():
        node: Any = raw
        for part in path.split("."):
            node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
        if node is not KeyError:
            raise PPFError(f"{source}: '{path}' is retired: {why}")


def parse_params(raw: dict[str, Any] | None, source: str = "params.yaml") -> Params:
    """Validate a params mapping; raise one PPFError listing every problem by key path."""
    _retired(raw or {}, source)
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


def overridden(params: Params, source: str, **sections: dict[str, Any]) -> Params:
    """``params`` with some keys of its sections replaced (command-line options), validated as a params
    file is: one PPFError naming each bad key and value, ``source`` saying where it came from."""
    raw = params.model_dump(mode="python")
    for section, values in sections.items():
        raw[section] = {**raw[section], **{k: v for k, v in values.items() if v is not None}}
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise PPFError(f"{source}: " + "; ".join(_describe(e) for e in exc.errors())) from None
