"""The transformers classes of ppf checkpoints, and their registration with the Auto classes.

transformers cannot ``from_pretrained`` a model whose layers have different shapes (its classes
build every layer from the one ``num_attention_heads`` / ``intermediate_size``), so ppf supplies,
per base model type, a config class and a ``<Base>ForCausalLM`` subclass that honour the per-layer
shapes of ``config.ppf_layers``.

transformers is imported lazily (only when the classes are created or registered); the classes are
created on first use and reachable as attributes of the package, e.g.
``ppf.checkpoint.PPFLlamaForCausalLM``. :func:`register_on_import` (for ``import ppf``) registers
them as soon as transformers is imported.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

from ppf.checkpoint.layout import _CLASS_NAMES, BASES, LAYERS, PREFIX, _read_layers
from ppf.checkpoint.skeleton import _own_aligned_memory, _restore_buffer_dtypes, shrink_layers
from ppf.errors import PPFError
from ppf.prune import PLAN_ATTR

# ---- the transformers classes ----------------------------------------------------------------------
_CLASSES: dict[str, tuple[type, type]] = {}  # base model type -> (config class, model class)


def _make_classes(base: str) -> tuple[type, type]:
    import transformers

    name = _CLASS_NAMES[base]
    base_cfg = getattr(transformers, f"{name}Config")
    base_model = getattr(transformers, f"{name}ForCausalLM")

    cfg_cls = type(f"PPF{name}Config", (base_cfg,), {
        "__module__": __package__,  # "ppf.checkpoint", whose __getattr__ serves the classes
        "__doc__": f"A {name} config for a physically pruned model: the dense sizes plus "
                   "``ppf_layers``, the per-layer {n_heads, n_kv_heads, intermediate}.",
        "__annotations__": {"ppf_layers": "list | None", "ppf_base_model_type": "str | None"},
        "model_type": PREFIX + base,
        "ppf_layers": None,
        "ppf_base_model_type": base,
    })

    def post_init(self):  # runs at the end of <Base>ForCausalLM.__init__, before weight init
        if getattr(self.config, "ppf_layers", None):
            shrink_layers(self, self.config.ppf_layers)
        base_model.post_init(self)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        model = super(model_cls, cls).from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        _own_aligned_memory(model)
        local = Path(str(pretrained_model_name_or_path))
        if (local / LAYERS).is_file():  # a local checkpoint: record its plan like load_pruned does
            setattr(model, PLAN_ATTR, _read_layers(local)[1])
            _restore_buffer_dtypes(model, local)
        return model

    model_cls = type(f"PPF{name}ForCausalLM", (base_model,), {
        "__module__": __package__,
        "__doc__": f"{name}ForCausalLM whose layers take the per-layer shapes in ``config.ppf_layers``.",
        "config_class": cfg_cls,
        "post_init": post_init,
        "from_pretrained": from_pretrained,
    })
    return cfg_cls, model_cls


def classes(base: str) -> tuple[type, type]:
    """(config class, model class) of the ppf wrapper around base model type ``base``."""
    if base not in BASES:
        raise PPFError(f"ppf checkpoints support model types {', '.join(BASES)}, not '{base}'")
    if base not in _CLASSES:
        _CLASSES[base] = _make_classes(base)
    return _CLASSES[base]


# ---- registration ------------------------------------------------------------------------------------
def register_with_transformers() -> None:
    """Register the ppf config and model classes with AutoConfig / AutoModelForCausalLM (idempotent).

    Afterwards ``AutoConfig.from_pretrained(dir)`` and ``AutoModelForCausalLM.from_pretrained(dir)``
    load a ppf checkpoint. Imports transformers.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    for base in BASES:
        cfg_cls, model_cls = classes(base)
        AutoConfig.register(cfg_cls.model_type, cfg_cls, exist_ok=True)
        AutoModelForCausalLM.register(cfg_cls, model_cls, exist_ok=True)


class _RegisterOnImport:
    """A meta-path finder that lets transformers import normally, then registers the ppf classes."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "transformers":
            return None
        import importlib.util

        if self in sys.meta_path:
            sys.meta_path.remove(self)  # one shot; also keeps find_spec below from recursing
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            try:
                register_with_transformers()
            except Exception as exc:  # never break the user's `import transformers`
                warnings.warn(f"ppf could not register its checkpoint classes with transformers: {exc}",
                              RuntimeWarning, stacklevel=2)

        spec.loader.exec_module = exec_then_register
        return spec


def register_on_import() -> None:
    """:func:`register_with_transformers` now if transformers is imported, else right after it is.

    For ``ppf/__init__``: registering eagerly means importing transformers and three model
    classes (~3-4 s of CPU), which ``import ppf`` (and ``ppf --help``) should not pay when
    transformers is never used. Either way, ``import ppf; AutoModelForCausalLM.from_pretrained(dir)``
    works for a ppf checkpoint.
    """
    if "transformers" in sys.modules:
        register_with_transformers()
    elif not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())
