"""The experiment schema: one dataclass per TOML section, a docstring per field.

This module is torch-free so the loader, ``lab config show`` and the console
can use it without importing torch. The strict loader (unknown keys, types,
cross-field rules, ``--set`` overrides) lives in :mod:`lm.config.loader`.

A field's docstring is the string literal right below it; :func:`field_docs`
reads them so the CLI and the TUI can show each field's documentation.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
from dataclasses import dataclass, field
from typing import Literal

from lm.errors import ConfigError


def default_d_ff(d_model: int, ffn: str) -> int:
    """SwiGLU: about 8/3 d_model rounded to a multiple of 64; SiLU MLP: 4 d_model.

    Both give about 8 d_model^2 parameters per block, so the ablation is fair.
    """
    if ffn == "silu":
        return 4 * d_model
    return max(64, 64 * round(8 * d_model / 3 / 64))


@dataclass
class ModelConfig:
    """Shape and ablation switches of the transformer LM (the ``[model]`` section)."""

    vocab_size: int = 10000
    """Number of token ids; must cover the tokenizer's vocabulary."""
    context_length: int = 256
    """Longest sequence the model sees; sizes the RoPE tables and the KV cache."""
    d_model: int = 512
    """Width of the residual stream."""
    num_layers: int = 4
    """Number of transformer blocks."""
    num_heads: int = 16
    """Attention heads; d_model must be divisible by it."""
    d_ff: int | None = None
    """Feed-forward width; None picks 8/3 d_model (multiple of 64) for SwiGLU, 4 d_model for SiLU."""
    rope_theta: float = 10000.0
    """RoPE base: angle = position * theta^(-2k/d_head)."""
    norm: Literal["pre", "post", "none"] = "pre"
    """Where RMSNorm goes: before each sub-layer (pre), after the residual add (post), or nowhere."""
    residual: bool = True
    """Residual connections around each sub-layer; false makes each block x -> ffn(attn(x)) (an ablation:
    with norm = 'none' too, the loss freezes and the gradients vanish)."""
    position: Literal["rope", "nope"] = "rope"
    """Position encoding: rotary (rope) or none at all (nope; causal masking alone)."""
    ffn: Literal["swiglu", "silu"] = "swiglu"
    """Feed-forward: SwiGLU W2(SiLU(W1 x) * W3 x), or a plain SiLU MLP W2(SiLU(W1 x))."""
    tie_embeddings: bool = False
    """Share the token embedding matrix with the LM head."""
    attn_dropout: float = 0.0
    """Dropout on attention weights during training."""
    resid_dropout: float = 0.0
    """Dropout on each residual branch (attention and FFN outputs) during training."""
    attention: Literal["sdpa", "naive"] = "sdpa"
    """Attention kernel: torch's fused scaled_dot_product_attention, or the from-scratch one."""
    rmsnorm_eps: float = 1e-5
    """Epsilon inside RMSNorm's square root."""

    @property
    def d_head(self) -> int:
        return self.d_model // self.num_heads

    @property
    def ffn_dim(self) -> int:
        """The feed-forward width actually built."""
        return self.d_ff if self.d_ff is not None else default_d_ff(self.d_model, self.ffn)

    def problems(self) -> list[str]:
        """Every inconsistency in this config, as readable sentences (empty if valid)."""
        out = []
        for name in ("vocab_size", "d_model", "num_layers", "num_heads"):
            if getattr(self, name) < 1:
                out.append(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if self.context_length < 2:
            out.append(f"model.context_length must be greater than 1, got {self.context_length}")
        if self.num_heads >= 1 and self.d_model % self.num_heads:
            out.append(
                f"model.d_model ({self.d_model}) must be divisible by model.num_heads ({self.num_heads})"
            )
        elif self.position == "rope" and self.num_heads >= 1 and self.d_head % 2:
            out.append(f"model.position = 'rope' needs an even head size, got d_model/num_heads = {self.d_head}")
        if self.d_ff is not None and self.d_ff < 1:
            out.append(f"model.d_ff must be at least 1 (or left out for the default), got {self.d_ff}")
        for name in ("attn_dropout", "resid_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                out.append(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        from lm.config.loader import choice_problems  # the one check of Literal choices (a config from a checkpoint)

        out += choice_problems(self, "model")
        if self.rope_theta <= 0:
            out.append(f"model.rope_theta must be positive, got {self.rope_theta}")
        return out

    def validate(self) -> "ModelConfig":
        if problems := self.problems():
            raise ConfigError(problems)
        return self

    @classmethod
    def from_name(cls, name: str, **overrides) -> "ModelConfig":
        """A preset by name (``tiny``, ``tinystories``, ``small`` ... ``2.7B``), with overrides."""
        if name not in PRESETS:
            raise ConfigError([f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}"])
        return dataclasses.replace(PRESETS[name], **overrides)


# The CS336 size table (GPT-2 shapes) plus a CPU-sized model for tests.
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(vocab_size=512, context_length=64, d_model=64, num_layers=2, num_heads=4, d_ff=192),
    "tinystories": ModelConfig(vocab_size=10000, context_length=256, d_model=512, num_layers=4,
                               num_heads=16, d_ff=1344, rope_theta=10000.0),
    "small": ModelConfig(vocab_size=10000, context_length=512, d_model=768, num_layers=12, num_heads=12, d_ff=3072),
    "medium": ModelConfig(vocab_size=10000, context_length=512, d_model=1024, num_layers=24, num_heads=16, d_ff=4096),
    "large": ModelConfig(vocab_size=10000, context_length=512, d_model=1280, num_layers=36, num_heads=20, d_ff=5120),
    "xl": ModelConfig(vocab_size=10000, context_length=512, d_model=1600, num_layers=48, num_heads=25, d_ff=6400),
    "2.7B": ModelConfig(vocab_size=10000, context_length=512, d_model=2560, num_layers=32, num_heads=32, d_ff=10240),
}


@dataclass
class DataConfig:
    """Where the text comes from (the ``[data]`` section)."""

    source: str = "builtin"
    """A text file, a directory (its *.txt files, sorted, joined with the first special token),
    a named dataset (tinystories, owt, tinyshakespeare; fetch with `lab data get`) or 'builtin'."""
    val_source: str = ""
    """A separate validation text (same forms as source); empty uses a named dataset's own
    validation file, else holds out the last val_fraction of source."""
    val_fraction: float = 0.1
    """Fraction of the corpus, taken from its end, used for validation when val_source is empty."""
    max_bytes: int = 0
    """Use at most the first N bytes of the corpus (0 = all); a separate validation text is
    then capped at max_bytes * val_fraction."""
    cache_dir: str = ""
    """Where token files are cached; empty means $LAB_CACHE_DIR or ~/.cache/lab."""


@dataclass
class TokenizerConfig:
    """How text becomes token ids (the ``[tokenizer]`` section)."""

    vocab_size: int = 10000
    """Size of the byte-level BPE vocabulary to train (256 bytes + specials + merges)."""
    special_tokens: list[str] = field(default_factory=lambda: ["<|endoftext|>"])
    """Strings that are never split or merged into; the first one separates documents."""
    path: str = ""
    """Directory holding vocab.json and merges.txt of an existing tokenizer; empty trains one on the corpus."""
    train_bytes: int = 0
    """Train the tokenizer on at most this many bytes of the training text (0 = all of it)."""


@dataclass
class OptimizerConfig:
    """AdamW or Muon (the ``[optimizer]`` section)."""

    name: Literal["adamw", "muon"] = "adamw"
    """'adamw': AdamW for every parameter. 'muon': Muon (orthogonalised momentum) for the blocks' weight
    matrices and AdamW for the embeddings (embed_lr), the LM head (head_lr) and the norm gains (scalar_lr)."""
    lr: float = 1e-3
    """Peak learning rate (max_lr of the cosine schedule); with name = 'muon' only the logged lr."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW's (beta1, beta2)."""
    eps: float = 1e-8
    """AdamW's epsilon in the denominator."""
    weight_decay: float = 0.1
    """Decoupled weight decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 turns clipping off)."""
    muon_lr: float = 0.02
    """Muon: peak learning rate of the blocks' weight matrices (Keller Jordan's Muon default)."""
    muon_momentum: float = 0.95
    """Muon: momentum coefficient beta of m = beta m + (1 - beta) g."""
    muon_nesterov: bool = True
    """Muon: orthogonalise the Nesterov direction (1 - beta) g + beta m instead of m."""
    muon_ns_steps: int = 5
    """Muon: steps of the quintic Newton-Schulz iteration."""
    muon_weight_decay: float = 0.0
    """Muon: decoupled weight decay of the Muon matrices (W <- W (1 - lr wd))."""
    embed_lr: float = 0.6
    """Muon runs: AdamW peak learning rate of the token embeddings, decayed by weight_decay
    (modded-nanogpt's value; docs/experiments.md has a tuned one for small models)."""
    head_lr: float = 0.008
    """Muon runs: AdamW peak learning rate of the LM head, decayed by weight_decay (modded-nanogpt's)."""
    scalar_lr: float = 0.04
    """Muon runs: AdamW peak learning rate of the RMSNorm gains, never decayed (modded-nanogpt's)."""


@dataclass
class ScheduleConfig:
    """Learning-rate schedule (the ``[schedule]`` section)."""

    kind: Literal["cosine", "constant"] = "cosine"
    """'cosine': linear warmup then cosine decay to min_lr; 'constant': warmup then flat."""
    warmup_steps: int = 100
    """Steps of linear warmup from 0 to optimizer.lr."""
    cosine_steps: int = 0
    """Step at which the cosine reaches min_lr (0 = training.steps)."""
    min_lr_ratio: float = 0.1
    """min_lr as a fraction of optimizer.lr."""


@dataclass
class TrainingConfig:
    """The training loop (the ``[training]`` section)."""

    steps: int = 1000
    """Optimizer steps to take."""
    batch_size: int = 32
    """Sequences per micro-batch, in all: on N processes each takes batch_size / N of the same batch."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    seed: int = 0
    """Seeds the model init, the batch sampler and dropout."""
    device: str = "auto"
    """'auto' (cuda > mps > cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'."""
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    """'auto': bf16 autocast where the device supports it (CUDA), fp32 on MPS and CPU."""
    compile: Literal["auto", "on", "off"] = "auto"
    """torch.compile the model (each block once, reused, and the loss): 'auto' is on for CUDA, off for MPS and CPU."""
    cuda_graphs: Literal["auto", "on", "off"] = "auto"
    """Replay the compiled step's kernels as CUDA graphs (torch.compile mode 'reduce-overhead'), so the
    host does not launch them one by one: 'auto' is on for compiled CUDA models under 50M parameters
    on one GPU without activation checkpointing (their steps are launch-bound), off otherwise."""
    deterministic: bool = False
    """Bitwise-repeatable runs on CUDA (same seed, GPU and software: the same weights at every step):
    torch's deterministic algorithms (an op that has none stops the run and is named), a fixed cuBLAS
    workspace and Inductor without benchmark-driven kernel choices. Slower: the embedding's backward
    sorts its indices instead of adding atomically. CPU runs repeat bitwise without it."""
    activation_checkpointing: Literal["auto", "none", "full", "selective", "weights"] = "auto"
    """Recompute activations in backward to save memory: 'full' keeps only each block's input (one
    extra forward of the blocks); 'selective' keeps matmul and attention outputs and recomputes the
    cheap elementwise ops; 'weights' keeps every activation and recomputes only the bf16 copies of
    the weights under bf16 autocast (2 bytes per block parameter saved, one re-cast in backward);
    'auto' is 'weights' for a compiled bf16 step on one GPU that is not captured in CUDA graphs, of
    a model of 1.5B parameters or more (there the copies are 4-7 GB; below, they save little for
    about 1% of the step), 'none' otherwise."""
    threads: int = 0
    """CPU threads for torch (0 = one fewer than the cores, at least 1: spinning threads
    that compete with other processes for every core slow small models down severely)."""
    max_time: float = 0.0
    """Stop (with a final eval and checkpoint) after this many seconds of training (0 = no limit)."""
    log_every: int = 10
    """Write a train metrics line every N steps."""
    parallel: Literal["auto", "none", "ddp", "fsdp"] = "auto"
    """Several processes (lab run --gpus N, torchrun): 'ddp' replicates the model, 'fsdp' shards
    weights, gradients and optimizer state (FSDP2); 'auto' is DDP when a replica fits one GPU
    (by the calculator), else FSDP2."""


@dataclass
class EvalConfig:
    """Validation (the ``[eval]`` section)."""

    every: int = 200
    """Evaluate every N steps (0 = only at the end)."""
    batches: int = 20
    """Validation batches per evaluation."""
    batch_size: int = 0
    """Sequences per validation batch (0 = training.batch_size)."""


@dataclass
class CheckpointConfig:
    """Checkpoints (the ``[checkpoint]`` section)."""

    every: int = 500
    """Write a checkpoint every N steps (0 = only at the end); always on stop, halt and finish."""
    keep_last: int = 3
    """Keep this many step checkpoints besides latest.pt and best.pt."""


@dataclass
class ExperimentConfig:
    """A whole experiment: what to train on, what to train, how."""

    name: str = "experiment"
    """Name of the experiment; run directories are runs/<name>-<timestamp>."""
    description: str = ""
    """Free text shown in run lists."""
    runs_dir: str = "runs"
    """Parent directory of run directories (relative to the current directory)."""
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    @property
    def tokens_per_step(self) -> int:
        return self.training.batch_size * self.training.grad_accum * self.model.context_length

    @property
    def total_tokens(self) -> int:
        return self.tokens_per_step * self.training.steps


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "model": ModelConfig,
    "optimizer": OptimizerConfig,
    "schedule": ScheduleConfig,
    "training": TrainingConfig,
    "eval": EvalConfig,
    "checkpoint": CheckpointConfig,
}


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field name: docstring} from the string literals that follow each field."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def to_dict(obj) -> dict:
    """A dataclass tree as plain dicts/lists (TOML-ready: None values dropped)."""
    def clean(v):
        if dataclasses.is_dataclass(v):
            return {f.name: clean(getattr(v, f.name)) for f in dataclasses.fields(v)
                    if getattr(v, f.name) is not None}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return clean(obj)
