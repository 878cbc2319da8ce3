"""The whole TransformerLM against the plain second implementation (tests/reference_lm.py).

Every ablation switch is checked in float64 on the same CS336-named weights:
norm pre/post/none, position rope/nope, ffn swiglu/silu, tied embeddings and
the naive/sdpa attention kernels; then the KV cache, the state dict and errors.
"""

from __future__ import annotations

import dataclasses
import io
import itertools

import pytest
import torch

import reference_lm
from lm.errors import CheckpointError, ConfigError
from lm.model import ModelConfig, TransformerLM

D = torch.float64
BASE = ModelConfig(vocab_size=37, context_length=12, d_model=16, num_layers=2, num_heads=4, d_ff=24,
                   rope_theta=100.0)

SWITCHES = list(itertools.product(("pre", "post", "none"), ("rope", "nope"), ("swiglu", "silu"),
                                  (False, True), ("naive", "sdpa")))


def _ids(switch) -> str:
    norm, pos, ffn, tie, att = switch
    return f"{norm}-{pos}-{ffn}-{'tied' if tie else 'untied'}-{att}"


def _config(switch) -> ModelConfig:
    norm, pos, ffn, tie, att = switch
    return dataclasses.replace(BASE, norm=norm, position=pos, ffn=ffn, tie_embeddings=tie, attention=att)


def _model(cfg: ModelConfig, seed: int = 0) -> TransformerLM:
    """A float64 model whose RMSNorm gains are random too (they start at 1, which would hide a mix-up)."""
    torch.manual_seed(seed)
    model = TransformerLM(cfg, dtype=D).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0, 0.3)
    return model


def _tolerance(cfg: ModelConfig) -> dict:
    # The model keeps float32 RoPE cos/sin tables (MPS has no float64); without RoPE all is float64.
    return dict(rtol=1e-6, atol=1e-6) if cfg.position == "rope" else dict(rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("switch", SWITCHES, ids=_ids)
def test_forward_matches_reference(switch):
    cfg = _config(switch)
    model = _model(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids)
    assert logits.shape == (2, 10, cfg.vocab_size)
    assert logits.dtype == D
    ref = reference_lm.forward(model.state_dict(), cfg, ids)
    torch.testing.assert_close(logits, ref, **_tolerance(cfg))


@pytest.mark.parametrize("norm", ["pre", "post", "none"])
@pytest.mark.parametrize("position", ["rope", "nope"])
def test_no_residual_matches_reference(norm, position):
    """model.residual = false (the failure-mode ablation) against the second implementation."""
    cfg = dataclasses.replace(_config((norm, position, "swiglu", False, "naive")), residual=False)
    model = _model(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids)
    torch.testing.assert_close(logits, reference_lm.forward(model.state_dict(), cfg, ids), **_tolerance(cfg))
    with_residual = reference_lm.forward(model.state_dict(), dataclasses.replace(cfg, residual=True), ids)
    assert (logits - with_residual).abs().max() > 1e-3  # the switch changes the function


def test_reference_detects_a_wrong_model():
    """The comparison has teeth: swapping norm placement changes the logits far beyond tolerance."""
    cfg = _config(("pre", "rope", "swiglu", False, "naive"))
    model = _model(cfg)
    ids = torch.randint(0, cfg.vocab_size, (1, 8))
    with torch.no_grad():
        logits = model(ids)
    wrong = reference_lm.forward(model.state_dict(), dataclasses.replace(cfg, norm="post"), ids)
    assert (logits - wrong).abs().max() > 1e-2


def test_unbatched_and_explicit_positions():
    cfg = _config(("pre", "rope", "swiglu", False, "sdpa"))
    model = _model(cfg)
    ids = torch.randint(0, cfg.vocab_size, (6,))
    positions = torch.arange(3, 9)
    with torch.no_grad():
        logits = model(ids, token_positions=positions)
    ref = reference_lm.forward(model.state_dict(), cfg, ids, positions=positions.tolist())
    torch.testing.assert_close(logits, ref, **_tolerance(cfg))


@pytest.mark.parametrize("switch", SWITCHES, ids=_ids)
def test_kv_cache_decoding_equals_full_forward(switch):
    cfg = _config(switch)
    model = _model(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, cfg.context_length), generator=torch.Generator().manual_seed(2))
    prefill = 5
    with torch.no_grad():
        full = model(ids)
        caches = model.new_kv_caches(batch=2)
        steps = [model(ids[:, :prefill], kv_caches=caches)]
        for t in range(prefill, cfg.context_length):
            steps.append(model(ids[:, t:t + 1], token_positions=torch.tensor([t]), kv_caches=caches))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-10, atol=1e-10)


def test_state_dict_uses_cs336_names():
    cfg = dataclasses.replace(BASE, num_layers=1)
    names = set(TransformerLM(cfg).state_dict())
    per_layer = ["attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight", "attn.output_proj.weight",
                 "ln1.weight", "ln2.weight", "ffn.w1.weight", "ffn.w2.weight", "ffn.w3.weight"]
    expected = {"token_embeddings.weight", "ln_final.weight", "lm_head.weight"} | {f"layers.0.{n}" for n in per_layer}
    assert names == expected
    sd = TransformerLM(cfg).state_dict()
    assert sd["layers.0.attn.q_proj.weight"].shape == (cfg.d_model, cfg.d_model)
    assert sd["layers.0.ffn.w1.weight"].shape == (cfg.d_ff, cfg.d_model)


