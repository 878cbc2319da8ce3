"""lm.cs336: the official CS336 adapter signatures, delegating to lm, checked against references."""

from __future__ import annotations

import inspect
import io
import sys
import types
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import reference_lm
from lm import cs336
from lm.config.schema import ModelConfig
from lm.errors import DataError, LabError
from lm.model import TransformerLM

D = torch.float64

# Parameter names (and defaults) of stanford-cs336/assignment1-basics tests/adapters.py.
OFFICIAL = {
    "run_linear": ["d_in", "d_out", "weights", "in_features"],
    "run_embedding": ["vocab_size", "d_model", "weights", "token_ids"],
    "run_swiglu": ["d_model", "d_ff", "w1_weight", "w2_weight", "w3_weight", "in_features"],
    "run_scaled_dot_product_attention": ["Q", "K", "V", "mask=None"],
    "run_multihead_self_attention": ["d_model", "num_heads", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                                     "o_proj_weight", "in_features"],
    "run_multihead_self_attention_with_rope": ["d_model", "num_heads", "max_seq_len", "theta", "q_proj_weight",
                                               "k_proj_weight", "v_proj_weight", "o_proj_weight", "in_features",
                                               "token_positions=None"],
    "run_rope": ["d_k", "theta", "max_seq_len", "in_query_or_key", "token_positions"],
    "run_transformer_block": ["d_model", "num_heads", "d_ff", "max_seq_len", "theta", "weights", "in_features"],
    "run_transformer_lm": ["vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff",
                           "rope_theta", "weights", "in_indices"],
    "run_rmsnorm": ["d_model", "eps", "weights", "in_features"],
    "run_silu": ["in_features"],
    "run_get_batch": ["dataset", "batch_size", "context_length", "device"],
    "run_softmax": ["in_features", "dim"],
    "run_cross_entropy": ["inputs", "targets"],
    "run_gradient_clipping": ["parameters", "max_l2_norm"],
    "get_adamw_cls": [],
    "run_get_lr_cosine_schedule": ["it", "max_learning_rate", "min_learning_rate", "warmup_iters",
                                   "cosine_cycle_iters"],
    "run_save_checkpoint": ["model", "optimizer", "iteration", "out"],
    "run_load_checkpoint": ["src", "model", "optimizer"],
    "get_tokenizer": ["vocab", "merges", "special_tokens=None"],
    "run_train_bpe": ["input_path", "vocab_size", "special_tokens", "**kwargs"],
}


def _params(fn) -> list[str]:
    out = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            out.append(f"**{p.name}")
        elif p.default is not p.empty:
            out.append(f"{p.name}={p.default!r}")
        else:
            out.append(p.name)
    return out


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_signature_matches_official_adapters(name):
    assert _params(getattr(cs336, name)) == OFFICIAL[name]


def test_star_import_exports_every_adapter():
    namespace: dict = {}
    exec("from lm.cs336 import *", namespace)
    assert set(OFFICIAL) <= set(namespace)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def test_linear_embedding_rmsnorm_silu_softmax_match_torch():
    w, x = _rand(5, 7), _rand(2, 3, 7, seed=1)
    torch.testing.assert_close(cs336.run_linear(7, 5, w, x), F.linear(x, w))
    table, ids = _rand(11, 4), torch.tensor([[0, 10, 3], [3, 3, 1]])
    torch.testing.assert_close(cs336.run_embedding(11, 4, table, ids), F.embedding(ids, table))
    g = _rand(7, seed=2)
    torch.testing.assert_close(cs336.run_rmsnorm(7, 1e-5, g, x), F.rms_norm(x, (7,), g, 1e-5))
    torch.testing.assert_close(cs336.run_silu(x), F.silu(x))
    torch.testing.assert_close(cs336.run_softmax(x, dim=1), torch.softmax(x, dim=1))


def test_swiglu_matches_reference():
    w1, w2, w3, x = _rand(12, 8), _rand(8, 12, seed=1), _rand(12, 8, seed=2), _rand(3, 8, seed=3)
    sd = {"ffn.w1.weight": w1, "ffn.w2.weight": w2, "ffn.w3.weight": w3}
    torch.testing.assert_close(cs336.run_swiglu(8, 12, w1, w2, w3, x), reference_lm.feed_forward(x, sd, "ffn.", "swiglu"))


