"""Hu et al. 2023's "accelerated emergence" test: does log(-log PU) bend away from the straight line in ln N?"""

from __future__ import annotations

import numpy as np
from scipy import stats

from capscale.laws.passuntil.law import loglog


def accelerated_emergence(x, pu, se=None, *, significance: float = 0.05, known_se: bool = False,
                          weighting: str = "relative") -> dict:
    """Does log(-log PU) bend away from the straight line in ln N? (Hu et al. 2023, "accelerated emergence")

    Fits g = log(-log PU) against t = ln x - mean(ln x) with a line, g = b0 + b1 t (alpha = -b1, the
    law's exponent), and with a quadratic, g = q0 + q1 t + q2 t^2, and tests q2 = 0.

    Sign convention: ``curvature`` = q2. The local exponent is alpha(N) = -dg/d ln N = -q1 - 2 q2 t.
    q2 < 0 (log(-log PU) concave in ln N) means alpha grows with N: at the large end PU lies *above*
    the straight-line law fitted to the smaller models, i.e. improvement faster than the law:
    verdict "accelerated" (the paper's finding for some tasks). q2 > 0 is "decelerated" (slower than
    the law). Otherwise "linear"; fewer than 4 usable points (or 3 distinct sizes) is "insufficient".

    ``se``: per-point standard errors of PU; then the fits are weighted least squares with
    delta-method weights (PU log PU / se)^2. Without se, ``weighting="relative"`` (default) assumes
    PassUntil's constant relative error, weights (log PU)^2 (the predictor's default too), and
    ``"equal"`` gives ordinary least squares on log(-log PU), as in the paper's plots; under relative
    noise the latter over-trusts points near PU = 1 and has a higher false-positive rate. The test is
    an F-test with the residual scale estimated (robust to a common mis-scaling of se), or with
    ``known_se=True`` a likelihood-ratio (chi-square, 1 dof) test that trusts se as absolute.
    Two-sided p-value; the verdict takes its direction from the sign. Points with PU = 1 have no
    log(-log) and are left out (``n_excluded``).
    """
    if weighting not in ("relative", "equal"):
        raise ValueError(f"weighting must be 'relative' or 'equal', got {weighting!r}")
    if known_se and se is None:
        raise ValueError("known_se=True needs se")
    x = np.asarray(x, dtype=float).ravel()
    pu = np.asarray(pu, dtype=float).ravel()
    if x.shape != pu.shape:
        raise ValueError("x and pu must have the same length")
    if not np.all(np.isfinite(x) & (x > 0)):
        raise ValueError("x must be finite and positive")
    if not np.all(np.isfinite(pu) & (pu > 0) & (pu <= 1)):
        raise ValueError("pu must lie in (0, 1]")
    if se is not None:
        se = np.asarray(se, dtype=float).ravel()
        if se.shape != pu.shape or not np.all(np.isfinite(se) & (se > 0)):
            raise ValueError("se must be positive and finite, one per point")
    keep = pu < 1.0
    x, pu = x[keep], pu[keep]
    t_raw = np.log(x)
    n = int(keep.sum())
    out = {"n": n, "n_excluded": int((~keep).sum()), "weighting": "se" if se is not None else weighting,
           "test": "chi2" if known_se else "F", "significance": significance,
           "alpha": np.nan, "alpha_se": np.nan, "log_c": np.nan, "curvature": np.nan, "curvature_se": np.nan,
           "statistic": np.nan, "p_value": np.nan, "alpha_at_min": np.nan, "alpha_at_max": np.nan,
           "verdict": "insufficient"}
    if n == 0:
        return out
    centre = float(np.mean(t_raw))
    t = t_raw - centre
    g = loglog(pu)
    if se is not None:
        w = (pu * np.log(pu) / se[keep]) ** 2
    else:
        w = np.log(pu) ** 2 if weighting == "relative" else np.ones(n)
    distinct = len(np.unique(t))

    def wls(design):
        sw = np.sqrt(w)[:, None]
        coef, *_ = np.linalg.lstsq(design * sw, g * sw[:, 0], rcond=None)
        rss = float(w @ (g - design @ coef) ** 2)
        cov = np.linalg.pinv(design.T @ (design * w[:, None]))
        return coef, rss, cov

    if distinct >= 2:
        lin, rss1, cov1 = wls(np.column_stack([np.ones(n), t]))
        scale1 = 1.0 if known_se else (rss1 / (n - 2) if n > 2 else np.nan)
        out.update(alpha=float(-lin[1]), alpha_se=float(np.sqrt(scale1 * cov1[1, 1])),
                   log_c=float(lin[0] - lin[1] * centre))
    if n < 4 or distinct < 3:
        return out
    quad, rss2, cov2 = wls(np.column_stack([np.ones(n), t, t**2]))
    scale2 = 1.0 if known_se else rss2 / (n - 3)
    gbar = w @ g / w.sum()
    tss = float(w @ (g - gbar) ** 2)
    tiny = 1e-20 * (tss + 1e-300)
    if rss1 - rss2 <= tiny:
        statistic, p = 0.0, 1.0  # the line already fits exactly as well
    elif rss2 <= tiny and not known_se:
        statistic, p = np.inf, 0.0  # noise-free quadratic
    elif known_se:
        statistic = rss1 - rss2
        p = float(stats.chi2.sf(statistic, 1))
    else:
        statistic = (rss1 - rss2) / (rss2 / (n - 3))
        p = float(stats.f.sf(statistic, 1, n - 3))
    q2 = float(quad[2])
    if p < significance:
        verdict = "accelerated" if q2 < 0 else "decelerated"
    else:
        verdict = "linear"
    out.update(curvature=q2, curvature_se=float(np.sqrt(scale2 * cov2[2, 2])), statistic=float(statistic),
               p_value=p, alpha_at_min=float(-quad[1] - 2 * q2 * t.min()),
               alpha_at_max=float(-quad[1] - 2 * q2 * t.max()), verdict=verdict)
    return out
