"""Training throughput and MFU of lab's engine against a plain nanoGPT-style GPT, in one process.

For every CS336 size at context 1024 (vocab 50304) and the shipped experiments'
shapes, this builds lab's training step exactly as ``lab run`` does (the fused
chunked LM head + loss, regional compilation, fused AdamW, CUDA graphs where
the plan picks them: ``lm.bench.steps.build_workload``) and a baseline written
plainly here (nn.Linear, LayerNorm, GELU MLP, learned positions, tied
embeddings, ``torch.optim.AdamW(fused=True)``, the loss inside one
``torch.compile`` of the whole model), and prints per case: tokens/s, MFU,
peak memory, compile time and time to the first step, and lab / baseline.

MFU convention (lab's trainer, ``lab bench`` and this benchmark): FLOPs per
token = 6 x (parameters except the input embeddings; a tied LM head counts as
the output layer) + 12 x layers x d_model x context, against the bf16 dense
matmul peak this run measures on this GPU (8192^3 bf16 matmuls, best of many).

    python bench/train_mfu.py                      # the whole table (H100/H200: about 8 minutes)
    python bench/train_mfu.py --sizes small,medium --json out.json

Compile times are cold unless TORCHINDUCTOR_CACHE_DIR points at a warm cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import time
from pathlib import Path

T_START = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lm.config.schema import PRESETS, ModelConfig  # noqa: E402

CS336 = {"small": 16, "medium": 16, "large": 8, "xl": 8, "2.7B": 4}  # size: batch (the table)
ORDER = ("small", "tinyshakespeare", "tinystories", "medium", "large", "xl", "2.7B")
SHIPPED = ("tinyshakespeare", "tinystories")  # experiments/<name>.toml: their own shapes and batches


# ----------------------------------------------------------------------------- the baseline

class Block(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.h = h
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)
        self.c_fc = nn.Linear(d, 4 * d, bias=False)
        self.mlp_proj = nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))  # (B, h, T, C/h)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))  # (B, h, T, C/h) -> (B, T, C)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class PlainGPT(nn.Module):
    """nanoGPT's model.py, trimmed: tied embeddings, learned positions, no biases, no dropout."""

    def __init__(self, vocab: int, context: int, d: int, layers: int, heads: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1))


