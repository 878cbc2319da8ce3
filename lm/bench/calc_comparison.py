"""Measured next to predicted: the rows ``lab bench --compare-calculator`` and
``bench/calc_vs_measured.py`` print, and a plain-text table for machines without rich."""

from __future__ import annotations

from lm.bench.harness import CaseResult


def comparison(res: CaseResult) -> list[dict]:
    """[{quantity, measured, predicted, ratio (measured / predicted)}] for one case."""
    pred = res.prediction or {}
    rows = []

    def add(quantity, measured, predicted, unit):
        ratio = measured / predicted if measured is not None and predicted else None
        rows.append({"quantity": quantity, "measured": measured, "predicted": predicted, "ratio": ratio,
                     "unit": unit})

    for mode, key in (("forward", "forward_s"), ("forward_backward", "forward_backward_s"), ("step", "step_s")):
        if mode in res.times:
            add(f"{mode} time", res.times[mode].median_s, pred.get(key), "s")
    if "step" in res.times and "forward_backward" in res.times:
        add("optimizer time", res.times["step"].median_s - res.times["forward_backward"].median_s,
            pred.get("optimizer_s"), "s")
    add("peak memory", res.peak_memory, pred.get("peak_memory"), "B")
    if res.measured_flops is not None:
        # Against what FlopCounterMode should count (it sees sdpa's backward recompute on CUDA and
        # does not see the fused CPU kernel); the MFU basis is pred["training_flops"].
        add("fwd+bwd FLOPs (FlopCounterMode)", res.measured_flops,
            pred.get("flop_counter_flops", pred.get("training_flops")), "FLOP")
    return rows


def _fmt(v, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v * 1e3:.2f} ms"
    if unit == "B":
        return f"{v / 2**30:.2f} GiB"
    if unit == "FLOP":
        return f"{v / 1e12:.3f} TFLOP"
    return f"{v:.4g}"
