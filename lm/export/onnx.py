"""``--format onnx``: the forward pass (token ids -> logits) as an ONNX graph, checked with onnxruntime.

``model.onnx`` takes ``input_ids`` (int64, batch x sequence, both dynamic,
sequence up to the context length) and returns ``logits`` (float32, batch x
sequence x vocab). It is written by torch's exporter (the dynamo one, which
needs ``onnxscript``) and then run with onnxruntime on random ids of two
shapes; the export fails unless its logits match lab's within ``TOLERANCE``.
Next to it: lab's ``config.json`` and the tokenizer both as lab files and as
a Hugging Face ``tokenizer.json`` (for onnxruntime users in other languages).
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lm.atomic import atomic_rename
from lm.config.schema import to_dict
from lm.errors import ExportError
from lm.export.files import write_json
from lm.model import CausalSelfAttention, Linear

MODEL_FILE = "model.onnx"
TOLERANCE = 1e-4
OPSET = 18
EXTRA_HINT = "pip install 'lab-lm[export]' (or: pip install onnx onnxscript onnxruntime)"


class _GraphLinear(nn.Module):
    """lab's Linear (x W^T) as F.linear, sharing the weight (a tied head stays tied)."""

    def __init__(self, weight: nn.Parameter):
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class _GraphAttention(nn.Module):
    """lab's CausalSelfAttention for a (B, T, d_model) input, with torch reshapes instead of einx."""

    def __init__(self, attn: CausalSelfAttention):
        super().__init__()
        self.num_heads = attn.num_heads
        self.qkv_proj = _GraphLinear(attn.qkv_proj.weight)
        self.output_proj = _GraphLinear(attn.output_proj.weight)
        self.rope = attn.rope  # lab's own module: no einx, symbolic shapes pass through

    def forward(self, x: torch.Tensor, token_positions: torch.Tensor | None = None, kv_cache=None) -> torch.Tensor:
        positions = torch.arange(x.shape[-2], device=x.device) if token_positions is None else token_positions
        qkv = self.qkv_proj(x).unflatten(-1, (3, self.num_heads, -1))  # (B, T, 3 d_model) -> (B, T, 3, H, d_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, T, 3, H, d_head) -> 3 x (B, H, T, d_head)
        if self.rope is not None:
            q, k = self.rope(q, positions), self.rope(k, positions)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, d_head)
        return self.output_proj(out.transpose(1, 2).flatten(-2))  # (B, H, T, d_head) -> (B, T, d_model)


class _Logits(nn.Module):
    """input_ids (B, T) -> logits (B, T, V) in fp32, the graph's one input and output.

    A copy of the model whose Linear and attention modules are replaced by the
    equivalents above: einx turns every shape into a Python int, which would
    freeze the graph to the example's batch and sequence length. Blocks, norms,
    RoPE, the FFN and the embedding are lab's own modules, so every switch
    (norm placement, NoPE, SiLU MLP, no residual) is exported as trained;
    :func:`verify` checks the result against the original model.
    """

    def __init__(self, model):
        super().__init__()
        self.model = copy.deepcopy(model).float().eval()
        for parent in list(self.model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, CausalSelfAttention):
                    setattr(parent, name, _GraphAttention(child))
                elif isinstance(child, Linear):
                    setattr(parent, name, _GraphLinear(child.weight))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids).float()


def missing_packages() -> list[str]:
    return [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]


def check_available() -> None:
    if missing := missing_packages():
        raise ExportError(f"--format onnx needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                          f"not installed: {EXTRA_HINT}")


def export_graph(model, path: Path) -> Path:
    """torch.onnx.export of ``model``'s forward with dynamic batch and sequence length."""
    check_available()
    cfg = model.cfg
    example = torch.randint(0, cfg.vocab_size, (2, min(8, cfg.context_length)))
    batch = torch.export.Dim("batch", min=1)
    seq = torch.export.Dim("sequence", min=1, max=cfg.context_length)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" and similar notes are not the user's business
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(_Logits(model), (example,), dynamo=True, opset_version=OPSET,
                                        input_names=["input_ids"], output_names=["logits"],
                                        dynamic_shapes={"input_ids": {0: batch, 1: seq}}, verbose=False)
    except Exception as e:  # the exporter raises many types; the user needs to know it was the exporter
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ExportError(f"torch's ONNX exporter (torch {torch.__version__}) failed on this model: "
                          f"{type(e).__name__}: {first}") from e
    finally:
        quiet.setLevel(level)
    program.save(str(path))
    return path


def verify(model, path: Path, seed: int = 0) -> float:
    """Largest |onnxruntime - lab| logit difference over two random inputs; ExportError above TOLERANCE."""
    import onnxruntime as ort

    cfg = model.cfg
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for shape in ((1, cfg.context_length), (3, max(1, cfg.context_length // 3))):
        ids = torch.randint(0, cfg.vocab_size, shape, generator=g)
        with torch.no_grad():
            want = model(ids).float()
        try:
            got = torch.from_numpy(session.run(["logits"], {"input_ids": ids.numpy()})[0])
        except Exception as e:  # onnxruntime's own error types
            raise ExportError(f"onnxruntime cannot run the exported graph {path} on input of shape {list(shape)}: "
                              f"{e}") from e
        if got.shape != want.shape:
            raise ExportError(f"the ONNX graph {path} gives logits of shape {list(got.shape)} for input "
                              f"{list(shape)}; lab gives {list(want.shape)}")
        worst = max(worst, (got - want).abs().max().item())
    if not worst <= TOLERANCE:
        raise ExportError(f"the ONNX graph {path} does not reproduce the model: onnxruntime's logits differ from "
                          f"lab's by up to {worst:.3g} (allowed {TOLERANCE})")
    return worst


def write(model, tokenizer, out: Path, *, experiment: dict, iteration: int | None, source: dict) -> list[Path]:
    """model.onnx (verified), config.json and the tokenizer into ``out``."""
    from lm.export.hf_tokenizer import write_hf_tokenizer

    model = model.float().eval()
    # Written under a temporary name and renamed once onnxruntime agrees: a model.onnx is always a checked one.
    pending = out / f".{MODEL_FILE}.unverified"
    try:
        diff = verify(model, export_graph(model, pending))
        graph = out / MODEL_FILE
        atomic_rename(pending, graph)
    finally:
        pending.unlink(missing_ok=True)
    cfg = {"format": "lab-onnx/1", "model": to_dict(model.cfg), "experiment": experiment, "iteration": iteration,
           "inputs": {"input_ids": "int64 [batch, sequence <= context_length]"},
           "outputs": {"logits": "float32 [batch, sequence, vocab_size]"},
           "onnxruntime_max_abs_diff": diff, "source": source}
    written = [graph, write_json(out / "config.json", cfg)]
    tokenizer.save(out / "tokenizer")
    written.append(out / "tokenizer")
    written += write_hf_tokenizer(tokenizer, out, model.cfg.context_length)
    return written