def build_baseline(cfg: ModelConfig, batch: int, device):
    model = PlainGPT(cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.num_layers, cfg.num_heads)
    model = model.to(device)
    for p in model.parameters():
        if p.dim() >= 2:
            nn.init.normal_(p, 0.0, 0.02)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95), fused=True)
    compiled = torch.compile(model)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length), device=device)
    y = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length), device=device)
    n_flop_params = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()  # wte is the tied head

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = compiled(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.detach()
    return step, n_flop_params


def build_lab(cfg: ModelConfig, batch: int, device, cuda_graphs: str = "auto", checkpointing: str = "auto"):
    from lm.bench.steps import build_workload
    from lm.train import engine

    work = build_workload(cfg, batch_size=batch, context_length=cfg.context_length, dtype="bf16", device=device,
                          compile=True, meta_init=True, cuda_graphs=cuda_graphs, checkpointing=checkpointing)
    n = sum(p.numel() for p in work.model.parameters())
    if not cfg.tie_embeddings:
        n -= work.model.token_embeddings.weight.numel()
    return work.step, n, engine.describe(work.plan, work.checkpointing)


# ----------------------------------------------------------------------------- measuring

def flops_per_token(n_params: int, cfg: ModelConfig) -> float:
    return 6.0 * n_params + 12.0 * cfg.num_layers * cfg.d_model * cfg.context_length


def measure_peak_bf16(device) -> float:
    """Dense bf16 matmul FLOP/s: best of 8192^3 matmuls timed in blocks of ten."""
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(20):
        a @ b
    best = 0.0
    for _ in range(15):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            a @ b
        end.record()
        end.synchronize()
        best = max(best, 10 * 2 * n**3 / (start.elapsed_time(end) / 1e3))
    del a, b
    return best


def run(name: str, builder, cfg: ModelConfig, batch: int, device, steps: int, peak: float) -> dict:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = {"impl": name, "batch": batch}
    try:
        built = builder()
        step, n_params = built[0], built[1]
        out["plan"] = built[2] if len(built) > 2 else "torch.compile(model)"
        torch.cuda.synchronize()
        built_s = time.perf_counter() - t0
        first_loss = step().float().item()  # the same batch every step: the loss must fall (gradients flow)
        first_s = time.perf_counter() - t0
        for _ in range(3):  # the backward and CUDA-graph recordings finish in the first few steps
            step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            last = step()
        end.record()
        end.synchronize()
        step_s = start.elapsed_time(end) / 1e3 / steps
        out["loss_first"], out["loss_last"] = first_loss, last.float().item()
    except torch.OutOfMemoryError:
        out["error"] = "out of memory"
        return out
    except Exception as e:  # noqa: BLE001 - one broken case must not hide the others
        import traceback

        traceback.print_exc()
        out["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        return out
    finally:
        built = step = None
        gc.collect()
        torch.cuda.empty_cache()
    tok_s = batch * cfg.context_length / step_s
    out.update(params=n_params, step_ms=step_s * 1e3, tokens_per_s=tok_s,
               mfu=tok_s * flops_per_token(n_params, cfg) / peak,
               peak_gib=torch.cuda.max_memory_allocated(device) / 2**30,
               # CUDA graphs' private pools are reserved, not counted as allocated: the reserved peak shows them.
               reserved_gib=torch.cuda.max_memory_reserved(device) / 2**30,
               build_s=built_s, first_step_s=first_s, compile_s=first_s - built_s - step_s)
    return out


def cases(sizes: list[str]) -> list[tuple[str, ModelConfig, int]]:
    from lm.config.loader import load_experiment

    root = Path(__file__).resolve().parents[1]
    out = []
    for s in sizes:
        if s in CS336:
            out.append((s, dataclasses.replace(PRESETS[s], vocab_size=50304, context_length=1024), CS336[s]))
        elif s in SHIPPED:
            exp = load_experiment(root / "experiments" / f"{s}.toml", check_paths=False)
            out.append((s, exp.model, exp.training.batch_size))
        else:
            raise SystemExit(f"unknown size {s!r}; known: {', '.join([*CS336, *SHIPPED])}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=",".join(ORDER))
    ap.add_argument("--steps", type=int, default=10, help="timed steps per case (after 4 warm-up steps)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--cuda-graphs", default="auto", choices=["auto", "on", "off"],
                    help="lab's training.cuda_graphs (auto, as lab run: on for models under 50M parameters)")
    ap.add_argument("--checkpointing", default="auto", choices=["auto", "none", "full", "selective", "weights"],
                    help="lab's training.activation_checkpointing (the baseline never checkpoints)")
    ap.add_argument("--budget-s", type=float, default=0, help="skip the cases left once this much time has passed")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/train_mfu.py needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    from lm.device import configure_backends, device_name

    configure_backends(device)
    peak = measure_peak_bf16(device)
    print(f"{device_name(device)}, torch {torch.__version__}; measured bf16 matmul peak {peak / 1e12:.0f} TFLOP/s; "
          f"inductor cache {os.environ.get('TORCHINDUCTOR_CACHE_DIR', '(lab cache)')}", flush=True)
    rows = []
    head = (f"{'case':>16} {'impl':>8} {'batch':>5} {'params':>7} {'ms/step':>8} {'tok/s':>9} {'MFU':>6} "
            f"{'peak GiB':>8} {'compile s':>9} {'1st step s':>10}")
    print(head, flush=True)
    for label, cfg, batch in cases(args.sizes.split(",")):
        if args.budget_s and time.perf_counter() - T_START > args.budget_s:
            print(f"{label:>16} skipped: the {args.budget_s:.0f} s budget is spent", flush=True)
            continue
        impls = [("lab", lambda: build_lab(cfg, batch, device, args.cuda_graphs, args.checkpointing))]
        if not args.no_baseline:
            impls.append(("baseline", lambda: build_baseline(cfg, batch, device)))
        got = {}
        for name, builder in impls:
            r = run(name, builder, cfg, batch, device, args.steps, peak)
            r["case"] = label
            rows.append(r)
            got[name] = r
            if "error" in r:
                print(f"{label:>16} {name:>8} {batch:>5} {r['error']}", flush=True)
                continue
            print(f"{label:>16} {name:>8} {batch:>5} {r['params'] / 1e6:>6.0f}M {r['step_ms']:>8.1f} "
                  f"{r['tokens_per_s']:>9,.0f} {r['mfu']:>6.1%} {r['peak_gib']:>8.1f} {r['compile_s']:>9.1f} "
                  f"{r['first_step_s']:>10.1f}  loss {r['loss_first']:.3f}->{r['loss_last']:.3f}  "
                  f"reserved {r['reserved_gib']:.1f} GiB  {r.get('plan', '')}",
                  flush=True)
        if all(n in got and "error" not in got[n] for n in ("lab", "baseline")):
            a, b = got["lab"], got["baseline"]
            print(f"{label:>16} {'ratio':>8}  lab/baseline: tok/s {a['tokens_per_s'] / b['tokens_per_s']:.2f}x, "
                  f"MFU {a['mfu'] / b['mfu']:.2f}x, peak memory {a['peak_gib'] / b['peak_gib']:.2f}x, "
                  f"compile {a['compile_s'] / max(b['compile_s'], 1e-9):.2f}x", flush=True)
    print(f"total {time.perf_counter() - T_START:.0f} s", flush=True)
    if args.json:
        env = {"device": device_name(device), "torch": torch.__version__, "peak_bf16_flops": peak,
               "lab_checkpointing": args.checkpointing,
               "convention": "6 x params except input embeddings + 12 x layers x d_model x context"}
        Path(args.json).write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