def test_sdpa_matches_torch_with_mask():
    q, k, v = _rand(2, 4, 5), _rand(2, 6, 5, seed=1), _rand(2, 6, 3, seed=2)
    mask = torch.rand(2, 4, 6, generator=torch.Generator().manual_seed(3)) > 0.5
    mask[..., 0] = True
    torch.testing.assert_close(cs336.run_scaled_dot_product_attention(q, k, v, mask),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def _attention_weights(d_model: int, seed: int = 0) -> dict:
    return {f"{n}_proj.weight": _rand(d_model, d_model, seed=seed + i) / d_model**0.5
            for i, n in enumerate(["q", "k", "v", "output"])}


def test_multihead_self_attention_matches_reference():
    w = _attention_weights(16)
    x = _rand(3, 7, 16, seed=9)
    out = cs336.run_multihead_self_attention(16, 4, w["q_proj.weight"], w["k_proj.weight"], w["v_proj.weight"],
                                             w["output_proj.weight"], x)
    ref = reference_lm.attention(x, w, "", 4, None, list(range(7)))
    torch.testing.assert_close(out, ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("positions", ["none", "1-D", "batched"])
def test_multihead_self_attention_with_rope_matches_reference(positions):
    w = _attention_weights(16)
    x = _rand(3, 7, 16, seed=9)
    pos = list(range(2, 9))
    given = {"none": None, "1-D": torch.tensor(pos), "batched": torch.tensor([pos] * 3)}[positions]
    out = cs336.run_multihead_self_attention_with_rope(16, 4, 32, 1000.0, w["q_proj.weight"], w["k_proj.weight"],
                                                       w["v_proj.weight"], w["output_proj.weight"], x, given)
    ref = reference_lm.attention(x, w, "", 4, 1000.0, list(range(7)) if given is None else pos)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_rope_matches_reference():
    x = _rand(2, 5, 8)
    out = cs336.run_rope(8, 10000.0, 16, x, torch.arange(5))
    torch.testing.assert_close(out, reference_lm.apply_rope(x, list(range(5)), 10000.0), rtol=1e-6, atol=1e-6)


def _lm_weights(cfg: ModelConfig) -> dict:
    torch.manual_seed(0)
    model = TransformerLM(cfg, dtype=D)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.normal_(1.0, 0.3)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_transformer_block_matches_reference():
    cfg = ModelConfig(vocab_size=10, context_length=16, d_model=16, num_layers=1, num_heads=4, d_ff=24,
                      rope_theta=100.0)
    sd = _lm_weights(cfg)
    block = {k.removeprefix("layers.0."): v for k, v in sd.items() if k.startswith("layers.0.")}
    x = _rand(2, 9, 16, seed=4)
    out = cs336.run_transformer_block(16, 4, 24, 16, 100.0, block, x)
    torch.testing.assert_close(out, reference_lm.block(x, sd, "layers.0.", cfg, list(range(9))), rtol=1e-6, atol=1e-6)


def test_transformer_lm_matches_reference():
    cfg = ModelConfig(vocab_size=23, context_length=16, d_model=16, num_layers=2, num_heads=2, d_ff=40,
                      rope_theta=10000.0)
    sd = _lm_weights(cfg)
    ids = torch.randint(0, 23, (2, 11))  # shorter than the context
    out = cs336.run_transformer_lm(23, 16, 16, 2, 2, 40, 10000.0, sd, ids)
    torch.testing.assert_close(out, reference_lm.forward(sd, cfg, ids), rtol=1e-6, atol=1e-6)


def test_cross_entropy_clipping_adamw_schedule_delegate():
    logits, targets = _rand(4, 9) * 1e4, torch.tensor([0, 8, 3, 3])
    torch.testing.assert_close(cs336.run_cross_entropy(logits, targets), F.cross_entropy(logits, targets))
    a = [torch.nn.Parameter(torch.zeros(3, dtype=D))]
    a[0].grad = torch.tensor([3.0, 4.0, 0.0], dtype=D)
    assert cs336.run_gradient_clipping(a, 1.0) is None
    torch.testing.assert_close(a[0].grad, torch.tensor([0.6, 0.8, 0.0], dtype=D), rtol=1e-6, atol=1e-6)
    assert issubclass(cs336.get_adamw_cls(), torch.optim.Optimizer)
    assert cs336.run_get_lr_cosine_schedule(0, 1.0, 0.1, 7, 21) == 0.0
    assert cs336.run_get_lr_cosine_schedule(21, 1.0, 0.1, 7, 21) == pytest.approx(0.1)


def test_save_and_load_checkpoint_adapters():
    cfg = ModelConfig(vocab_size=10, context_length=4, d_model=8, num_layers=1, num_heads=2)
    torch.manual_seed(0)
    model = TransformerLM(cfg)
    opt = cs336.get_adamw_cls()(model.parameters(), lr=1e-3)
    buf = io.BytesIO()
    cs336.run_save_checkpoint(model, opt, 42, buf)
    buf.seek(0)
    torch.manual_seed(1)
    fresh = TransformerLM(cfg)
    assert cs336.run_load_checkpoint(buf, fresh, cs336.get_adamw_cls()(fresh.parameters())) == 42
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def test_get_batch_windows_and_uniform_starts():
    """As the official test: 100 tokens, context 7: x+1 == y and every start 0..92 is drawn."""
    dataset = np.arange(100)
    starts = Counter()
    for _ in range(300):
        x, y = cs336.run_get_batch(dataset, 32, 7, "cpu")
        assert x.shape == y.shape == (32, 7)
        assert x.dtype == y.dtype == torch.int64
        assert torch.equal(x + 1, y)
        assert torch.equal(x - x[:, :1], torch.arange(7).expand(32, 7))
        starts.update(x[:, 0].tolist())
    assert min(starts) == 0 and max(starts) == 92
    expected = 300 * 32 / 93
    assert all(abs(starts[i] - expected) < 6 * expected**0.5 for i in range(93))


def test_sample_batch_reads_memmap_with_seeded_rng(tmp_path):
    path = tmp_path / "tokens.bin"
    np.arange(50, dtype=np.uint16).tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    a = cs336.sample_batch(tokens, 4, 10, "cpu", rng=np.random.default_rng(5))
    b = cs336.sample_batch(tokens, 4, 10, "cpu", rng=np.random.default_rng(5))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert a[0].dtype == torch.int64


def test_get_batch_too_short_is_a_data_error():
    with pytest.raises(DataError, match="at least 9 tokens"):
        cs336.run_get_batch(np.arange(8), 2, 8, "cpu")


def test_get_batch_on_missing_device_raises_like_torch():
    with pytest.raises((RuntimeError, AssertionError)):
        cs336.run_get_batch(np.arange(100), 2, 7, "cuda:99")


def test_tokenizer_adapters_without_lm_tokenizer_raise_lab_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm.tokenizer", None)  # makes the import fail
    with pytest.raises(LabError, match="lm.tokenizer"):
        cs336.get_tokenizer({0: b"a"}, [])
    with pytest.raises(LabError, match="lm.tokenizer"):
        cs336.run_train_bpe("corpus.txt", 300, ["<|endoftext|>"])


def test_tokenizer_adapters_delegate(monkeypatch):
    calls = []
    fake = types.ModuleType("lm.tokenizer")

    class Tokenizer:
        def __init__(self, vocab, merges, special_tokens=None):
            calls.append(("Tokenizer", vocab, merges, special_tokens))

    def train_bpe(input_path, vocab_size, special_tokens, **kwargs):
        calls.append(("train_bpe", input_path, vocab_size, special_tokens, kwargs))
        return {0: b"a"}, []

    fake.Tokenizer, fake.train_bpe = Tokenizer, train_bpe
    monkeypatch.setitem(sys.modules, "lm.tokenizer", fake)
    import lm

    monkeypatch.setattr(lm, "tokenizer", fake, raising=False)
    assert isinstance(cs336.get_tokenizer({0: b"a"}, [(b"a", b"b")], ["<s>"]), Tokenizer)
    assert cs336.run_train_bpe("c.txt", 300, ["<s>"], num_processes=2) == ({0: b"a"}, [])
    assert calls == [("Tokenizer", {0: b"a"}, [(b"a", b"b")], ["<s>"]),
                     ("train_bpe", "c.txt", 300, ["<s>"], {"num_processes": 2})]


def test_tokenizer_adapters_with_the_real_tokenizer(tmp_path):
    try:
        from lm.tokenizer import Tokenizer, train_bpe  # noqa: F401
    except ImportError:
        pytest.skip("lm.tokenizer does not provide Tokenizer and train_bpe in this checkout yet")
    corpus = tmp_path / "c.txt"
    corpus.write_text("low lower lowest newer wider<|endoftext|>low low new new" * 5)
    vocab, merges = cs336.run_train_bpe(corpus, 270, ["<|endoftext|>"])
    assert len(vocab) == 270 and b"<|endoftext|>" in vocab.values()
    tok = cs336.get_tokenizer(vocab, merges, ["<|endoftext|>"])
    text = "lowest newer<|endoftext|>wide"
    assert tok.decode(tok.encode(text)) == text
