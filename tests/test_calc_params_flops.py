"""The calculator's parameter and FLOP counts against the built model and torch's FlopCounterMode."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from lm.calc import count_flops, count_params, training_flops_per_token
from lm.calc.flops import flop_counter_expectation
from lm.config.schema import PRESETS, ModelConfig
from lm.model import TransformerLM


def _unique_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@pytest.mark.parametrize("name", list(PRESETS))
def test_param_count_equals_built_model_for_every_preset(name):
    cfg = ModelConfig.from_name(name)
    model = TransformerLM(cfg, device="meta")  # no memory for 2.7B parameters
    pc = count_params(cfg)
    assert pc.total == _unique_params(model)
    assert pc.num_tensors == len(list(model.parameters()))
    assert pc.largest_tensor == max(p.numel() for p in model.parameters())
    assert pc.matrix_params == sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    rope = sum(b.numel() for n, b in model.named_buffers() if n.endswith((".cos", ".sin")))
    assert pc.rope_buffer_elements == rope


switches = st.fixed_dictionaries({
    "norm": st.sampled_from(["pre", "post", "none"]),
    "position": st.sampled_from(["rope", "nope"]),
    "ffn": st.sampled_from(["swiglu", "silu"]),
    "tie_embeddings": st.booleans(),
    "attention": st.sampled_from(["sdpa", "naive"]),
    "d_ff": st.one_of(st.none(), st.integers(8, 200)),
    "vocab_size": st.integers(2, 3000),
    "num_layers": st.integers(1, 4),
    "heads_and_width": st.sampled_from([(1, 8), (2, 16), (4, 32), (3, 48), (8, 64)]),
})


@settings(max_examples=60, deadline=None)
@given(switches)
def test_param_count_equals_built_model_for_every_switch(sw):
    heads, width = sw.pop("heads_and_width")
    cfg = ModelConfig(context_length=16, d_model=width, num_heads=heads, **sw)
    model = TransformerLM(cfg, device="meta")
    pc = count_params(cfg)
    assert pc.total == _unique_params(model) == model.num_params()
    named = dict(model.named_parameters())
    assert pc.embeddings == named["token_embeddings.weight"].numel()
    if not cfg.tie_embeddings:
        assert pc.lm_head == named["lm_head.weight"].numel()
    assert pc.norms == sum(p.numel() for n, p in named.items() if ".ln" in f".{n}")
    assert pc.ffn == sum(p.numel() for n, p in named.items() if ".ffn." in n)
    assert pc.attention == sum(p.numel() for n, p in named.items() if ".attn." in n)


def _counted(model, tokens, backward: bool) -> int:
    with FlopCounterMode(display=False) as fc:
        out = model(tokens)
        if backward:
            out.float().sum().backward()
    return fc.get_total_flops()


SHAPES = [
    dict(vocab_size=300, context_length=32, d_model=64, num_layers=2, num_heads=4, d_ff=96),
    dict(vocab_size=1000, context_length=48, d_model=96, num_layers=3, num_heads=3, ffn="silu"),
    dict(vocab_size=257, context_length=64, d_model=128, num_layers=1, num_heads=8, norm="none",
         position="nope", tie_embeddings=True),
]


@pytest.mark.parametrize("shape,batch,T", [(SHAPES[0], 1, 16), (SHAPES[1], 3, 32), (SHAPES[2], 2, 64)])
def test_dense_forward_flops_match_flop_counter_naive(shape, batch, T):
    cfg = ModelConfig(attention="naive", **shape)
    torch.manual_seed(0)
    model = TransformerLM(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (batch, T))
    measured = _counted(model, tokens, backward=False)
    predicted = count_flops(cfg, batch, T).forward_matmul
    assert predicted == pytest.approx(measured, rel=0.02)
    # Backward is twice the forward: FlopCounterMode sees 3x forward for forward + backward.
    measured_train = _counted(model, tokens, backward=True)
    assert count_flops(cfg, batch, T).training_matmul == pytest.approx(measured_train, rel=0.02)


@pytest.mark.parametrize("shape", SHAPES[1:2])
def test_flop_counter_expectation_for_cpu_sdpa(shape):
    # FlopCounterMode does not see the CPU flash kernel; the calculator says so explicitly.
    cfg = ModelConfig(attention="sdpa", **shape)
    model = TransformerLM(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (2, 32))
    measured = _counted(model, tokens, backward=True)
    assert flop_counter_expectation(cfg, 2, 32, "cpu") == pytest.approx(measured, rel=0.02)
    assert flop_counter_expectation(cfg, 2, 32, "cuda") > count_flops(cfg, 2, 32).training_matmul


def test_training_flops_per_token_closed_form():
    # 6 x matmul parameters (weights touched once per token) + 12 L T d for the dense attention scores
    # and weighted sum (the PaLM / nanoGPT formula).
    cfg = ModelConfig.from_name("small")
    d, L, T, f, V = cfg.d_model, cfg.num_layers, cfg.context_length, cfg.ffn_dim, cfg.vocab_size
    n_matmul = L * (4 * d * d + 3 * d * f) + d * V
    assert training_flops_per_token(cfg) == pytest.approx(6 * n_matmul + 12 * L * T * d, rel=1e-12)


def test_causal_count_leaves_out_the_masked_half_exactly():
    cfg = ModelConfig.from_name("tinystories")
    B, T = 2, 256
    f = count_flops(cfg, B, T)
    d, L = cfg.d_model, cfg.num_layers
    # per layer and per (scores or values) matmul: dense 2 B T^2 d, causal B T (T + 1) d
    missing = 2 * L * (2 * B * T * T * d - B * T * (T + 1) * d)
    assert f.forward_matmul - f.forward_matmul_causal == missing
    assert f.to_dict()["mfu_basis"] == "dense"


def test_flops_scale_with_context_only_through_attention():
    cfg = ModelConfig.from_name("tinystories")
    short, long = count_flops(cfg, 1, 128), count_flops(cfg, 1, 256)
    for name in ("qkv", "out_proj", "ffn", "lm_head"):
        assert long.components[name].forward == 2 * short.components[name].forward
    for name in ("attn_scores", "attn_values"):
        assert long.components[name].forward == 4 * short.components[name].forward


def test_params_and_flops_do_not_depend_on_attention_impl():
    cfg = ModelConfig.from_name("tiny")
    other = dataclasses.replace(cfg, attention="naive")
    assert count_params(cfg) == count_params(other)
    assert count_flops(cfg, 2, 32).training_matmul == count_flops(other, 2, 32).training_matmul


_VIEW_OPS = {"view", "unsqueeze", "permute", "expand", "select", "slice", "t", "transpose", "_unsafe_view", "alias",
             "unflatten", "detach", "squeeze", "as_strided", "split", "chunk", "unbind", "_reshape_alias", "reshape",
             "lift_fresh", "promote_types"}


@pytest.mark.parametrize("variant", [{}, {"attention": "naive"}, {"norm": "none", "position": "nope", "ffn": "silu"}])
@pytest.mark.parametrize("autocast", [False, True])
def test_kernel_launch_counts_match_the_ops_torch_dispatches(variant, autocast):
    """The launch overhead model counts the ops eager PyTorch really runs (views excluded)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from lm.calc.ops import forward_ops

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ not in _VIEW_OPS:
                self.n += 1
            return func(*args, **(kwargs or {}))

    cfg = ModelConfig(vocab_size=100, context_length=32, d_model=64, num_layers=3, num_heads=4, **variant)
    model = TransformerLM(cfg)
    x = torch.randint(0, 100, (2, 32))
    with Count() as fwd:
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            loss = model(x, targets=x)  # the trainer's fused LM head + loss
    with Count() as bwd:
        loss.backward()
    ops = forward_ops(cfg, 2, 32, autocast=autocast, exp_fp32=False, fused_attention=cfg.attention == "sdpa")
    assert sum(o.count * o.kernels for o in ops) == pytest.approx(fwd.n, rel=0.15)
    assert sum(o.count * o.backward_kernels for o in ops) == pytest.approx(bwd.n, rel=0.25)
