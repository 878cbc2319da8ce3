"""lab's model <-> Hugging Face ``LlamaForCausalLM``: the config and the weights.

lab's model is Llama-shaped (pre-norm RMSNorm, RoPE, SwiGLU, no biases), so a
config maps field by field onto ``LlamaConfig`` and the weights tensor by
tensor. One real difference: lab's RoPE rotates consecutive pairs
``(x[2k], x[2k+1])`` while HF Llama rotates halves ``(x[k], x[k + d/2])`` with
the same frequency for pair k. So within each head the q and k projection rows
are reordered ``[0, 2, 4, ..., 1, 3, 5, ...]`` on export (the inverse on
import); the attention scores q.k are unchanged because q and k get the same
order. v, the output projection and everything else copy as they are.

A switch Llama cannot express (post-norm, no norm, NoPE, a plain SiLU MLP,
no residual, or any model setting this module does not know that is not at
its default) is refused with an :class:`~lm.errors.ExportError` naming it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from lm.config.schema import ModelConfig
from lm.errors import ExportError

# Formats that store lab's own model whatever its switches (the error says so).
ANY_MODEL_FORMATS = "--format safetensors (lab's own layout) or --format onnx (the forward pass as a graph)"

# ModelConfig fields and what they become in LlamaConfig. Training-only settings map to nothing:
# dropout is off at inference and the attention kernel does not change the function.
_MAPPED = {"vocab_size": "vocab_size", "context_length": "max_position_embeddings", "d_model": "hidden_size",
           "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads", "d_ff": "intermediate_size",
           "rope_theta": "rope_theta", "rmsnorm_eps": "rms_norm_eps", "tie_embeddings": "tie_word_embeddings"}
_INFERENCE_NEUTRAL = {"attn_dropout", "resid_dropout", "attention"}
# Switches with a value Llama has, and what each other value means (for the error).
_REQUIRED = {
    "norm": ("pre", {"post": "post-norm (RMSNorm after each residual add)", "none": "no normalisation at all"}),
    "position": ("rope", {"nope": "no position encoding (NoPE)"}),
    "ffn": ("swiglu", {"silu": "a plain SiLU MLP W2(SiLU(W1 x)) instead of SwiGLU"}),
    "residual": (True, {False: "no residual connections"}),
}


def llama_problems(cfg: ModelConfig) -> list[str]:
    """Why ``cfg`` cannot be written as a LlamaConfig (empty if it can)."""
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name in _REQUIRED:
            wanted, meaning = _REQUIRED[f.name]
            if value != wanted:
                what = meaning.get(value, "not what Llama does")
                out.append(f"model.{f.name} = {_toml(value)} ({what}); Llama needs model.{f.name} = {_toml(wanted)}")
        elif f.name not in _MAPPED and f.name not in _INFERENCE_NEUTRAL and value != default:
            out.append(f"model.{f.name} = {_toml(value)} has no Llama equivalent (only its default "
                       f"{_toml(default)} does)")
    return out


def check_llama(cfg: ModelConfig, source: str) -> None:
    """ExportError naming every switch of ``cfg`` that Llama cannot express."""
    if problems := llama_problems(cfg):
        raise ExportError(f"{source} cannot be exported as a Hugging Face Llama model: " + "; ".join(problems)
                          + f". Use {ANY_MODEL_FORMATS}, which carry any lab model.")


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, str) else str(v)


def hf_config(cfg: ModelConfig, *, eos_token_id: int | None, dtype: torch.dtype) -> dict:
    """The ``config.json`` of a LlamaForCausalLM equal to a lab model of ``cfg``.

    ``rope_theta`` is written both at the top level (transformers 4.x, llama.cpp's
    converter) and in ``rope_parameters`` (transformers 5). lab has no BOS token:
    a new document starts after ``<|endoftext|>``, as in GPT-2, so BOS = EOS.
    """
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_heads,
        "head_dim": cfg.d_head,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": cfg.rmsnorm_eps,
        "rope_theta": float(cfg.rope_theta),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        "tie_word_embeddings": bool(cfg.tie_embeddings),
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
        "dtype": str(dtype).removeprefix("torch."),  # transformers 5 name; 4.x read torch_dtype (a hint only)
    }


def model_config_from_hf(hf: dict, source: str) -> ModelConfig:
    """The lab ModelConfig of a Llama ``config.json``; ExportError naming everything lab cannot load."""
    problems = []

    def need(key, ok, why):
        if key in hf and not ok(hf[key]):
            problems.append(f"{key} = {hf[key]!r} ({why})")

    if hf.get("model_type") != "llama":
        problems.append(f"model_type = {hf.get('model_type')!r} (lab imports 'llama' only)")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "max_position_embeddings"):
        if not isinstance(hf.get(key), int) or isinstance(hf.get(key), bool) or hf[key] < 1:
            problems.append(f"{key} is {hf.get(key)!r}, not a positive integer")
    if problems:
        raise ExportError(f"{source} is not a Llama config lab can import: " + "; ".join(problems))
    heads = hf["num_attention_heads"]
    need("hidden_act", lambda v: v == "silu", "lab's SwiGLU uses SiLU")
    need("num_key_value_heads", lambda v: v in (None, heads), "grouped-query attention is not in lab's model")
    need("head_dim", lambda v: v in (None, hf["hidden_size"] // heads), "lab's head size is hidden_size / heads")
    need("attention_bias", lambda v: not v, "lab's projections have no bias")
    need("mlp_bias", lambda v: not v, "lab's projections have no bias")
    need("pretraining_tp", lambda v: v in (None, 1), "only 1 is the plain model")
    need("rope_scaling", lambda v: v is None or (isinstance(v, dict) and v.get("rope_type", v.get("type")) == "default"),
         "lab's RoPE has no scaling")
    rope = hf.get("rope_parameters") or {}
    need("rope_parameters", lambda v: v is None or (isinstance(v, dict) and v.get("rope_type", "default") == "default"
                                                    and v.get("partial_rotary_factor", 1.0) == 1.0),
         "lab's RoPE is the default kind over the whole head")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0)) if isinstance(rope, dict) else 10000.0
    cfg = ModelConfig(vocab_size=hf["vocab_size"], context_length=hf["max_position_embeddings"],
                      d_model=hf["hidden_size"], num_layers=hf["num_hidden_layers"], num_heads=heads,
                      d_ff=hf["intermediate_size"], rope_theta=float(theta),
                      rmsnorm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                      tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
    problems += cfg.problems()
    if problems:
        raise ExportError(f"{source} is not a Llama model lab can import: " + "; ".join(problems))
    return cfg


# ----------------------------------------------------------------------------- weights

def _halves_from_pairs(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head reordered from lab's interleaved pairs to HF's halves."""
    d_head = w.shape[0] // heads
    # (H d_head, D) -> (H, d_head/2, 2, D) -> (H, 2, d_head/2, D) -> (H d_head, D)
    return w.reshape(heads, d_head // 2, 2, w.shape[1]).transpose(1, 2).reshape(w.shape)


def _pairs_from_halves(w: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of :func:`_halves_from_pairs`."""
    d_head = w.shape[0] // heads
    # (H d_head, D) -> (H, 2, d_head/2, D) -> (H, d_head/2, 2, D) -> (H d_head, D)
    return w.reshape(heads, 2, d_head // 2, w.shape[1]).transpose(1, 2).reshape(w.shape)


def _layer_names(i: int) -> list[tuple[str, str]]:
    """(lab name, HF name) of every tensor of block ``i``."""
    lab, hf = f"layers.{i}.", f"model.layers.{i}."
    return [(lab + "attn.q_proj.weight", hf + "self_attn.q_proj.weight"),
            (lab + "attn.k_proj.weight", hf + "self_attn.k_proj.weight"),
            (lab + "attn.v_proj.weight", hf + "self_attn.v_proj.weight"),
            (lab + "attn.output_proj.weight", hf + "self_attn.o_proj.weight"),
            (lab + "ffn.w1.weight", hf + "mlp.gate_proj.weight"),
            (lab + "ffn.w3.weight", hf + "mlp.up_proj.weight"),
            (lab + "ffn.w2.weight", hf + "mlp.down_proj.weight"),
            (lab + "ln1.weight", hf + "input_layernorm.weight"),
            (lab + "ln2.weight", hf + "post_attention_layernorm.weight")]


def name_map(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(lab state-dict name, HF name) of every tensor; the tied head is not listed twice."""
    names = [("token_embeddings.weight", "model.embed_tokens.weight")]
    for i in range(cfg.num_layers):
        names += _layer_names(i)
    names.append(("ln_final.weight", "model.norm.weight"))
    if not cfg.tie_embeddings:
        names.append(("lm_head.weight", "lm_head.weight"))
    return names


def _rotated(name: str) -> bool:
    return name.endswith(("attn.q_proj.weight", "attn.k_proj.weight"))


def hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A lab (CS336-named) state dict as LlamaForCausalLM tensors, q/k rows permuted."""
    out = {}
    for lab_name, hf_name in name_map(cfg):
        w = state[lab_name]
        out[hf_name] = (_halves_from_pairs(w, cfg.num_heads) if _rotated(lab_name) else w).contiguous()
    return out


def lab_state_dict(hf: dict[str, torch.Tensor], cfg: ModelConfig, source: str) -> dict[str, torch.Tensor]:
    """The inverse of :func:`hf_state_dict`; ExportError naming missing, extra or mis-shaped tensors."""
    pairs = name_map(cfg)
    expected = {h for _, h in pairs}
    missing = sorted(expected - hf.keys())
    # A tied model may still carry lm_head.weight (a copy of the embedding); rotary tables are not weights.
    ignorable = {"lm_head.weight"} if cfg.tie_embeddings else set()
    extra = sorted(k for k in hf.keys() - expected - ignorable if not k.endswith("rotary_emb.inv_freq"))
    problems = []
    if missing:
        problems.append("missing tensors: " + ", ".join(missing))
    if extra:
        problems.append("tensors lab's model has no place for: " + ", ".join(extra))
    if problems:
        raise ExportError(f"{source} does not hold the weights its config.json describes: " + "; ".join(problems))
    out = {}
    for lab_name, hf_name in pairs:
        w = hf[hf_name]
        out[lab_name] = (_pairs_from_halves(w, cfg.num_heads) if _rotated(lab_name) else w).contiguous()
    if cfg.tie_embeddings:
        out["lm_head.weight"] = out["token_embeddings.weight"]
    return out
