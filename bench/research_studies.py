"""The five research studies of docs/experiments.md, compact, in one scripted call.

    python bench/research_studies.py --data PATH/tinyshakespeare.txt --out DIR [--scale tiny|gpu] [--budget S]
    python bench/research_studies.py report DIR [DIR ...]      # markdown tables and plots of the results

1. scaling law: ``lab scale`` (the real command, through the queue) on
   experiments/scaling/shakespeare.toml, 5 sizes, 1M tokens each;
2. Muon vs AdamW: a small LR sweep each, tokens and seconds to a fixed validation loss;
3. warmup none / short / long at a large batch and a high LR;
4. failure modes (no residual + no norm, residual only, norm only), NoPE vs RoPE, SiLU vs SwiGLU
   at matched parameters, post-norm vs pre-norm at a high LR;
5. training speed: bf16 autocast vs fp32 with TF32 off vs fp32 with TF32 on (the small preset).

Studies 2-4 train through :func:`lm.train.experiment.run_experiment` (what ``lab run`` calls), in
this process so no run pays a fresh torch import. Every study writes ``DIR/<study>.json`` as soon as
it ends, so a time limit loses at most the study in flight; ``--budget`` skips studies that would
start after that many seconds. ``--scale tiny`` shrinks everything to a CPU smoke test of the script.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
T0 = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - T0


def write(out: Path, name: str, obj) -> None:
    (out / f"{name}.json").write_text(json.dumps(obj, indent=1, default=float) + "\n")
    print(f"[{elapsed():6.1f}s] wrote {name}.json", flush=True)


def base_text(data: Path, tiny: bool) -> str:
    """experiments/scaling/shakespeare_base.toml with the data file given (and shrunk for --scale tiny)."""
    text = (REPO / "experiments/scaling/shakespeare_base.toml").read_text()
    text = text.replace('source = "tinyshakespeare"', f'source = "{data}"')
    if tiny:
        text = (text.replace("context_length = 256", "context_length = 32")
                .replace("batch_size = 32 ", "batch_size = 4 ").replace("batches = 20", "batches = 2"))
    return text


def load(base: Path, overrides: list[str]):
    from lm.config.loader import load_experiment

    return load_experiment(base, overrides)


def train(base: Path, runs: Path, name: str, overrides: list[str]) -> dict:
    """One run via run_experiment; its eval curve, train records and summary."""
    from lm.runs import RunDir
    from lm.train.experiment import run_experiment

    cfg = load(base, overrides + [f"name={name}", f"runs_dir={runs}"])
    summary: dict = {}
    t = time.perf_counter()
    code = run_experiment(cfg, run_dir=runs / name, summary=summary)
    wall = time.perf_counter() - t
    rd = RunDir(runs / name)
    evals = [{"step": r["step"], "tokens": r["tokens"], "time": r["time"], "val_loss": r["val_loss"]}
             for r in rd.metrics("eval")]
    trains = [{"step": r["step"], "loss": r["loss"], "grad_norm": r["grad_norm"], "tokens_per_s": r["tokens_per_s"],
               "mfu": r.get("mfu"), "optimizer_mfu": r.get("optimizer_mfu")} for r in rd.metrics("train")]
    final = evals[-1]["val_loss"] if evals else None
    print(f"[{elapsed():6.1f}s] {name}: exit {code}, val {final}, {wall:.1f}s", flush=True)
    return {"name": name, "overrides": overrides, "exit": code, "wall_s": wall, "final_val_loss": final,
            "evals": evals, "train": trains, "summary": summary}


def reach(run: dict, target: float) -> dict | None:
    """First eval at or below ``target``: its step, tokens and training seconds."""
    for e in run["evals"]:
        if e["val_loss"] is not None and e["val_loss"] <= target:
            return e
    return None


# ----------------------------------------------------------------------------- studies

def study_scaling(args, out: Path, work: Path) -> dict:
    study = (REPO / "experiments/scaling/shakespeare.toml").read_text()
    study = study.replace('base = "shakespeare_base.toml"', f'base = "{work / "base.toml"}"')
    if args.scale == "tiny":
        study = study.replace("tokens = 1_000_000", "tokens = 4_000").replace(
            "{ d_model = 256, num_layers = 6 }", "{ d_model = 96, num_layers = 2 }").replace(
            "{ d_model = 192, num_layers = 4 }", "{ d_model = 80, num_layers = 2 }").replace(
            "{ d_model = 128, num_layers = 3 }", "{ d_model = 64, num_layers = 1 }").replace(
            "{ d_model = 64, num_layers = 2 }", "{ d_model = 48, num_layers = 1 }")
    path = work / "shakespeare.toml"
    path.write_text(study)
    cmd = [sys.executable, "-m", "lab", "scale", str(path), "--runs-dir", str(work / "scale-runs"),
           "--workers", str(args.workers), "--width", "100", "--height", "24"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])})
    (out / "scale_stdout.txt").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr[-5000:])
    res_file = work / "scale-runs/scaling/shakespeare/scaling.json"
    result = json.loads(res_file.read_text()) if res_file.is_file() else None
    return {"command": " ".join(cmd[1:]), "exit": proc.returncode, "wall_s": time.perf_counter() - t,
            "scaling": result}


def study_muon(args, out: Path, base: Path, runs: Path) -> dict:
    steps = 300 if args.scale == "gpu" else 20
    common = [f"training.steps={steps}", "schedule.warmup_steps=20" if steps > 50 else "schedule.warmup_steps=2",
              f"eval.every={max(1, steps // 12)}", "eval.batches=8" if steps > 50 else "eval.batches=2",
              "model.d_model=256", "model.num_layers=4", "model.num_heads=4", "model.d_ff=704",
              f"checkpoint.every={steps}"]
    if args.scale == "tiny":
        common = [c for c in common if not c.startswith(("model.d_model", "model.num_", "model.d_ff"))]
    runs_out = []
    for lr in (1e-3, 3e-3, 1e-2):
        runs_out.append({"optimizer": "adamw", "lr": lr,
                         **train(base, runs, f"adamw-lr{lr:g}", common + [f"optimizer.lr={lr}"])})
    small = ["optimizer.name='muon'", "optimizer.embed_lr=0.05", "optimizer.head_lr=0.004", "optimizer.scalar_lr=0.01"]
    for lr in (0.01, 0.02, 0.05):
        runs_out.append({"optimizer": "muon", "lr": lr,
                         **train(base, runs, f"muon-lr{lr:g}", common + small + [f"optimizer.muon_lr={lr}"])})
    runs_out.append({"optimizer": "muon (published AdamW-side LRs)", "lr": 0.02,
                     **train(base, runs, "muon-published", common + ["optimizer.name='muon'"])})
    best = {}
    for kind in ("adamw", "muon"):
        cands = [r for r in runs_out if r["optimizer"] == kind and r["final_val_loss"] is not None
                 and math.isfinite(r["final_val_loss"])]
        if cands:
            best[kind] = min(cands, key=lambda r: r["final_val_loss"])
    result = {"runs": runs_out, "best": {k: v["name"] for k, v in best.items()}}
    if len(best) == 2:
        target = max(b["final_val_loss"] for b in best.values())  # a loss both best runs reach
        result["target_val_loss"] = target
        result["to_target"] = {k: reach(v, target) for k, v in best.items()}
        result["tokens_per_s"] = {k: (v["summary"] or {}).get("tokens_per_s") for k, v in best.items()}
    return result


def study_warmup(args, out: Path, base: Path, runs: Path) -> dict:
    gpu = args.scale == "gpu"
    steps = 120 if gpu else 10
    # 128 x 256 = 32K tokens a step (4x the other studies); 120 steps stay under 4 epochs of the text.
    common = [f"training.steps={steps}", "training.batch_size=128" if gpu else "training.batch_size=8",
              "optimizer.lr=1e-2", f"eval.every={max(1, steps // 8)}", "eval.batches=8" if gpu else "eval.batches=2",
              f"checkpoint.every={steps}"]
    if gpu:
        common += ["model.d_model=256", "model.num_layers=4", "model.num_heads=4", "model.d_ff=704"]
    out_runs = []
    for label, w in (("none", 0), ("short", max(1, steps // 40)), ("long", steps // 4)):
        out_runs.append({"warmup": label, "warmup_steps": w,
                         **train(base, runs, f"warmup-{label}", common + [f"schedule.warmup_steps={w}"])})
    return {"batch_tokens": (128 if gpu else 8) * load(base, []).model.context_length, "runs": out_runs}


def study_ablations(args, out: Path, base: Path, runs: Path) -> dict:
    gpu = args.scale == "gpu"
    steps = 300 if gpu else 10
    common = [f"training.steps={steps}", "schedule.warmup_steps=20" if gpu else "schedule.warmup_steps=2",
              f"eval.every={max(1, steps // 6)}", "eval.batches=8" if gpu else "eval.batches=2",
              f"checkpoint.every={steps}", "training.log_every=10" if gpu else "training.log_every=2"]
    if gpu:
        common += ["model.d_model=256", "model.num_layers=4", "model.num_heads=4"]
    swiglu_ff = "model.d_ff=704" if gpu else "model.d_ff=352"  # 8/3 d rounded to 64 (matched to SiLU's 4 d)
    silu_ff = "model.d_ff=1024" if gpu else "model.d_ff=512"
    variants = {
        "baseline (pre-norm, residual, RoPE, SwiGLU)": [swiglu_ff],
        "no residual + no norm": [swiglu_ff, "model.residual=false", "model.norm='none'"],
        "residual only (no norm)": [swiglu_ff, "model.norm='none'"],
        "norm only (no residual)": [swiglu_ff, "model.residual=false"],
        "NoPE": [swiglu_ff, "model.position='nope'"],
        "SiLU MLP (d_ff = 4 d)": [silu_ff, "model.ffn='silu'"],
        "pre-norm, lr 3e-2": [swiglu_ff, "optimizer.lr=3e-2"],
        "post-norm, lr 3e-2": [swiglu_ff, "model.norm='post'", "optimizer.lr=3e-2"],
    }
    res = []
    for i, (label, ov) in enumerate(variants.items()):
        r = train(base, runs, f"ablation-{i}", common + ov)
        cfg = load(base, common + ov)
        from lm.calc import count_params

        res.append({"variant": label, "params": count_params(cfg.model).total, **r})
    return {"runs": res}


def study_precision(args, out: Path) -> dict:
    """Step time of the small preset: bf16 autocast, fp32 with TF32 off, fp32 with TF32 on (eager)."""
    import torch
    import torch.nn.functional as F

    from lm.config.schema import ModelConfig
    from lm.model import TransformerLM
    from lm.optim import AdamW

    if not torch.cuda.is_available():
        cfg = ModelConfig(vocab_size=257, context_length=32, d_model=32, num_layers=1, num_heads=2)
        device, batch, steps = torch.device("cpu"), 2, 3
    else:
        cfg = ModelConfig.from_name("small", vocab_size=257, context_length=512)
        device, batch, steps = torch.device("cuda"), 8, 20
    torch.manual_seed(0)
    model = TransformerLM(cfg).to(device)
    opt = AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 257, (batch, cfg.context_length), device=device)
    y = torch.randint(0, 257, (batch, cfg.context_length), device=device)
    peak = None
    if device.type == "cuda":  # the bf16 matmul peak of this GPU, measured in the same run
        a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            a @ a
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(20):
            a @ a
        e.record()
        torch.cuda.synchronize()
        peak = 20 * 2 * 8192 ** 3 / (s.elapsed_time(e) / 1e3)

    def step(autocast: bool):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    from lm.calc import training_flops_per_token

    fpt = training_flops_per_token(cfg)
    modes = {}
    for name, autocast, tf32 in (("bf16 autocast", True, True), ("fp32, TF32 off", False, False),
                                 ("fp32, TF32 on", False, True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        for _ in range(3):
            step(autocast)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            step(autocast)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / steps
        tps = batch * cfg.context_length / dt
        modes[name] = {"step_ms": dt * 1e3, "tokens_per_s": tps,
                       "mfu_vs_bf16_peak": tps * fpt / peak if peak else None}
        print(f"[{elapsed():6.1f}s] precision {name}: {dt * 1e3:.1f} ms/step", flush=True)
    base = modes["fp32, TF32 off"]["step_ms"]
    for m in modes.values():
        m["speedup_vs_fp32_tf32_off"] = base / m["step_ms"]
    return {"model": "small preset (d768 L12), vocab 257, context 512", "batch": batch, "steps": steps,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "bf16_peak_tflops": peak / 1e12 if peak else None, "torch": torch.__version__, "modes": modes}


# ----------------------------------------------------------------------------- report

def _plot(curves, title, xlabel, ylabel, xlog=False) -> str:
    from lab.views.plots import Curve, render_plot

    return render_plot([Curve(*c) for c in curves], title=title, xlabel=xlabel, ylabel=ylabel, xlog=xlog,
                       width=90, height=20, color=False)


def report(dirs: list[Path]) -> str:
    """Markdown tables and terminal plots of a results folder (or several: later ones fill in studies)."""
    res = {}
    for d in dirs:
        for f in sorted(d.glob("*.json")):
            if f.stem != "index":
                res[f.stem] = json.loads(f.read_text())
    lines = []
    if "scaling" in res and res["scaling"].get("scaling"):
        sc = res["scaling"]["scaling"]
        lines += ["### 1. scaling", "", "| point | N (non-emb) | params | tokens | tokens/N | val loss | fit | error | |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for q in sc["points"]:
            lines.append(f"| {q['label']} | {q['n']:,} | {q['params_total']:,} | {q['tokens']:,} | "
                         f"{q['tokens'] / q['n']:.1f} | {q['val_loss']:.4f} | {q.get('fit_loss', float('nan')):.4f} | "
                         f"{q.get('fit_error', float('nan')):+.2%} | " + ("past optimal |" if q.get("past_optimal") else " |"))
        lines += ["", f"fit: `{sc['fit']['text']}`, rmse {sc['fit']['rmse']:.4f}", ""]
    if "muon_vs_adamw" in res:
        m = res["muon_vs_adamw"]
        lines += ["### 2. Muon vs AdamW", "", "| run | lr | final val loss | tokens/s | MFU | Newton-Schulz (optimizer) MFU |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in m["runs"]:
            tr = r["train"][-1] if r["train"] else {}
            om = tr.get("optimizer_mfu")
            lines.append(f"| {r['optimizer']} | {r['lr']:g} | {r['final_val_loss']:.4f} | "
                         f"{(r['summary'] or {}).get('tokens_per_s', 0):,.0f} | {tr.get('mfu') or 0:.2%} | "
                         + (f"{om:.3%}" if om is not None else "-") + " |")
        if "to_target" in m:
            lines += ["", f"target val loss {m['target_val_loss']:.4f} (the best AdamW run's final loss):", ""]
            for k, e in m["to_target"].items():
                lines.append(f"- {k} ({m['best'][k]}): " + (f"step {e['step']}, {e['tokens']:,} tokens, {e['time']:.1f} s"
                                                           if e else "not reached"))
        best = [r for r in m["runs"] if r["name"] in m["best"].values()]
        lines += ["", "```", _plot([(r["name"], [e["tokens"] for e in r["evals"]], [e["val_loss"] for e in r["evals"]])
                                    for r in best], "val loss vs tokens", "tokens", "val loss"), "```", ""]
    if "warmup" in res:
        w = res["warmup"]
        lines += ["### 3. warmup", "", f"batch {w['batch_tokens']:,} tokens per step", "",
                  "| warmup | steps | final val loss | vs long | max grad norm |", "|---|---:|---:|---:|---:|"]
        ref = [r for r in w["runs"] if r["warmup"] == "long"][0]["final_val_loss"]
        for r in w["runs"]:
            lines.append(f"| {r['warmup']} | {r['warmup_steps']} | {r['final_val_loss']:.4f} | "
                         f"{r['final_val_loss'] / ref - 1:+.1%} | {max(t['grad_norm'] for t in r['train']):.2f} |")
        lines += ["", "```", _plot([(r["warmup"], [e["step"] for e in r["evals"]], [e["val_loss"] for e in r["evals"]])
                                    for r in w["runs"]], "val loss vs step", "step", "val loss"), "```", ""]
    if "ablations" in res:
        lines += ["### 4. ablations", "", "| variant | params | first train loss | final val loss | grad norm start -> end |",
                  "|---|---:|---:|---:|---:|"]
        for r in res["ablations"]["runs"]:
            tr = r["train"]
            lines.append(f"| {r['variant']} | {r['params']:,} | {tr[0]['loss']:.3f} | {r['final_val_loss']:.4f} | "
                         f"{tr[0]['grad_norm']:.3g} -> {tr[-1]['grad_norm']:.3g} |")
        lines.append("")
    if "precision" in res:
        p = res["precision"]
        lines += ["### 5. precision", "", f"{p['model']}, batch {p['batch']}, {p['device']}, torch {p['torch']}, "
                  f"bf16 matmul peak measured {p['bf16_peak_tflops'] or 0:.0f} TFLOP/s", "",
                  "| mode | ms/step | tokens/s | speedup vs fp32 (TF32 off) | MFU (bf16 peak) |", "|---|---:|---:|---:|---:|"]
        for k, v in p["modes"].items():
            lines.append(f"| {k} | {v['step_ms']:.1f} | {v['tokens_per_s']:,.0f} | {v['speedup_vs_fp32_tf32_off']:.2f}x | "
                         f"{(v['mfu_vs_bf16_peak'] or 0):.1%} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        print(report([Path(p) for p in sys.argv[2:]]))
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--scale", choices=("tiny", "gpu"), default="gpu")
    ap.add_argument("--budget", type=float, default=1e9, help="start no study after this many seconds")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated study names")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"lab-studies-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LAB_CACHE_DIR", str(work / "cache"))
    base = work / "base.toml"
    base.write_text(base_text(args.data.resolve(), args.scale == "tiny"))
    runs = work / "runs"
    studies = [("precision", lambda: study_precision(args, args.out)),
               ("muon_vs_adamw", lambda: study_muon(args, args.out, base, runs)),
               ("scaling", lambda: study_scaling(args, args.out, work)),
               ("ablations", lambda: study_ablations(args, args.out, base, runs)),
               ("warmup", lambda: study_warmup(args, args.out, base, runs))]
    only = {s for s in args.only.split(",") if s}
    done = {}
    for name, fn in studies:
        if only and name not in only:
            continue
        if elapsed() > args.budget:
            print(f"[{elapsed():6.1f}s] skipped {name}: past the {args.budget:g} s budget", flush=True)
            done[name] = "skipped"
            continue
        try:
            write(args.out, name, fn())
            done[name] = "ok"
        except Exception as e:  # one study's failure must not cost the others
            import traceback

            traceback.print_exc()
            done[name] = f"failed: {type(e).__name__}: {e}"
    write(args.out, "index", {"studies": done, "total_s": elapsed(), "scale": args.scale})
    return 0


if __name__ == "__main__":
    sys.exit(main())
