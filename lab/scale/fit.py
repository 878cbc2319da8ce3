"""Scaling-law fits with numpy: L(N) = a N^-alpha + c, and isoFLOP compute-optimal points.

No scipy: for a fixed alpha the law is linear in (a, c), so the best (a, c)
is a two-column least-squares solve; the one remaining parameter, alpha, is
found by a dense grid in log space refined by golden-section search on the
residual. That is exact for this three-parameter family and cannot wander
off the way an unconstrained Levenberg-Marquardt can on 4-6 points.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PowerLaw:
    """L(N) = a N^-alpha + c, fitted to points (N, L)."""

    a: float
    alpha: float
    c: float
    rmse: float
    """Root mean square of the residuals, in loss units."""
    max_rel_error: float
    """Largest |prediction - observed| / observed over the points."""

    def __call__(self, n):
        return self.a * np.asarray(n, dtype=float) ** -self.alpha + self.c

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        return f"L(N) = {self.a:.4g} N^-{self.alpha:.4f} + {self.c:.4g}"


def _solve_ac(x: np.ndarray, y: np.ndarray, alpha: float, w: np.ndarray) -> tuple[float, float, float]:
    """Best (a, c >= 0) for a fixed alpha, and the weighted squared error."""
    f = x ** -alpha
    A = np.stack([f, np.ones_like(f)], axis=1) * w[:, None]
    (a, c), *_ = np.linalg.lstsq(A, y * w, rcond=None)
    if c < 0:  # an irreducible loss below zero is not a loss: refit with c = 0
        a, c = float(np.dot(f * w, y * w) / np.dot(f * w, f * w)), 0.0
    r = (a * f + c - y) * w
    return float(a), float(c), float(np.dot(r, r))


def fit_power_law(n, loss, *, alpha_range: tuple[float, float] = (1e-3, 3.0)) -> PowerLaw:
    """Least-squares L(N) = a N^-alpha + c over >= 3 points with distinct N (relative residuals)."""
    x = np.asarray(n, dtype=float)
    y = np.asarray(loss, dtype=float)
    if x.shape != y.shape or len(x) < 3 or len(set(x.tolist())) < 3:
        raise ValueError("a power law with an offset needs at least 3 points of distinct N")
    if np.any(x <= 0) or not np.all(np.isfinite(y)):
        raise ValueError("N must be positive and every loss finite")
    x = x / np.exp(np.mean(np.log(x)))  # conditioning: N scaled to geometric mean 1, a rescaled below
    scale = float(np.exp(np.mean(np.log(np.asarray(n, dtype=float)))))
    w = 1.0 / y  # relative errors: each point counts by its percentage miss
    lo, hi = math.log(alpha_range[0]), math.log(alpha_range[1])
    grid = np.linspace(lo, hi, 400)
    errs = [_solve_ac(x, y, math.exp(g), w)[2] for g in grid]
    i = int(np.argmin(errs))
    left, right = grid[max(0, i - 1)], grid[min(len(grid) - 1, i + 1)]
    phi = (math.sqrt(5) - 1) / 2
    p, q = right - phi * (right - left), left + phi * (right - left)
    fp, fq = _solve_ac(x, y, math.exp(p), w)[2], _solve_ac(x, y, math.exp(q), w)[2]
    for _ in range(80):
        if fp < fq:
            right, q, fq = q, p, fp
            p = right - phi * (right - left)
            fp = _solve_ac(x, y, math.exp(p), w)[2]
        else:
            left, p, fp = p, q, fq
            q = left + phi * (right - left)
            fq = _solve_ac(x, y, math.exp(q), w)[2]
    alpha = math.exp((left + right) / 2)
    a, c, _ = _solve_ac(x, y, alpha, w)
    a_orig = a * scale ** alpha  # a x^-alpha with x = N / scale  ==  (a scale^alpha) N^-alpha
    pred = a_orig * np.asarray(n, dtype=float) ** -alpha + c
    rmse = float(np.sqrt(np.mean((pred - y) ** 2)))
    return PowerLaw(a=a_orig, alpha=alpha, c=c, rmse=rmse, max_rel_error=float(np.max(np.abs(pred - y) / y)))


@dataclass(frozen=True)
class ComputeOptimal:
    """The loss-minimising model size of one compute budget (a parabola in log N through its points)."""

    flops: float
    n_opt: float
    d_opt: float
    loss_opt: float
    points: int
    inside: bool
    """Whether N_opt lies within the sizes trained (outside: an extrapolation, less trustworthy)."""

    def to_dict(self) -> dict:
        return asdict(self)


def isoflop_optimum(flops: float, n, d, loss) -> ComputeOptimal | None:
    """Fit loss = p(log N) (quadratic) over one budget's points; None if < 3 points or no minimum."""
    n = np.asarray(n, dtype=float)
    d = np.asarray(d, dtype=float)
    y = np.asarray(loss, dtype=float)
    if len(n) < 3 or len(set(n.tolist())) < 3:
        return None
    u = np.log(n)
    k2, k1, k0 = np.polyfit(u, y, 2)
    if k2 <= 0:
        return None  # no interior minimum: the budget's sizes all lie on one side of the optimum
    u_opt = -k1 / (2 * k2)
    order = np.argsort(u)
    # D along a budget falls smoothly with N: interpolate (extrapolate linearly) log D at log N_opt.
    slope, icpt = np.polyfit(u, np.log(d), 1)
    d_opt = float(np.exp(icpt + slope * u_opt))
    inside = bool(u[order[0]] <= u_opt <= u[order[-1]])
    return ComputeOptimal(flops=float(flops), n_opt=float(math.exp(u_opt)), d_opt=d_opt,
                          loss_opt=float(k0 + k1 * u_opt + k2 * u_opt ** 2), points=int(len(n)), inside=inside)


def power_fit(x, y) -> tuple[float, float] | None:
    """(k, e) of y = k x^e by least squares in log-log space (None under two distinct points)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(x) < 2 or len(set(x.tolist())) < 2:
        return None
    e, logk = np.polyfit(np.log(x), np.log(y), 1)
    return float(math.exp(logk)), float(e)
