"""Scaling-law fits with numpy: L(N) = a N^-alpha + c, and isoFLOP compute-optimal points.

No scipy: for a fixed alpha the law is linear in (a, c), so the best (a, c)
is a two-column least-squares solve; the one remaining parameter, alpha, is
found by a dense grid in log space refined by golden-section search on the
residual. That is exact for this three-parameter family and cannot wander
off the way an unconstrained Levenberg-Marquardt can on 4-6 points.
"""

from __future__ import annotations

import dataclasses
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


@dataclass(frozen=True)
class SurfaceLaw:
    """L(N, D) = e + a N^-alpha + b D^-beta (Chinchilla's parametric loss), fitted to points (N, D, L).

    The law of an isoFLOP grid: its points differ in N and in D at once, so a curve in N alone
    cannot describe them (a small model trained on many tokens beats a large one trained on few).
    """

    e: float
    a: float
    alpha: float
    b: float
    beta: float
    rmse: float
    max_rel_error: float

    def __call__(self, n, d):
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return self.e + self.a * n ** -self.alpha + self.b * d ** -self.beta

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        return f"L(N, D) = {self.e:.4g} + {self.a:.4g} N^-{self.alpha:.4f} + {self.b:.4g} D^-{self.beta:.4f}"


def _solve_nonneg(cols: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
    """Least squares with every coefficient >= 0 (few columns: the best feasible subset of them)."""
    k = cols.shape[1]
    best, best_err = np.zeros(k), float(np.dot(y * w, y * w))
    for mask in range(1, 1 << k):
        idx = [j for j in range(k) if mask >> j & 1]
        A = cols[:, idx] * w[:, None]
        coef, *_ = np.linalg.lstsq(A, y * w, rcond=None)
        if np.any(coef < 0):
            continue
        r = A @ coef - y * w
        err = float(np.dot(r, r))
        if err < best_err:
            best, best_err = np.zeros(k), err
            best[idx] = coef
    return best, best_err


def fit_surface(n, d, loss, *, exponent_range: tuple[float, float] = (0.02, 2.0)) -> SurfaceLaw:
    """Least-squares L(N, D) = e + a N^-alpha + b D^-beta (e, a, b >= 0; relative residuals).

    For fixed (alpha, beta) the law is linear in (e, a, b): a non-negative three-column solve. The
    exponents come from a grid in log space, then a pattern search from its best cell.
    """
    x0, z0 = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
    y = np.asarray(loss, dtype=float)
    if not (x0.shape == z0.shape == y.shape) or len(y) < 5:
        raise ValueError("a loss surface L(N, D) needs at least 5 points")
    if len(set(x0.tolist())) < 2 or len(set(z0.tolist())) < 2:
        raise ValueError("a loss surface L(N, D) needs at least 2 distinct N and 2 distinct D")
    if np.any(x0 <= 0) or np.any(z0 <= 0) or not np.all(np.isfinite(y)):
        raise ValueError("N and D must be positive and every loss finite")
    sn, sd = float(np.exp(np.mean(np.log(x0)))), float(np.exp(np.mean(np.log(z0))))
    x, z, w = x0 / sn, z0 / sd, 1.0 / y

    def solve(la: float, lb: float):
        cols = np.stack([np.ones_like(x), x ** -math.exp(la), z ** -math.exp(lb)], axis=1)
        return _solve_nonneg(cols, y, w)

    lo, hi = math.log(exponent_range[0]), math.log(exponent_range[1])
    axis = np.linspace(lo, hi, 40)
    step = axis[1] - axis[0]
    best = min(((solve(la, lb)[1], la, lb) for la in axis for lb in axis))
    # Pattern search: move while a neighbour is better (the minimum can lie along a long shallow ridge,
    # where the exponents trade off against a, b and e), shrink the step when none is.
    for _ in range(300):
        _, ca, cb = best
        local = np.linspace(-step, step, 5)
        moved = min([best] + [(solve(ca + da, cb + db)[1], ca + da, cb + db)
                              for da in local for db in local
                              if (da or db) and lo <= ca + da <= hi and lo <= cb + db <= hi])
        if moved[0] < best[0]:
            best = moved
        elif step > 1e-6:
            step /= 4
        else:
            break
    _, la, lb = best
    (e, a, b), _ = solve(la, lb)
    alpha, beta = math.exp(la), math.exp(lb)
    law = SurfaceLaw(e=float(e), a=float(a) * sn ** alpha, alpha=alpha, b=float(b) * sd ** beta, beta=beta,
                     rmse=0.0, max_rel_error=0.0)
    pred = law(x0, z0)
    return dataclasses.replace(law, rmse=float(np.sqrt(np.mean((pred - y) ** 2))),
                               max_rel_error=float(np.max(np.abs(pred - y) / y)))


def surface_optimum(law: SurfaceLaw, flops: float, flops_per_token, n_range: tuple[float, float],
                    reach: float = 1000.0) -> tuple[float, float, float] | None:
    """(N, D, L) minimising the law on the budget ``flops`` (D = flops / flops_per_token(N)), searched
    from ``n_range[0] / reach`` to ``n_range[1] * reach``; None when the minimum is at that edge (the
    law has no optimum the study can speak for)."""
    u = np.linspace(math.log(n_range[0] / reach), math.log(n_range[1] * reach), 4001)
    n = np.exp(u)
    d = flops / np.asarray(flops_per_token(n), dtype=float)
    loss = law(n, d)
    i = int(np.argmin(loss))
    if i in (0, len(u) - 1):
        return None
    return float(n[i]), float(d[i]), float(loss[i])
