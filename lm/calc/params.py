"""Parameter counts by component, exactly as :class:`lm.model.TransformerLM` builds them.

The total equals ``sum(p.numel() for p in model.parameters())``: a tied LM
head shares the embedding matrix and is counted once (under embeddings).
RoPE tables are buffers, not parameters; they are reported separately.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lm.config.schema import ModelConfig


@dataclass(frozen=True)
class ParamCount:
    """Parameters of each component (counts, not bytes)."""

    embeddings: int
    attention: int
    ffn: int
    norms: int
    lm_head: int
    rope_buffer_elements: int
    """cos/sin tables (fp32, one pair per layer): memory, but not parameters."""
    num_tensors: int
    """Parameter tensors (foreach ops launch per tensor off CUDA, per few dozen on it)."""
    largest_tensor: int
    """Elements of the largest parameter tensor."""
    matmul_weights: int
    """Parameters that pass through a matmul (cast to bf16 under autocast): all but embeddings-only and norms."""
    matrix_params: int = 0
    """Parameters in 2-D tensors (the weight-decayed group: everything but the norm gains)."""

    @property
    def total(self) -> int:
        return self.embeddings + self.attention + self.ffn + self.norms + self.lm_head

    @property
    def non_embedding(self) -> int:
        """Parameters outside the token embedding and LM head (the N of scaling laws)."""
        return self.attention + self.ffn + self.norms

    def by_component(self) -> dict[str, int]:
        return {"embeddings": self.embeddings, "attention": self.attention, "ffn": self.ffn,
                "norms": self.norms, "lm_head": self.lm_head}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total"] = self.total
        d["non_embedding"] = self.non_embedding
        return d


def count_params(cfg: ModelConfig) -> ParamCount:
    """Count the parameters ``TransformerLM(cfg)`` will have, per component."""
    d, V, L, f = cfg.d_model, cfg.vocab_size, cfg.num_layers, cfg.ffn_dim
    ffn_mats = 3 if cfg.ffn == "swiglu" else 2
    has_norm = cfg.norm != "none"
    attention = L * (3 * d * d + d * d)  # fused QKV (3d x d) and the output projection (d x d)
    ffn = L * ffn_mats * d * f
    norms = (2 * L + 1) * d if has_norm else 0  # ln1, ln2 per block and ln_final
    embeddings = V * d
    lm_head = 0 if cfg.tie_embeddings else V * d
    rope = L * 2 * cfg.context_length * (cfg.d_head // 2) if cfg.position == "rope" else 0
    num_tensors = 1 + L * (2 + ffn_mats + (2 if has_norm else 0)) + (1 if has_norm else 0) + (0 if cfg.tie_embeddings else 1)
    largest = max(V * d, 3 * d * d, d * f)
    return ParamCount(embeddings=embeddings, attention=attention, ffn=ffn, norms=norms, lm_head=lm_head,
                      rope_buffer_elements=rope, num_tensors=num_tensors, largest_tensor=largest,
                      matmul_weights=attention + ffn + V * d,
                      matrix_params=embeddings + attention + ffn + lm_head)
