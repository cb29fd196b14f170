"""The model card every saved checkpoint carries (README.md, the Hugging Face convention): YAML front
matter, then what the model is (base, policy, ratio, compensation, recovery), what it measured, and
how to load it with transformers (no ppf needed) and with llama.cpp."""

from __future__ import annotations

from typing import Any

CARD = "README.md"


def _row(label: str, value: Any) -> str:
    return f"| {label} | {value} |"


def model_card(meta: dict[str, Any], name: str) -> str:
    """The card's markdown for a checkpoint whose ``ppf.json`` is ``meta`` (saved as directory ``name``)."""
    extra = meta.get("extra") or {}
    policy = extra.get("policy") or (meta.get("policy") or {}).get("policy") or "dense (no plan)"
    ratio = meta.get("block_ratio", 0.0)
    rows = [_row("base model", f"`{meta.get('base')}` ({meta.get('base_model_type')})"),
            _row("policy", f"`{policy}`"),
            _row("target ratio", extra.get("target", "–")),
            _row("actual block ratio", f"{ratio:.4f} ({meta.get('kept_block_params', 0):,} of "
                                       f"{meta.get('dense_block_params', 0):,} attention + MLP parameters kept)"),
            _row("compensation", extra.get("compensation", "–"))]
    rec = extra.get("recovery")
    if rec:
        rows.append(_row("recovery", f"distilled from `{meta.get('base')}`: {rec['tokens']:,} train tokens "
                                     f"({rec['trained']}, lr {rec['lr']:g}, T {rec['temperature']:g}, seed {rec['seed']}; "
                                     f"best valid step {rec['best_step']} of {rec['steps_run']}, stopped: {rec['stopped']})"))
    else:
        rows.append(_row("recovery", "none"))
    for key, label in (("perplexity", "perplexity"), ("perplexity_before", "perplexity before recovery")):
        ppl = extra.get(key)
        if ppl:
            rows.append(_row(label, f"{ppl['value']:.2f} [{ppl['ci_lo']:.2f}, {ppl['ci_hi']:.2f}] (95 % bootstrap over "
                                    f"{ppl['windows']} {ppl['split']} windows of {ppl['seqlen']} tokens)"))
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation",
             f"base_model: {meta.get('base')}", "tags: [ppf, pruned, structured-pruning]", "---", ""]
    body = [f"# {name}", "",
            f"A structured-pruned {meta.get('base_model_type')} model made with ppf {meta.get('ppf_version', '')}: "
            "attention heads and MLP channels removed per layer, layers of different widths.", "",
            "| | |", "|---|---|", *rows, "",
            "## Load it", "",
            "With transformers alone (the modelling code ships in this directory):", "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'model = AutoModelForCausalLM.from_pretrained("{name}", trust_remote_code=True)',
            f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
            "```", "",
            f'With ppf: `model, tokenizer = ppf.load_pruned("{name}")`; measure it with `ppf eval -m {name}`.', "",
            "With llama.cpp:", "",
            "```sh",
            f"ppf export {name} --gguf {name}.gguf --type f16",
            f'llama-cli -m {name}.gguf -p "The history of"',
            "```", ""]
    return "\n".join(front + body)
