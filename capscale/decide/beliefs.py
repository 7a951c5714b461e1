"""What a method believes about a recipe at a target (point, draws, calibration's misspecification), and P(A
beats B) from two beliefs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

from statistics import NormalDist
import numpy as np
import pandas as pd

from capscale.errors import CapscaleError
from capscale.ladder import final_checkpoints
from capscale.laws.base import bound, extrapolation_distance
from capscale.laws.rolling import rungs
from capscale.schema import metric_kind
from capscale.decide.methods import DecideError, MethodSpec, sense
from capscale.decide.targets import Target, same_rung


@dataclass(frozen=True)
class Misspecification:
    """What the calibration adds at one target (``capscale.laws.calibration``): normal noise in the
    predictor's link space whose ``level`` half-width is the held-out errors' quantile q, so that
    variances add as in the intervals' sqrt(h^2 + q^2)."""
    sd: float
    metric: str
    link: tuple | None = None  # (forward, inverse); None: the metric's own units

    def add(self, draws: np.ndarray, z: np.ndarray) -> np.ndarray:
        forward, inverse = self.link or (lambda v: v, lambda v: v)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            moved = inverse(forward(draws) + self.sd * z[:len(draws)])
        return np.asarray(bound(self.metric, np.where(np.isfinite(moved), moved, draws)), dtype=float)


@dataclass
class Belief:
    """One recipe's value at a target by one method: the bootstrap draws centred on the point, and the
    misspecification the calibration adds on top (kept apart: see p_beats)."""
    value: float = math.nan
    draws: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lower: float = math.nan
    upper: float = math.nan
    method_used: str = ""
    pair_key: tuple | None = None  # equal keys: the draws come from the same item resamples
    compute: float = math.nan
    reason: str = ""
    misspecification: Misspecification | None = None

    @property
    def ok(self) -> bool:
        return not self.reason and np.isfinite(self.value)

    def with_misspecification(self, draws: np.ndarray, z: np.ndarray) -> np.ndarray:
        return draws if self.misspecification is None else self.misspecification.add(draws, z)


def interval_of(value: float, draws: np.ndarray, level: float) -> tuple[float, float]:
    if len(draws) == 0:
        return value, value
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(draws, [alpha, 1.0 - alpha])
    return float(min(lo, value)), float(max(hi, value))


def centred_draws(predictor, value: float, draws: np.ndarray, scale: dict, level: float,
                  metric: str) -> tuple[np.ndarray, Misspecification | None]:
    """The bootstrap draws as the forecast's interval sees them: in the predictor's link space, their
    deviations from the median added to the point, clipped; and the misspecification its calibration
    adds at ``level`` and this target's extrapolation distance (None without a calibration)."""
    draws = np.asarray(draws, dtype=float)
    draws = draws[np.isfinite(draws)]
    if len(draws) == 0:
        return draws, None
    chosen = getattr(predictor, "chosen_", predictor)
    link = getattr(chosen, "link", None)
    forward, inverse = link or (lambda v: v, lambda v: v)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        deviations = forward(draws) - np.median(forward(draws))
        centred = inverse(forward(np.array(value, dtype=float)) + deviations[np.isfinite(deviations)])
    centred = np.asarray(bound(metric, centred[np.isfinite(centred)]), dtype=float)
    calibration = getattr(predictor, "calibration_", None)
    if calibration is None or len(centred) == 0:
        return centred, None
    distance = extrapolation_distance(getattr(chosen, "extent_", {}) or {}, scale)
    q = calibration.extra(level, distance)
    return centred, Misspecification(q / NormalDist().inv_cdf(0.5 + level / 2.0), metric, link) if q > 0 else None


def item_ids(items: pd.DataFrame | None, tasks) -> tuple | None:
    if items is None or "item" not in items:
        return None
    rows = items[items["task"].isin(list(tasks))]
    return tuple(sorted(rows["item"].astype(str).unique())) if len(rows) else None


def pairing_key(predictor, items, tasks) -> tuple | None:
    """Draws pair across recipes only when they come from item resamples of the same items and runs."""
    chosen = getattr(predictor, "chosen_", predictor)
    if not getattr(chosen, "items_resampled_", False) or getattr(chosen, "form_name_", "") == "linear":
        return None
    if getattr(chosen, "n_boot_failed_", 0):  # failed refits leave gaps: draw b no longer means resample b
        return None
    ids = item_ids(items, tasks)
    return None if ids is None else (type(chosen).__name__, int(getattr(chosen, "n_runs_", 0)), hash(ids))


