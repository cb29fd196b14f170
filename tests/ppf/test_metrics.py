"""Perplexity: the SparseGPT/Wanda non-overlapping-window convention, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tiny import make_llama
from ppf.errors import PPFError
from ppf.metrics import perplexity, windows


def _tokens(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(vocab, (n,), generator=torch.Generator().manual_seed(seed))


def _by_hand(model, tokens, seqlen, n_windows):
    nlls = []
    for w in range(n_windows):
        x = tokens[w * seqlen:(w + 1) * seqlen].unsqueeze(0)
        with torch.no_grad():
            logits = model(x).logits[0]
        nlls.append(F.cross_entropy(logits[:-1], x[0, 1:], reduction="none"))
    return math.exp(torch.cat(nlls).mean().item())


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_matches_hand_computation(tiny_llama, batch_size):
    model, tok = tiny_llama
    tokens = _tokens(5 * 16 + 7, len(tok))  # 5 full windows and a 7-token tail that is dropped
    expected = _by_hand(model, tokens, 16, 5)
    assert perplexity(model, tokens, seqlen=16, batch_size=batch_size) == pytest.approx(expected, rel=1e-5)


def test_max_windows(tiny_gqa):
    model, tok = tiny_gqa
    tokens = _tokens(6 * 16, len(tok))
    assert perplexity(model, tokens, 16, max_windows=2) == pytest.approx(_by_hand(model, tokens, 16, 2), rel=1e-5)
    assert perplexity(model, tokens, 16, max_windows=100) == pytest.approx(_by_hand(model, tokens, 16, 6), rel=1e-5)


def test_constant_logits_give_vocab_size(tiny_gqa):
    model, tok = tiny_gqa
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every next token equally likely
    assert perplexity(model, _tokens(64, len(tok)), seqlen=8, batch_size=4) == pytest.approx(len(tok), rel=1e-5)


def test_restores_training_mode(tiny_gqa):
    model, tok = tiny_gqa
    model.train()
    perplexity(model, _tokens(32, len(tok)), 16)
    assert model.training


def test_bfloat16_model(tiny_gqa):
    model, tok = tiny_gqa
    tokens = _tokens(48, len(tok))
    fp32 = perplexity(model, tokens, 16)
    assert perplexity(model.to(torch.bfloat16), tokens, 16) == pytest.approx(fp32, rel=0.1)


def test_bad_inputs(tiny_gqa):
    model, tok = tiny_gqa
    with pytest.raises(PPFError, match="only 10 tokens for seqlen 16"):
        perplexity(model, _tokens(10, len(tok)), 16)
    with pytest.raises(PPFError, match="seqlen 1 is too small"):
        perplexity(model, _tokens(10, len(tok)), 1)
    with pytest.raises(PPFError, match="1-D"):
        perplexity(model, _tokens(32, len(tok)).view(2, 16), 16)
    with pytest.raises(PPFError, match="max_windows 0"):
        perplexity(model, _tokens(32, len(tok)), 16, max_windows=0)
    with pytest.raises(PPFError, match="batch_size 0"):
        perplexity(model, _tokens(32, len(tok)), 16, batch_size=0)


def test_windows_drop_tail():
    w = windows(torch.arange(23), 5)
    assert w.shape == (4, 5) and w[-1].tolist() == [15, 16, 17, 18, 19]


# ---- JS divergence -------------------------------------------------------------------------------

def _js_reference(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Textbook JS on probability vectors, float64."""
    p, q = p.double(), q.double()
    m = 0.5 * (p + q)
    kl = lambda a, b: (a * (a / b).log()).nan_to_num().sum(-1)  # noqa: E731
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def test_js_per_token_matches_textbook_and_bounds():
    from ppf.metrics import js_per_token

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, 11, generator=g), torch.randn(5, 7, 11, generator=g)
    got = js_per_token(a.log_softmax(-1), b.log_softmax(-1))
    want = _js_reference(a.softmax(-1), b.softmax(-1))
    assert torch.allclose(got.double(), want, atol=1e-6)
    assert torch.all(got >= 0) and torch.all(got <= math.log(2) + 1e-6)
    same = js_per_token(a.log_softmax(-1), a.log_softmax(-1))
    assert same.abs().max() < 1e-6
    disjoint = js_per_token(torch.tensor([[0.0, -1e9]]), torch.tensor([[-1e9, 0.0]]))
    assert abs(disjoint.item() - math.log(2)) < 1e-5