@pytest.mark.parametrize("switch", [("pre", "rope", "swiglu", False, "sdpa"), ("post", "nope", "silu", True, "naive"),
                                    ("none", "rope", "swiglu", True, "sdpa")], ids=_ids)
def test_state_dict_round_trip_through_a_file(switch, tmp_path):
    cfg = _config(switch)
    a, b = _model(cfg, seed=0), _model(cfg, seed=1)
    ids = torch.randint(0, cfg.vocab_size, (2, 9))
    torch.save(a.state_dict(), tmp_path / "sd.pt")
    loaded = torch.load(tmp_path / "sd.pt", weights_only=True)
    with torch.no_grad():
        assert not torch.allclose(a(ids), b(ids))
        b.load_cs336_state_dict(loaded)
        torch.testing.assert_close(b(ids), a(ids), rtol=0, atol=0)
    if cfg.tie_embeddings:
        assert b.lm_head.weight is b.token_embeddings.weight


def test_state_dict_loads_with_plain_load_state_dict():
    """Separate q/k/v tensors made by hand fuse on load: q rows first, then k, then v."""
    cfg = dataclasses.replace(BASE, num_layers=1)
    model = TransformerLM(cfg)
    sd = model.state_dict()
    d = cfg.d_model
    q, k, v = (torch.full((d, d), float(i)) for i in (1, 2, 3))
    sd.update({"layers.0.attn.q_proj.weight": q, "layers.0.attn.k_proj.weight": k, "layers.0.attn.v_proj.weight": v})
    model.load_state_dict(sd)
    fused = model.layers[0].attn.qkv_proj.weight
    torch.testing.assert_close(fused, torch.cat([q, k, v]))


def _sd_bytes(model) -> dict:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_missing_tensor_is_named():
    model = TransformerLM(BASE)
    sd = _sd_bytes(model)
    del sd["layers.1.ffn.w3.weight"]
    with pytest.raises(CheckpointError, match=r"missing tensors: layers\.1\.ffn\.w3\.weight"):
        model.load_cs336_state_dict(sd)


def test_extra_tensor_is_named():
    model = TransformerLM(BASE)
    sd = _sd_bytes(model)
    sd["layers.2.attn.q_proj.weight"] = torch.zeros(16, 16)
    with pytest.raises(CheckpointError, match=r"unexpected tensors: layers\.2\.attn\.q_proj\.weight"):
        model.load_cs336_state_dict(sd)


def test_misshaped_tensor_names_both_shapes():
    model = TransformerLM(BASE)
    sd = _sd_bytes(model)
    sd["layers.0.attn.k_proj.weight"] = torch.zeros(8, 16)
    with pytest.raises(CheckpointError) as e:
        model.load_cs336_state_dict(sd)
    msg = str(e.value)
    assert "layers.0.attn.k_proj.weight" in msg
    assert "[8, 16]" in msg and "[16, 16]" in msg


def test_num_params_counts_by_hand():
    for tie in (False, True):
        cfg = dataclasses.replace(BASE, tie_embeddings=tie)
        V, d, L, f = cfg.vocab_size, cfg.d_model, cfg.num_layers, cfg.d_ff
        per_layer = 4 * d * d + 3 * d * f + 2 * d
        expected = V * d + L * per_layer + d + (0 if tie else V * d)
        assert TransformerLM(cfg).num_params() == expected


def test_invalid_config_is_a_config_error():
    with pytest.raises(ConfigError, match="divisible"):
        TransformerLM(dataclasses.replace(BASE, d_model=18, num_heads=4))


def test_sequence_longer_than_context_is_rejected():
    model = TransformerLM(BASE)
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, BASE.context_length + 1, dtype=torch.long))


def test_dropout_only_in_training():
    cfg = dataclasses.replace(BASE, attn_dropout=0.5, resid_dropout=0.5)
    model = _model(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 8))
    with torch.no_grad():
        ref = reference_lm.forward(model.state_dict(), cfg, ids)
        torch.testing.assert_close(model.eval()(ids), ref, **_tolerance(cfg))
        model.train()
        assert not torch.allclose(model(ids), ref, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the cuDNN-first attention path runs only on CUDA")
def test_cuda_causal_attention_under_bf16_matches_the_from_scratch_kernel():
    """On CUDA, mask-free causal sdpa asks for cuDNN first; its loss and gradients must match the
    naive kernel's under bf16 autocast (same weights) to bf16 accuracy."""
    cfg = dataclasses.replace(BASE, vocab_size=97, context_length=128, d_model=128, num_heads=2, d_ff=256)
    ids = torch.randint(0, cfg.vocab_size, (4, 128), generator=torch.Generator().manual_seed(2)).cuda()
    results = []
    for att in ("naive", "sdpa"):
        torch.manual_seed(0)
        model = TransformerLM(dataclasses.replace(cfg, attention=att)).cuda()
        with torch.autocast("cuda", torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        results.append((loss.detach(), torch.cat([p.grad.double().flatten() for p in model.parameters()])))
    (l_ref, g_ref), (l_sdpa, g_sdpa) = results
    torch.testing.assert_close(l_sdpa, l_ref, rtol=1e-2, atol=1e-2)
    assert torch.nn.functional.cosine_similarity(g_sdpa, g_ref, dim=0) > 0.999