def build_predictor(spec: MethodSpec, options):
    if spec.name == "loss-law":
        from capscale.laws.losslaw import LossLawPredictor

        return LossLawPredictor(**options.step1_given(), **options.common())
    if spec.name == "loss-to-loss":  # the source loss is --loss-task, as two-step's "loss from this task"
        from capscale.laws.losslaw import LossToLossPredictor

        return LossToLossPredictor(**options.step1_given(), **options.common())
    from capscale.laws.registry import make_predictor

    return make_predictor(spec.name, options)


def forecast_beliefs(spec: MethodSpec, train: pd.DataFrame, task: str, metric: str, loss: str | None,
                     loss_task: str | None, items, targets: list[Target], recipe: str, options) -> list[Belief]:
    """Fit the method on one recipe's runs and forecast every target (one Belief each)."""
    rank = spec.ranked_by(metric)
    finals = runs_finals(train, task, rank)
    compute = float(finals["flops"].sum()) if finals is not None else math.nan
    try:
        if finals is None:
            raise CapscaleError(f"no runs with task {task!r} metric {rank!r}")
        predictor = build_predictor(spec, options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predictor.fit(train, task, rank, loss, loss_task=loss_task, items=items)
    except (CapscaleError, ValueError, np.linalg.LinAlgError) as e:
        return [Belief(reason=f"{recipe}: {e}", compute=compute) for _ in targets]
    key = pairing_key(predictor, items, [task, loss_task or task])
    used = getattr(predictor, "method_used_", "") or getattr(predictor, "form_used_", "")
    out = []
    for t in targets:
        scale = t.scales[recipe]
        try:
            value, draws = predictor.predictive_draws(**scale)
        except (CapscaleError, ValueError) as e:
            out.append(Belief(reason=f"{recipe}: {e}", compute=compute))
            continue
        value = float(bound(rank, value))
        draws, misspecification = centred_draws(predictor, value, draws, scale, options.level, rank)
        belief = Belief(value, draws, method_used=used + ("" if len(draws) else " (no draws: every bootstrap refit failed)"),
                        pair_key=key, compute=compute, misspecification=misspecification)
        z = np.random.default_rng(options.seed).standard_normal(len(draws))
        belief.lower, belief.upper = interval_of(value, belief.with_misspecification(draws, z), options.level)
        out.append(belief)
    return out


def runs_finals(table: pd.DataFrame, task: str, metric: str) -> pd.DataFrame | None:
    rows = table[(table["task"] == task) & (table["metric"] == metric)]
    return final_checkpoints(rows) if len(rows) else None


def common_runs(a: pd.DataFrame, b: pd.DataFrame, scale: dict) -> tuple[pd.Series, pd.Series] | None:
    """The runs of A and B at the largest size both have (params within 2%), with tokens per parameter
    closest to the target's (in log) and, among those, the most compute; None without a common size."""
    if a is None or b is None or a.empty or b.empty:
        return None
    want = math.log(scale["tokens"] / scale["params"]) if scale.get("tokens") and scale.get("params") else None
    for size in reversed(rungs(np.concatenate([a["params"].to_numpy(float), b["params"].to_numpy(float)]))):
        at_a = a[[same_rung(p, size) for p in a["params"]]]
        at_b = b[[same_rung(p, size) for p in b["params"]]]
        if at_a.empty or at_b.empty:
            continue
        pairs = [(ra, rb) for _, ra in at_a.iterrows() for _, rb in at_b.iterrows() if same_rung(ra["tokens"], rb["tokens"])]
        if not pairs:
            continue

        def badness(pair):
            ra, _ = pair
            off = abs(math.log(ra["tokens"] / ra["params"]) - want) if want is not None else 0.0
            return (round(off, 6), -float(ra["flops"]))

        return min(pairs, key=badness)
    return None


def item_vector(items: pd.DataFrame | None, checkpoint, task: str, metric: str) -> pd.Series | None:
    if items is None or checkpoint is None or (isinstance(checkpoint, float) and np.isnan(checkpoint)):
        return None
    if metric not in items:
        return None
    rows = items[(items["checkpoint"] == checkpoint) & (items["task"] == task)]
    return rows.set_index(rows["item"].astype(str))[metric].astype(float).sort_index() if len(rows) else None


def single_scale_pair(spec: MethodSpec, a_rows: pd.DataFrame, b_rows: pd.DataFrame, task: str, metric: str,
                      items_a, items_b, scale_a: dict, options) -> tuple[Belief, Belief]:
    """Both recipes' values at their largest common size, with draws from one paired item bootstrap
    (the same multinomial item weights for both) or, without items, each row's stderr."""
    rank = spec.ranked_by(metric)
    fa, fb = runs_finals(a_rows, task, rank), runs_finals(b_rows, task, rank)
    if fa is None or fb is None:
        missing = Belief(reason=f"no runs with task {task!r} metric {rank!r} in one of the recipes")
        return missing, missing
    pair = common_runs(fa, fb, scale_a)
    if pair is None:
        raise DecideError(f"task {task!r}: the recipes have no common size (params within 2% and equal tokens) "
                          "to rank at; single-scale ranking needs one")
    ra, rb = pair
    va, vb = item_vector(items_a, ra.get("checkpoint"), task, rank), item_vector(items_b, rb.get("checkpoint"), task, rank)
    rng = np.random.default_rng(options.seed)
    n = max(int(options.n_boot), 0)
    paired = va is not None and vb is not None and list(va.index) == list(vb.index)
    if paired:
        weights = rng.multinomial(len(va), np.full(len(va), 1.0 / len(va)), size=n) / len(va)
        da, db = weights @ va.to_numpy(), weights @ vb.to_numpy()
    else:
        da = noise_draws(ra, va, rank, rng, n)
        db = noise_draws(rb, vb, rank, rng, n)
    beliefs = []
    for row, draws in ((ra, da), (rb, db)):
        value = float(row["value"])
        lo, hi = interval_of(value, draws, options.level)
        beliefs.append(Belief(value, np.asarray(draws, float), lo, hi, f"{row['model']}",
                              ("items", len(va)) if paired else None, float(row["flops"])))
    return beliefs[0], beliefs[1]


def noise_draws(row, items: pd.Series | None, metric: str, rng, n: int) -> np.ndarray:
    """Redraws of one measurement: its items resampled, else normal with the row's stderr, else none."""
    if items is not None:
        w = rng.multinomial(len(items), np.full(len(items), 1.0 / len(items)), size=n) / len(items)
        return w @ items.to_numpy()
    stderr = float(row["stderr"]) if "stderr" in row and pd.notna(row["stderr"]) else math.nan
    if not np.isfinite(stderr) and metric_kind(metric).probability and "n_items" in row and pd.notna(row["n_items"]):
        p = float(row["value"])
        stderr = math.sqrt(max(p * (1 - p), 0.0) / max(float(row["n_items"]) - 1, 1.0))
    if not np.isfinite(stderr):
        return np.zeros(0)
    return np.asarray(bound(metric, float(row["value"]) + rng.normal(0.0, stderr, n)), float)


def p_beats(a: Belief, b: Belief, metric: str, seed: int) -> tuple[float, np.ndarray, bool]:
    """P(A beats B) on the metric's sense, and the draws of A - B. Bootstrap draws pair where the keys
    agree, else B's are shuffled (independent). The calibration's misspecification is common to both:
    draw i of A and of B get the same standard-normal z_i, each scaled by its own recipe's size, since
    held-out errors measure how the law's form misses at this distance, and the same form fitted to two
    similar recipes misses alike (independent noise would count it twice in the difference and call
    nothing). One side without draws: its point against the other's draws; neither: the point
    comparison (1, 0 or 0.5)."""
    s = sense(metric)
    if len(a.draws) == 0 or len(b.draws) == 0:
        da = a.draws if len(a.draws) else np.full(max(len(b.draws), 1), a.value)
        db = b.draws if len(b.draws) else np.full(len(da), b.value)
        diff = da - db
        return float(np.mean(s * diff > 0) + 0.5 * np.mean(diff == 0)), np.zeros(0), False
    n = min(len(a.draws), len(b.draws))
    paired = a.pair_key is not None and a.pair_key == b.pair_key and len(a.draws) == len(b.draws)
    da, db = a.draws[:n], b.draws[:n]
    if not paired:
        db = np.random.default_rng(seed + 7).permutation(db)
    z = np.random.default_rng(seed + 11).standard_normal(n)
    diff = a.with_misspecification(da, z) - b.with_misspecification(db, z)
    p = float(np.mean(s * diff > 0) + 0.5 * np.mean(diff == 0))
    return p, diff, paired
