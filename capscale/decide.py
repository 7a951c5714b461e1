"""Which recipe wins at scale: pairwise decisions between recipes from a ladder of small runs.

A *recipe* is a value of one column of the ladder table (``family``, or a data-mix column): every
recipe has its own runs, usually at the same sizes. For every pair of recipes (A, B), every task and
every target scale, a method gives P(A beats B at the target) and a decision: A, B, or "too close
to call" at the requested level (A when P >= level, B when P <= 1 - level).

Methods (``MethodSpec``, written ``name`` or ``name:metric``; the metric is what the method ranks by,
default ``--metric``):
- ``single-scale``: the ranking at the largest size both recipes have (DataDecide's baseline,
  Magnusson et al. 2025), with tokens per parameter closest to the target's. P is the chance that a
  redraw of the benchmark items keeps the ranking (items resampled, paired when both recipes were
  scored on the same items; the rows' stderr where there are no items): the small-scale difference
  carried forward, not a forecast. Without any noise estimate P is the bare ranking (0 or 1) and the
  pair is never *called* (a decision needs draws on both sides); it is still scored as a ranking.
- ``single-scale:bpb_correct`` / ``single-scale:p_correct``: the same ranking by a continuous metric
  (DataDecide finds these decide far better at small scale).
- every forecasting method of the registry (``two-step``, ``direct``, ``auto``, ...): each recipe's
  own fit, forecast at the target; ``direct:p_correct`` ranks by the forecast p_correct.
- ``loss-law:METRIC`` (``capscale.laws.losslaw.LossLawPredictor``): a loss extrapolated by its scale
  law, e.g. ``loss-law:bpb_correct`` ("extrapolated bpb"); plain ``loss-law`` when ``--metric`` is a loss.
- ``loss-to-loss`` (``LossToLossPredictor``): the scale law of the ``--loss-task`` loss (e.g. a validation
  loss) mapped to the task's loss by the shifted power law (and, for an accuracy, through ``--loss``
  and two-step's step 2).

P(A beats B) comes from the forecasts' own predictive draws (the bootstrap over runs, items where
per-item data exist, and a resampled residual), centred on the point forecast, plus the calibration's
misspecification as normal noise of the size its intervals add (``capscale.laws.calibration``:
variances add), common to both recipes of a pair (see ``p_beats``). Draws are paired across
recipes when both were fitted on the same items and the same number of runs: the seeded bootstrap's
resample b then redraws the same items (and the same run positions) for both. Otherwise B's draws are
shuffled, i.e. treated as independent of A's.

Targets (``--target``): a query over the ladder's rows (``capscale.query``; e.g. ``params > 1e9``)
whose runs are held out: each distinct (params, tokens) among their final checkpoints (within 2%)
is one target, at which each recipe is forecast at its own matched run's scale (or at the target's
scale where it has no run there); or explicit scales ``params=6.9e9,tokens=1.4e11`` (several joined
by ``;``), at which every recipe is forecast from all its runs.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError
from capscale.ladder import MODEL_KEY, final_checkpoints, holdout_split, metric_series
from capscale.laws.base import bound, extrapolation_distance
from capscale.laws.rolling import SIZE_RTOL, rungs
from capscale.schema import metric_kind, target_scale

TOO_CLOSE = "too close to call"
OWN_METHODS = ("single-scale", "loss-law", "loss-to-loss")
CONTINUOUS = ("bpb_correct", "p_correct")
RECORD_KEYS = ["task", "target", "method", "rank_metric", "recipe_a", "recipe_b", "value_a", "value_b", "lower_a",
               "upper_a", "lower_b", "upper_b", "p_a_beats_b", "diff", "diff_lower", "diff_upper", "decision",
               "called", "paired", "method_used_a", "method_used_b", "dropped", "compute_a", "compute_b",
               "compute_fraction", "actual_a", "actual_b", "actual_gap_se", "actual_winner", "correct", "reason"]
"""One decision: the two recipes' forecasts (value, interval at the level) by the rank metric, P(A beats
B) on the target metric's sense, the difference A - B with its interval, the decision and whether it was
called at the level; ``dropped`` (largest rungs left out), compute used per recipe (flops of the runs the
method read) and its fraction of the target's compute; in a backtest the actual values of ``--metric``,
the standard error of their difference (from the rows' stderr, where known), the actual winner and
whether the forced choice was right (None without a truth); ``reason``
says why a pair has no decision (then p_a_beats_b is null)."""


class DecideError(CapscaleError):
    """A decision problem that cannot be posed as given (one recipe, no common size, no target)."""


# --- methods --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MethodSpec:
    name: str
    rank_metric: str | None = None  # None: the target metric

    @property
    def label(self) -> str:
        return self.name if self.rank_metric is None else f"{self.name}:{self.rank_metric}"

    def ranked_by(self, metric: str) -> str:
        return self.rank_metric or metric


def parse_method(text: str) -> MethodSpec:
    from capscale.laws.registry import METHODS

    name, _, metric = text.strip().partition(":")
    known = OWN_METHODS + tuple(METHODS)
    if name not in known:
        raise DecideError(f"--method {text!r}: the method must be one of {', '.join(known)} (optionally :METRIC)")
    return MethodSpec(name, metric or None)


def default_methods(metric: str, ladder: pd.DataFrame) -> list[MethodSpec]:
    """The baseline, the continuous rankings and the forecasts the ladder has metrics for."""
    have = set(ladder["metric"].unique())
    kind = metric_kind(metric)
    if not (kind.higher_is_better or kind.probability):  # a loss: rank it, or extrapolate it
        return [MethodSpec("single-scale"), MethodSpec("loss-law")]
    out = [MethodSpec("single-scale")]
    out += [MethodSpec("single-scale", m) for m in CONTINUOUS if m in have]
    if "bpb_correct" in have:
        out.append(MethodSpec("loss-law", "bpb_correct"))
    if "p_correct" in have:
        out.append(MethodSpec("direct", "p_correct"))
    out += [MethodSpec("two-step"), MethodSpec("direct"), MethodSpec("auto")]
    return out


def sense(metric: str) -> float:
    """+1 where higher is better, -1 for errors and losses: sense * value is 'goodness' to compare."""
    return 1.0 if metric_kind(metric).higher_is_better else -1.0


# --- recipes and targets ----------------------------------------------------------------------------

def recipes_of(ladder: pd.DataFrame, recipe_col: str) -> list[str]:
    if recipe_col not in ladder.columns:
        raise DecideError(f"--recipe-col {recipe_col!r} is not a column of the ladder "
                          f"(columns: {', '.join(map(str, ladder.columns))})")
    values = ladder[recipe_col]
    if values.isna().any() or (values.astype(str).str.strip() == "").any():
        raise DecideError(f"--recipe-col {recipe_col!r} is empty on some rows; every run needs a recipe")
    recipes = sorted(values.astype(str).unique())
    if len(recipes) < 2:
        raise DecideError(f"--recipe-col {recipe_col!r} has one recipe only ({recipes[0]!r}); a decision needs two")
    return recipes


def rows_of(table: pd.DataFrame, recipe_col: str, recipe: str) -> pd.DataFrame:
    out = table[table[recipe_col].astype(str) == recipe].reset_index(drop=True)
    out.attrs = dict(table.attrs)
    return out


EXPLICIT = re.compile(r"^\s*(params|tokens|flops)\s*=(?!=)")


def parse_explicit(text: str) -> list[dict] | None:
    """``params=6.9e9,tokens=1.4e11[; params=...]`` -> target scales; None when ``text`` is a query."""
    if not EXPLICIT.match(text):
        return None
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        values = {}
        for item in filter(None, (i.strip() for i in part.split(","))):
            key, eq, number = item.partition("=")
            key = key.strip()
            if not eq or key not in ("params", "tokens", "flops") or key in values:
                raise DecideError(f"--target {text!r}: write scales as params=N,tokens=D (or flops=C), "
                                  "several joined by ';', or give a query such as \"params > 1e9\"")
            try:
                values[key] = float(number)
            except ValueError:
                raise DecideError(f"--target {text!r}: {key} must be a number, got {number.strip()!r}") from None
        out.append(target_scale(values.get("params"), values.get("tokens"), values.get("flops")))
    if not out:
        raise DecideError(f"--target {text!r} names no scale")
    return out


@dataclass
class Target:
    label: str
    scales: dict  # recipe -> {params, tokens, flops}
    runs: dict = field(default_factory=dict)  # recipe -> model of its run at the target (held out)

    def to_dict(self) -> dict:
        return {"label": self.label, "scales": self.scales, "runs": self.runs}


def scale_label(scale: dict) -> str:
    parts = [f"{k}={scale[k]:.3g}" for k in ("params", "tokens") if scale.get(k) is not None]
    return ",".join(parts) if parts else f"flops={scale['flops']:.3g}"


def same_rung(a: float, b: float) -> bool:
    if not (np.isfinite(a) and np.isfinite(b)):
        return bool(np.isnan(a) and np.isnan(b))
    return max(a, b) <= min(a, b) * (1.0 + SIZE_RTOL)


def held_targets(held: pd.DataFrame, recipe_col: str, recipes: list[str]) -> list[Target]:
    """One Target per distinct (params, tokens) of the held-out runs' final checkpoints."""
    columns = list(dict.fromkeys(MODEL_KEY + [recipe_col, "params", "tokens", "flops"]))
    finals = final_checkpoints(held)[columns].drop_duplicates(MODEL_KEY)
    groups: list[list] = []  # [representative (params, tokens), [rows]]
    for _, row in finals.sort_values(["params", "tokens"], kind="stable").iterrows():
        for group in groups:
            if same_rung(group[0][0], row["params"]) and same_rung(group[0][1], row["tokens"]):
                group[1].append(row)
                break
        else:
            groups.append([(row["params"], row["tokens"]), [row]])
    targets = []
    for (params, tokens), members in groups:
        runs, scales = {}, {}
        for row in members:
            recipe = str(row[recipe_col])
            if recipe not in runs:  # two runs of one recipe at one scale: the first is the target run
                runs[recipe] = str(row["model"])
                scales[recipe] = target_scale(row["params"], row["tokens"], row["flops"])
        shared = target_scale(np.median([r["params"] for r in members]), np.median([r["tokens"] for r in members]),
                              np.median([r["flops"] for r in members]))
        full = {r: scales.get(r, shared) for r in recipes}
        targets.append(Target(scale_label(shared), full, runs))
    return targets


def resolve_targets(ladder: pd.DataFrame, recipe_col: str, target: str,
                    recipes: list[str]) -> tuple[pd.DataFrame, list[Target]]:
    """(rows to fit on, targets). A query holds its rows out (they are the target runs); explicit
    scales fit on every row."""
    explicit = parse_explicit(target)
    if explicit is not None:
        return ladder, [Target(scale_label(s), {r: dict(s) for r in recipes}) for s in explicit]
    try:
        train, held = holdout_split(ladder, target)
    except CapscaleError as e:
        raise DecideError(str(e).replace("holdout query", "target query")) from None
    return train, held_targets(held, recipe_col, recipes)


# --- one recipe's belief about one target -----------------------------------------------------------

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

        return LossLawPredictor(step1=options.step1, **options.common())
    if spec.name == "loss-to-loss":  # the source loss is --loss-task, as two-step's "loss from this task"
        from capscale.laws.losslaw import LossToLossPredictor

        return LossToLossPredictor(step1=options.step1, **options.common())
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


# --- single-scale ranking ----------------------------------------------------------------------------

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


# --- the decision ------------------------------------------------------------------------------------

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


@dataclass
class DecisionRecord:
    task: str
    target: str
    method: str
    rank_metric: str
    recipe_a: str
    recipe_b: str
    value_a: float = math.nan
    value_b: float = math.nan
    lower_a: float = math.nan
    upper_a: float = math.nan
    lower_b: float = math.nan
    upper_b: float = math.nan
    p_a_beats_b: float | None = None
    diff: float = math.nan
    diff_lower: float = math.nan
    diff_upper: float = math.nan
    decision: str = ""
    called: bool = False
    paired: bool = False
    method_used_a: str = ""
    method_used_b: str = ""
    dropped: int = 0
    compute_a: float = math.nan
    compute_b: float = math.nan
    compute_fraction: float = math.nan
    actual_a: float | None = None
    actual_b: float | None = None
    actual_gap_se: float | None = None
    actual_winner: str | None = None
    correct: bool | None = None
    reason: str = ""

    def contract(self) -> dict:
        out = {}
        for key in RECORD_KEYS:
            value = getattr(self, key)
            if isinstance(value, (float, np.floating)):
                value = float(value) if np.isfinite(value) else None
            out[key] = value
        return out


def decide_pair(task: str, target: Target, spec: MethodSpec, metric: str, a: str, b: str, belief_a: Belief,
                belief_b: Belief, level: float, seed: int) -> DecisionRecord:
    rank = spec.ranked_by(metric)
    record = DecisionRecord(task, target.label, spec.label, rank, a, b, compute_a=belief_a.compute,
                            compute_b=belief_b.compute)
    flops = np.mean([target.scales[a].get("flops") or np.nan, target.scales[b].get("flops") or np.nan])
    record.compute_fraction = float(np.mean([belief_a.compute, belief_b.compute]) / flops) if flops else math.nan
    if not (belief_a.ok and belief_b.ok):
        record.reason = "; ".join(dict.fromkeys(x.reason or "no forecast" for x in (belief_a, belief_b) if not x.ok))
        return record
    p, diff, paired = p_beats(belief_a, belief_b, rank, seed)
    point = belief_a.value - belief_b.value
    lo, hi = (point, point) if len(diff) == 0 else interval_of(point, point + diff - np.median(diff), level)
    record.value_a, record.value_b = belief_a.value, belief_b.value
    record.lower_a, record.upper_a, record.lower_b, record.upper_b = belief_a.lower, belief_a.upper, belief_b.lower, belief_b.upper
    record.p_a_beats_b, record.diff, record.diff_lower, record.diff_upper = p, point, lo, hi
    record.paired = paired
    record.method_used_a, record.method_used_b = belief_a.method_used, belief_b.method_used
    # without draws on both sides (no noise estimate; every refit failed) P is a point comparison:
    # scored as a ranking, never called at a confidence level
    record.called = bool(len(belief_a.draws) and len(belief_b.draws)) and (p >= level or p <= 1.0 - level)
    record.decision = TOO_CLOSE if not record.called else a if p >= level else b
    return record


def score(record: DecisionRecord, truth_a: tuple, truth_b: tuple, metric: str) -> None:
    """Fill in the truth of a backtest: the actual winner by --metric (None on an exact tie) and whether
    the forced choice was right: the recipe with the better point forecast (DataDecide's decision
    accuracy ranks by the prediction), P(A beats B) breaking an exact tie."""
    (actual_a, se_a), (actual_b, se_b) = truth_a, truth_b
    record.actual_a, record.actual_b = actual_a, actual_b
    if se_a is not None and se_b is not None:
        record.actual_gap_se = float(math.hypot(se_a, se_b))
    if actual_a is None or actual_b is None:
        record.reason = record.reason or "no actual value for both recipes at this target"
        return
    gap = sense(metric) * (actual_a - actual_b)
    record.actual_winner = record.recipe_a if gap > 0 else record.recipe_b if gap < 0 else None
    if record.p_a_beats_b is None or record.actual_winner is None:
        return
    record.correct = forced_choice(record) == record.actual_winner


def forced_choice(record: DecisionRecord) -> str | None:
    """The recipe a ranking picks: better point value by the rank metric's sense, else by P."""
    edge = sense(record.rank_metric) * record.diff
    if edge == 0 or not np.isfinite(edge):
        edge = record.p_a_beats_b - 0.5
    return record.recipe_a if edge > 0 else record.recipe_b if edge < 0 else None


# --- the whole problem -------------------------------------------------------------------------------

@dataclass
class DecideProblem:
    """Everything a decision needs that does not change between tasks."""
    recipe_col: str
    recipes: list[str]
    metric: str
    methods: list[MethodSpec]
    loss: str | None
    loss_task: str | None
    options: object  # capscale.laws.registry.MethodOptions


def items_for(spec: MethodSpec, items: dict | None):
    """Per-item data for a method (capscale.laws.registry's kinds): per-choice rows, their item metrics."""
    if items is None:
        return None
    if spec.name in OWN_METHODS:
        return items.get("item_metrics")
    from capscale.laws.registry import get_method

    return items.get(get_method(spec.name).items or "", None)


def recipe_items(items, recipe_rows_: pd.DataFrame, task: str, loss_task: str | None):
    """The per-item rows of one recipe's checkpoints (and only the tasks this decision reads)."""
    if items is None:
        return None
    checkpoints = set(recipe_rows_["checkpoint"].dropna()) if "checkpoint" in recipe_rows_ else set()
    keep = items["checkpoint"].isin(checkpoints) & items["task"].isin([task, loss_task or task])
    return items[keep].reset_index(drop=True) if keep.any() else None


def decide_task(problem: DecideProblem, train: pd.DataFrame, task: str, targets: list[Target],
                items: dict | None = None, dropped: int = 0) -> list[DecisionRecord]:
    """Every method x target x pair of recipes for one task."""
    by_recipe = {r: rows_of(train, problem.recipe_col, r) for r in problem.recipes}
    records = []
    for spec in problem.methods:
        kinds = items_for(spec, items)
        per_recipe = {r: recipe_items(kinds, by_recipe[r], task, problem.loss_task) for r in problem.recipes}
        beliefs = {}
        if spec.name != "single-scale":
            for r in problem.recipes:
                beliefs[r] = forecast_beliefs(spec, by_recipe[r], task, problem.metric, problem.loss, problem.loss_task,
                                              per_recipe[r], targets, r, problem.options)
        for i, a in enumerate(problem.recipes):
            for b in problem.recipes[i + 1:]:
                for k, target in enumerate(targets):
                    if spec.name == "single-scale":
                        ba, bb = single_scale_pair(spec, by_recipe[a], by_recipe[b], task, problem.metric,
                                                   per_recipe[a], per_recipe[b], target.scales[a], problem.options)
                    else:
                        ba, bb = beliefs[a][k], beliefs[b][k]
                    record = decide_pair(task, target, spec, problem.metric, a, b, ba, bb, problem.options.level,
                                         problem.options.seed)
                    record.dropped = dropped
                    records.append(record)
    return records


def actual_value(held: pd.DataFrame, recipe_col: str, recipe: str, model: str | None, task: str,
                 metric: str) -> tuple[float | None, float | None]:
    """(value, stderr) of a held-out target run's final checkpoint; (None, None) without one. The stderr
    is the row's, else the binomial one of a probability with n_items, else None."""
    if model is None:
        return None, None
    rows = held[(held[recipe_col].astype(str) == recipe) & (held["model"].astype(str) == model)
                & (held["task"] == task) & (held["metric"] == metric)]
    if rows.empty:
        return None, None
    row = final_checkpoints(rows).iloc[0]
    value = float(row["value"])
    se = float(row["stderr"]) if "stderr" in row and pd.notna(row["stderr"]) else None
    if se is None and metric_kind(metric).probability and "n_items" in row and pd.notna(row["n_items"]):
        se = math.sqrt(max(value * (1 - value), 0.0) / max(float(row["n_items"]) - 1, 1.0))
    return value, se


def fill_truth(record: DecisionRecord, held: pd.DataFrame, recipe_col: str, target: Target, task: str,
               metric: str, backtest: bool) -> None:
    """The actual outcome at the target, where both recipes have a run there (always scored in a
    backtest, which then names what is missing)."""
    truth_a = actual_value(held, recipe_col, record.recipe_a, target.runs.get(record.recipe_a), task, metric)
    truth_b = actual_value(held, recipe_col, record.recipe_b, target.runs.get(record.recipe_b), task, metric)
    if backtest or (truth_a[0] is not None and truth_b[0] is not None):
        score(record, truth_a, truth_b, metric)


def tasks_with(table: pd.DataFrame, metric: str, tasks: list[str] | None) -> list[str]:
    available = sorted(table.loc[table["metric"] == metric, "task"].unique())
    if tasks:
        missing = sorted(set(tasks) - set(available))
        if missing:
            raise DecideError(f"tasks {missing} have no rows with metric {metric!r}")
        return [t for t in available if t in tasks]
    if not available:
        raise DecideError(f"the ladder has no rows with metric {metric!r}")
    return available


def run_parallel(function, tasks: list[str], jobs: int, progress: bool, label: str) -> list:
    from capscale.progress import task_bar

    results = []
    with task_bar(len(tasks), label, enabled=progress, nested=jobs <= 1) as bar:
        if jobs > 1 and len(tasks) > 1:
            from joblib import Parallel, delayed

            for result in Parallel(n_jobs=jobs, return_as="generator")(delayed(function)(t) for t in tasks):
                results.append(result)
                bar.task_done()
        else:
            for t in tasks:
                results.append(function(t))
                bar.task_done()
    return results


def check_common_sizes(problem: DecideProblem, train: pd.DataFrame) -> None:
    """Single-scale ranking needs a size every pair of recipes has; say so before any fitting."""
    if not any(m.name == "single-scale" for m in problem.methods):
        return
    finals = final_checkpoints(train)
    sizes = {r: finals.loc[finals[problem.recipe_col].astype(str) == r, "params"].to_numpy(float)
             for r in problem.recipes}
    for i, a in enumerate(problem.recipes):
        for b in problem.recipes[i + 1:]:
            if not any(same_rung(x, y) for x in sizes[a] for y in sizes[b]):
                raise DecideError(f"recipes {a!r} and {b!r} have no common size (params within 2%) among the "
                                  "runs outside the target; single-scale ranking needs one (leave it out with "
                                  "--method, or add runs)")


def decide(ladder: pd.DataFrame, recipe_col: str, target: str, *, metric: str = "acc", methods=None,
           loss: str | None = "bpb_correct", loss_task: str | None = None, tasks: list[str] | None = None,
           options=None, items: dict | None = None, jobs: int = 1, progress: bool = False) -> dict:
    """Every pairwise decision at the target. ``items``: {"item_metrics": ..., "choices": ...} per-item
    data of the recipes' checkpoints (optional). Returns the JSON-ready result (see RECORD_KEYS)."""
    from capscale.laws.registry import MethodOptions

    options = options or MethodOptions()
    recipes = recipes_of(ladder, recipe_col)
    train, targets = resolve_targets(ladder, recipe_col, target, recipes)
    specs = [parse_method(m) if isinstance(m, str) else m for m in (methods or default_methods(metric, ladder))]
    problem = DecideProblem(recipe_col, recipes, metric, specs, loss, loss_task, options)
    check_common_sizes(problem, train)
    held = ladder if parse_explicit(target) is not None else holdout_split(ladder, target)[1]
    names = tasks_with(train, metric, tasks)

    def one(task):
        records = decide_task(problem, train, task, targets, items)
        for r in records:
            t = next(x for x in targets if x.label == r.target)
            fill_truth(r, held, recipe_col, t, task, metric, backtest=False)  # target runs exist: who won
        return records

    records = [r for chunk in run_parallel(one, names, jobs, progress, "decide") for r in chunk]
    return {"command": "decide", "recipe_col": recipe_col, "recipes": recipes, "metric": metric,
            "level": options.level, "target": target, "targets": [t.to_dict() for t in targets],
            "methods": [m.label for m in specs], "records": [r.contract() for r in records]}


# --- decision accuracy backtest -----------------------------------------------------------------------

def drop_largest(train: pd.DataFrame, k: int) -> pd.DataFrame:
    """The runs of ``train`` without those of the k largest sizes (params rungs over every recipe)."""
    if k == 0:
        return train
    finals = final_checkpoints(train).drop_duplicates(MODEL_KEY)
    steps = rungs(finals["params"].to_numpy(float))
    if k >= len(steps):
        return train.iloc[:0]
    cut = steps[-k] / (1.0 + SIZE_RTOL)
    keep = finals.loc[finals["params"] < cut, MODEL_KEY]
    mask = pd.MultiIndex.from_frame(train[MODEL_KEY]).isin(pd.MultiIndex.from_frame(keep))
    out = train.loc[mask].reset_index(drop=True)
    out.attrs = dict(train.attrs)
    return out


def gap_is_clear(record) -> bool:
    """The target runs differ by more than twice the standard error of their difference: a truth that
    another draw of the benchmark's items would not likely reverse."""
    se = record["actual_gap_se"]
    return se is not None and np.isfinite(se) and abs(record["actual_a"] - record["actual_b"]) > 2 * se


def summarise(records: list[dict], by: list[str]) -> list[dict]:
    """Decision accuracy per group: the share of pairs with a truth that the forced choice got right
    (and among the pairs whose target gap is clear, see gap_is_clear), the share called at the level,
    and the accuracy of the called ones; compute fraction (median)."""
    df = pd.DataFrame(records)
    if df.empty:
        return []
    scored = df[df["correct"].notna()].copy()
    out = []
    for key, group in df.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        right = scored.loc[group.index.intersection(scored.index)]
        called = right[right["called"].astype(bool)]
        clear = right[[gap_is_clear(r) for _, r in right.iterrows()]]
        out.append({**dict(zip(by, key)), "n_pairs": int(len(right)), "n_without_truth": int(len(group) - len(right)),
                    "accuracy": float(right["correct"].astype(float).mean()) if len(right) else None,
                    "n_clear": int(len(clear)),
                    "clear_accuracy": float(clear["correct"].astype(float).mean()) if len(clear) else None,
                    "called": float(len(called) / len(right)) if len(right) else None,
                    "called_accuracy": float(called["correct"].astype(float).mean()) if len(called) else None,
                    "compute_fraction": float(group["compute_fraction"].dropna().median())
                    if group["compute_fraction"].notna().any() else None})
    return out


def decide_backtest(ladder: pd.DataFrame, recipe_col: str, target: str, *, metric: str = "acc", methods=None,
                    loss: str | None = "bpb_correct", loss_task: str | None = None, tasks: list[str] | None = None,
                    options=None, items: dict | None = None, max_drop: int = 3, jobs: int = 1,
                    progress: bool = False) -> dict:
    """Hold out the target runs, decide every pair from the smaller runs, score against the targets'
    actual ranking; repeat with the largest rungs dropped one by one (the compute-decision frontier)."""
    from capscale.laws.registry import MethodOptions

    options = options or MethodOptions()
    if parse_explicit(target) is not None:
        raise DecideError("decide-backtest needs --target as a query selecting runs the ladder has (their actual "
                          "ranking is the truth), not explicit scales")
    recipes = recipes_of(ladder, recipe_col)
    train, targets = resolve_targets(ladder, recipe_col, target, recipes)
    held = holdout_split(ladder, target)[1]
    specs = [parse_method(m) if isinstance(m, str) else m for m in (methods or default_methods(metric, ladder))]
    problem = DecideProblem(recipe_col, recipes, metric, specs, loss, loss_task, options)
    check_common_sizes(problem, train)
    names = tasks_with(train, metric, tasks)
    levels = [k for k in range(max_drop + 1) if not drop_largest(train, k).empty]

    def one(task):
        records = []
        for k in levels:
            reduced = drop_largest(train, k)
            try:
                chunk = decide_task(problem, reduced, task, targets, items, dropped=k)
            except DecideError as e:  # a common size left at k = 0 may be gone further down
                chunk = [DecisionRecord(task, t.label, s.label, s.ranked_by(metric), a, b, dropped=k, reason=str(e))
                         for s in specs for i, a in enumerate(recipes) for b in recipes[i + 1:] for t in targets]
            for r in chunk:
                t = next(x for x in targets if x.label == r.target)
                fill_truth(r, held, recipe_col, t, task, metric, backtest=True)
            records += chunk
        return records

    records = [r.contract() for chunk in run_parallel(one, names, jobs, progress, "decide-backtest") for r in chunk]
    return {"command": "decide-backtest", "recipe_col": recipe_col, "recipes": recipes, "metric": metric,
            "level": options.level, "target": target, "targets": [t.to_dict() for t in targets],
            "methods": [m.label for m in specs], "dropped": levels, "records": records,
            "summary": summarise(records, ["method", "dropped"]),
            "per_task": summarise(records, ["task", "method", "dropped"])}


def as_table(records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(records, columns=RECORD_KEYS)


__all__ = ["decide", "decide_backtest", "MethodSpec", "parse_method", "default_methods", "RECORD_KEYS", "TOO_CLOSE",
           "DecideError", "summarise"]