def test_js_kl_in_chunks_equal_the_whole_batch_and_the_textbook():
    """More positions than one chunk, not a multiple of it: every position is computed, in place."""
    from ppf.metrics import _CHUNK, _js_kl_rows, js_kl_per_token

    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 2 * _CHUNK + 5, 13, generator=g), torch.randn(3, 2 * _CHUNK + 5, 13, generator=g)
    logp, logq = a.log_softmax(-1), b.log_softmax(-1)
    js, kl = js_kl_per_token(logp, logq)
    assert js.shape == kl.shape == a.shape[:-1]
    whole_js, whole_kl = _js_kl_rows(logp.reshape(-1, 13).clone(), logq.reshape(-1, 13).clone())
    assert torch.equal(js.reshape(-1), whole_js) and torch.equal(kl.reshape(-1), whole_kl)
    assert torch.allclose(js.double(), _js_reference(a.softmax(-1), b.softmax(-1)), atol=1e-6)
    p, q = a.softmax(-1).double(), b.softmax(-1).double()
    assert torch.allclose(kl.double(), (p * (p.log() - q.log())).sum(-1), atol=1e-6)


def test_matmul_precision_is_scoped_and_checked():
    from ppf.metrics import bf16_matmul_supported, matmul_precision

    flags = torch.backends.mkldnn.matmul
    before = flags.fp32_precision
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(64, 256, generator=g), torch.randn(512, 256, generator=g)
    exact = x @ w.T
    with matmul_precision("ieee"):
        assert flags.fp32_precision == before and torch.equal(x @ w.T, exact)
    with matmul_precision("bf16"):
        fast = x @ w.T
        assert flags.fp32_precision == ("bf16" if bf16_matmul_supported() else before)
    assert flags.fp32_precision == before  # restored
    assert torch.allclose(fast, exact, rtol=0.05, atol=0.5)  # bf16 factors: close, not equal
    with pytest.raises(PPFError, match="fp16"):
        with matmul_precision("fp16"):
            pass
    with pytest.raises(RuntimeError):  # restored on an error, too
        with matmul_precision("bf16"):
            raise RuntimeError("boom")
    assert flags.fp32_precision == before


def test_a_model_under_bf16_products_scores_close_to_fp32(tiny_gqa):
    from ppf.metrics import matmul_precision

    model, _ = tiny_gqa
    tokens = _tokens(4 * 16, model.config.vocab_size)
    exact = perplexity(model, tokens, 16, batch_size=2)
    with matmul_precision("bf16"):
        fast = perplexity(model, tokens, 16, batch_size=2)
    assert abs(fast / exact - 1) < 0.01
    assert torch.backends.mkldnn.matmul.fp32_precision == "none"


def test_js_divergence_model_vs_cached_reference(tiny_llama):
    from ppf.metrics import js_divergence, next_token_logprobs, ppr

    model, _ = tiny_llama
    other, _ = make_llama(model.config.num_attention_heads, model.config.num_key_value_heads, seed=1)
    tokens = torch.randint(4, model.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(0))
    assert js_divergence(model, model, tokens) < 1e-6
    js_model = js_divergence(model, other, tokens, batch_size=2)
    js_cached = js_divergence(next_token_logprobs(model, tokens), other, tokens, batch_size=2)
    assert 0 < js_model < math.log(2)
    assert js_model == pytest.approx(js_cached, rel=1e-6)
    assert ppr(js_model, 0.5) == pytest.approx(2 * js_model)
    with pytest.raises(PPFError):
        ppr(js_model, 0.0)
    with pytest.raises(PPFError):
        js_divergence(model, other, tokens[0])


def test_one_pass_measures_js_kl_and_the_nll_above_dense(tiny_llama):
    import torch.nn.functional as F

    from ppf.metrics import divergences, js_divergence, next_token_logprobs

    model, _ = tiny_llama
    other, _ = make_llama(model.config.num_attention_heads, model.config.num_key_value_heads, seed=1)
    tokens = torch.randint(4, model.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(0))
    same = divergences(model, model, tokens)
    assert all(abs(v) < 1e-5 for v in same.values())
    d = divergences(next_token_logprobs(model, tokens), other, tokens, batch_size=2)
    assert d["js"] == pytest.approx(js_divergence(model, other, tokens), rel=1e-6)
    assert d["kl"] > d["js"] > 0  # KL(P||Q) >= 2 JS... at least above it for distinct models
    with torch.no_grad():
        nll = lambda m: F.cross_entropy(m(tokens).logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())  # noqa: E731
        assert d["nll"] == pytest.approx((nll(other) - nll(model)).item(), rel=1e-4)
