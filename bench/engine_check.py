"""Do the engine's compiled plans compute the eager step's gradients on this GPU?

For a small model with the trainer's initial values, one batch, bf16 autocast,
this compares against the eager step (the reference):

  compiled      regional compilation (each block, and the loss region)
  graphs        the same in CUDA graphs (Inductor mode "reduce-overhead")
  chunked-loss  the chunked linear + cross-entropy autograd.Function itself, called inside
                torch.compile (the trainer keeps it out of compiled regions)

and prints, per plan, the loss, the gradient norm, the cosine similarity of all
gradients with the reference's, and the loss after 20 optimizer steps on the
same batch. A plan that loses gradients shows a cosine far from 1 and a loss
that does not fall.

    python bench/engine_check.py [--steps 20]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lm.bench.steps import build_workload  # noqa: E402
from lm.config.schema import ModelConfig  # noqa: E402

CFG = ModelConfig(vocab_size=2048, context_length=256, d_model=256, num_layers=4, num_heads=4, d_ff=704)


def flat_grads(model) -> torch.Tensor:
    return torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])


def plan_run(name: str, compile: bool, graphs: str, steps: int, device) -> dict:
    work = build_workload(CFG, batch_size=8, context_length=256, dtype="bf16", device=device, compile=compile,
                          cuda_graphs=graphs, seed=0)
    for g in work.optimizer.param_groups:
        g["lr"] = 1e-3
    work.forward_backward()  # the first call compiles (and records, for graphs)
    work.forward_backward()
    grads = flat_grads(work.model).clone()
    losses = [work.step().float().item() for _ in range(steps)]
    return {"name": name, "grads": grads, "first": losses[0], "last": losses[-1]}


def chunked_under_compile(device) -> tuple[float, float]:
    from lm.functional import _LinearCrossEntropy

    torch.manual_seed(0)
    h = torch.randn(4096, 256, device=device, requires_grad=True)
    w = (torch.randn(2048, 256, device=device) * 0.05).requires_grad_()
    t = torch.randint(0, 2048, (4096,), device=device)

    def chunked(h, w, t):
        return _LinearCrossEntropy.apply(h, w, t, 1024, torch.bfloat16, True, True, True)

    ref = F.cross_entropy((h.bfloat16() @ w.bfloat16().t()).float(), t)
    gh_ref, gw_ref = torch.autograd.grad(ref, (h, w))
    got = torch.compile(chunked)(h, w, t)
    gh, gw = torch.autograd.grad(got, (h, w))
    cos = F.cosine_similarity(torch.cat([gh.flatten(), gw.flatten()]), torch.cat([gh_ref.flatten(), gw_ref.flatten()]),
                              dim=0).item()
    return (got - ref).abs().item(), cos


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cuda", help="cuda (the point), or cpu to try the script (no graphs)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench/engine_check.py needs a CUDA GPU (or --device cpu)", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    runs = [plan_run("eager", False, "off", args.steps, device),
            plan_run("compiled", True, "off", args.steps, device)]
    if device.type == "cuda":
        runs.append(plan_run("graphs", True, "on", args.steps, device))
    ref = runs[0]["grads"]
    ok = True
    for r in runs:
        cos = F.cosine_similarity(r["grads"], ref, dim=0).item()
        rel = (r["grads"].norm() / ref.norm()).item()
        fell = r["last"] < r["first"] - 0.5
        ok &= cos > 0.99 and fell
        print(f"{r['name']:>12}: grad norm {r['grads'].norm():.4f} ({rel:.4f}x eager), cosine {cos:.5f}; "
              f"loss {r['first']:.4f} -> {r['last']:.4f} over {args.steps} steps", flush=True)
    diff, cos = chunked_under_compile(device)
    ok &= cos > 0.99
    print(f"chunked-loss: |loss - F.cross_entropy| {diff:.2e}, gradient cosine {cos:.5f} (inside torch.compile)")
    print("all plans agree with eager" if ok else "SOME PLAN DISAGREES WITH EAGER")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
