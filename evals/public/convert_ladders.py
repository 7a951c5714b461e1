"""Convert the published ladders in ../shared/data/ladders into capscale ladder tables.

    python evals/public/convert_ladders.py [--source DIR] [--out DIR]

Writes results/ladders/{pythia,openlm_overtraining,inverse_scaling_pilot,pythia_arithmetic}.csv,
the inverse-scaling per-choice rows and their checkpoint manifest. Output is deterministic
(sorted rows, fixed float format, gzip without a timestamp), so re-running it reproduces the
shipped files byte for byte. Provenance and every change made are listed in
results/ladders/README.md.

Conventions applied everywhere: ``params`` = non-embedding parameters (the total is kept as
``params_total``) and ``flops`` = 6·params·tokens recomputed with that ``params``; a row
computed here rather than copied names its recipe in ``derived_from``.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from capscale.metrics import LADDER_COLUMNS, ladder_table  # noqa: E402
from capscale.store import CHOICE_COLUMNS, MANIFEST_COLUMNS, atomic_write_bytes  # noqa: E402

DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "ladders"
DEFAULT_OUT = REPO / "results" / "ladders"
GZIP_ABOVE = 5 * 1024 * 1024
FLOAT_FORMAT = "%.10g"  # sources carry <= 7 significant digits, so this loses nothing
INTEGER_COLUMNS = ["params", "tokens", "step", "params_total", "num_fewshot", "n_items", "token_multiplier",
                   "item", "choice", "n_tokens", "n_chars", "n_bytes"]

# Gadre et al. 2024, "Language models scale reliably with over-training and on downstream tasks":
# the 17-task subset whose average top-1 error they forecast (mlfoundations/scaling,
# scaling/constants.py, SUBSET; identical at commits 79adc263 and 741b9ef1).
GADRE_SUBSET_17 = [
    "bigbench_operators", "pubmed_qa_labeled", "hellaswag_zeroshot", "boolq", "arc_easy", "coqa",
    "bigbench_dyck_languages", "lambada_openai", "bigbench_novel_concepts", "winograd",
    "bigbench_cs_algorithms", "commonsense_qa", "bigbench_qa_wikidata", "hellaswag", "copa", "squad", "piqa",
]
AVG_ERR_TASK = "avg_top1_error_17"


# --- shared helpers ----------------------------------------------------------------------

def read_csvs(paths: list[Path]) -> pd.DataFrame:
    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)


def nonembedding_convention(df: pd.DataFrame) -> pd.DataFrame:
    """params := params_nonembed (total kept as params_total); flops := 6·params·tokens."""
    out = df.copy()
    out["params_total"] = out["params"]
    out["params"] = out["params_nonembed"]
    out["flops"] = 6.0 * out["params"] * out["tokens"]
    return out.drop(columns=[c for c in ("params_nonembed", "flops_source") if c in out.columns])


def ladder_order(df: pd.DataFrame, extras: list[str]) -> pd.DataFrame:
    """Standard columns first, then extras; rows sorted so diffs of re-runs are empty."""
    out = df.copy()
    for column in LADDER_COLUMNS + extras:
        if column not in out.columns:
            out[column] = np.nan
    out = out[LADDER_COLUMNS + extras]
    keys = ["family", "params", "model", "step", "task", "metric"]
    keys += [c for c in ("num_fewshot",) if c in extras]
    return out.sort_values(keys, kind="stable", na_position="last").reset_index(drop=True)


def check_unique(df: pd.DataFrame, keys: list[str], name: str) -> None:
    dup = df.duplicated(keys, keep=False)
    if dup.any():
        raise SystemExit(f"{name}: duplicate rows for {keys}: {df.loc[dup, keys].head().to_dict('records')}")


def to_csv_bytes(df: pd.DataFrame) -> bytes:
    out = df.copy()
    for column in INTEGER_COLUMNS:
        if column in out.columns and pd.api.types.is_numeric_dtype(out[column]):
            values = out[column]
            whole = values.isna() | (values == np.round(values))
            if whole.all():
                out[column] = values.round().astype("Int64")
    return out.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\n").encode()


def write_table(df: pd.DataFrame, out_dir: Path, stem: str) -> Path:
    """stem.csv, or stem.csv.gz when the CSV would exceed 5 MB; the other variant is removed."""
    data = to_csv_bytes(df)
    plain, packed = out_dir / f"{stem}.csv", out_dir / f"{stem}.csv.gz"
    if len(data) > GZIP_ABOVE:
        target, stale = packed, plain
        data = gzip.compress(data, compresslevel=9, mtime=0)
    else:
        target, stale = plain, packed
    atomic_write_bytes(target, data)
    target.chmod(0o644)  # shipped files: world-readable whatever the umask of the machine that converts them
    stale.unlink(missing_ok=True)
    print(f"wrote {target.relative_to(REPO) if target.is_relative_to(REPO) else target}: "
          f"{len(df)} rows, {target.stat().st_size / 1e6:.2f} MB")
    return target


# --- Pythia (EleutherAI/pythia evals) -----------------------------------------------------

def lambada_nll_rows(df: pd.DataFrame) -> pd.DataFrame:
    """lm-eval's LAMBADA ppl is exp(mean NLL of the target word), so ln(ppl) is nll_correct (nats)."""
    ppl = df[(df["task"] == "lambada_openai") & (df["metric"] == "ppl")].copy()
    ppl["stderr"] = ppl["stderr"] / ppl["value"]  # delta method: se(ln x) = se(x) / x
    ppl["value"] = np.log(ppl["value"])
    ppl["metric"] = "nll_correct"
    ppl["derived_from"] = "ln(ppl)"
    return ppl


def convert_pythia(src: Path) -> pd.DataFrame:
    files = ["pythia_v1_zeroshot_final.csv", "pythia_v1_zeroshot_checkpoints.csv",
             "pythia_v1_zeroshot_checkpoints_mmlu_acc.csv"]
    df = read_csvs([src / "pythia" / f for f in files])
    df = df[df["family"].isin(["pythia", "pythia-deduped"]) & (df["num_fewshot"] == 0)]
    df = nonembedding_convention(df)
    df["derived_from"] = ""
    df = pd.concat([df, lambada_nll_rows(df)], ignore_index=True)
    check_unique(df, ["family", "model", "step", "task", "metric", "num_fewshot"], "pythia")
    return ladder_order(df, ["num_fewshot", "stderr", "params_total", "derived_from"])


def convert_pythia_arithmetic(src: Path, items_per_cell: int = 50) -> pd.DataFrame:
    """Pool the per-first-operand cells into one accuracy per (model, step, task, shots).

    Every cell has the same item count, so the pooled accuracy is the mean over cells, and the
    number of correct items (acc·50 per cell) gives the item-level standard error the way lm-eval
    computes it for the cells themselves: sqrt(p(1-p)/(N-1)).
    """
    files = [f"pythia_v0dedup_arithmetic_{op}_by_operand.csv" for op in ("addition", "multiplication")]
    df = read_csvs([src / "pythia" / f for f in files])
    df["correct"] = df["value"] * items_per_cell
    if not np.allclose(df["correct"], df["correct"].round(), atol=1e-4):
        raise SystemExit("pythia arithmetic: acc x 50 is not a whole number of items in some cells")
    keys = ["family", "model", "params", "params_nonembed", "tokens", "step", "task", "num_fewshot", "metric"]
    cells = df.groupby(keys, as_index=False).agg(correct=("correct", "sum"), n_cells=("operand", "nunique"),
                                                 n_rows=("operand", "size"))
    if (cells["n_cells"] != cells["n_rows"]).any():
        raise SystemExit("pythia arithmetic: an operand appears twice in one (model, step, task, shots) group")
    cells["n_items"] = cells["n_cells"] * items_per_cell
    p = cells["correct"].round() / cells["n_items"]
    cells["value"] = p
    cells["stderr"] = np.sqrt(p * (1 - p) / (cells["n_items"] - 1))
    operation = cells["task"].str.replace("num_reasoning_arithmetic_", "", regex=False)
    cells["task"] = "arithmetic_" + operation + "_" + cells["num_fewshot"].astype(int).astype(str) + "shot"
    cells = nonembedding_convention(cells)
    cells["derived_from"] = f"pooled over first operands ({items_per_cell} items each)"
    return ladder_order(cells, ["num_fewshot", "stderr", "n_items", "params_total", "derived_from"])


# --- OpenLM over-training testbed (mlfoundations/scaling) -------------------------------

def average_error_rows(df: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    """Per model: mean over the subset of top-1 error 1 - acc; chance = error of random guessing."""
    acc = df[df["task"].isin(tasks) & (df["metric"] == "acc")]
    counts = acc.groupby("model")["task"].nunique()
    incomplete = counts[counts != len(tasks)]
    if len(incomplete) or counts.size != df["model"].nunique():
        raise SystemExit(f"openlm: models lacking some of the {len(tasks)} subset tasks: {list(incomplete.index)}")
    meta = ["family", "model", "arch", "params", "tokens", "flops", "token_multiplier", "chinchilla_multiplier",
            "params_total"]
    rows = acc.groupby(meta, as_index=False).agg(value=("value", lambda v: float(np.mean(1.0 - v))),
                                                  chance=("chance", lambda c: float(1.0 - np.mean(c))))
    rows["task"] = AVG_ERR_TASK
    rows["metric"] = "err"
    rows["derived_from"] = f"mean of 1-acc over the {len(tasks)}-task subset of Gadre et al. 2024 (README)"
    return rows


def convert_openlm(src: Path) -> pd.DataFrame:
    df = pd.read_csv(src / "openlm_overtraining" / "openlm_overtraining_testbed.csv")
    missing = sorted(set(GADRE_SUBSET_17) - set(df["task"]))
    if missing:
        raise SystemExit(f"openlm: subset tasks missing from the testbed: {missing}")
    df = nonembedding_convention(df)
    df["derived_from"] = ""
    df = pd.concat([df, average_error_rows(df, GADRE_SUBSET_17)], ignore_index=True)
    check_unique(df, ["family", "model", "task", "metric"], "openlm")
    extras = ["arch", "token_multiplier", "chinchilla_multiplier", "num_fewshot", "stderr", "chance",
              "params_total", "derived_from"]
    return ladder_order(df, extras)


# --- Inverse Scaling pilot (naimenz/inverse-scaling-eval-pipeline) ----------------------

def transformer_params(n_layer: int, d_model: int, vocab: int, n_positions: int,
                       d_embed: int | None = None, final_norm: bool = True) -> tuple[int, int]:
    """(total, non-embedding) parameters of a GPT-2/OPT decoder with biases and LayerNorms.

    A block has 12·d² + 13·d parameters (QKV + output projection, two MLP matrices, their biases,
    two LayerNorms). Embeddings = token table (vocab·d_embed) + learned positions (n_positions·d);
    OPT-350m's 512->1024 input/output projections count as non-embedding.
    """
    d_embed = d_embed or d_model
    blocks = n_layer * (12 * d_model**2 + 13 * d_model)
    extra = (2 * d_model if final_norm else 0) + (2 * d_embed * d_model if d_embed != d_model else 0)
    embedding = vocab * d_embed + n_positions * d_model
    return blocks + extra + embedding, blocks + extra


# Architectures from the Hugging Face configs (GPT-2: vocab 50257, 1024 positions; OPT: vocab 50272,
# 2048 + 2 positions; OPT-350m has post-LayerNorm, no final norm, and 512-wide embeddings).
ARCHITECTURES = {
    "gpt2": dict(n_layer=12, d_model=768, vocab=50257, n_positions=1024),
    "gpt2-medium": dict(n_layer=24, d_model=1024, vocab=50257, n_positions=1024),
    "gpt2-large": dict(n_layer=36, d_model=1280, vocab=50257, n_positions=1024),
    "gpt2-xl": dict(n_layer=48, d_model=1600, vocab=50257, n_positions=1024),
    "opt-125m": dict(n_layer=12, d_model=768, vocab=50272, n_positions=2050),
    "opt-350m": dict(n_layer=24, d_model=1024, vocab=50272, n_positions=2050, d_embed=512, final_norm=False),
    "opt-1.3b": dict(n_layer=24, d_model=2048, vocab=50272, n_positions=2050),
}
HF_REPOS = {"gpt2": "gpt2", "gpt2-medium": "gpt2-medium", "gpt2-large": "gpt2-large", "gpt2-xl": "gpt2-xl",
            "opt-125m": "facebook/opt-125m", "opt-350m": "facebook/opt-350m", "opt-1.3b": "facebook/opt-1.3b"}


def inverse_model_meta(agg: pd.DataFrame) -> pd.DataFrame:
    """One row per model: exact total and non-embedding params, tokens (OPT: 180B; GPT-2: unknown)."""
    models = agg.drop_duplicates("model")[["family", "model", "params", "tokens"]].reset_index(drop=True)
    counts = [transformer_params(**ARCHITECTURES[m]) for m in models["model"]]
    models["params_total"] = [c[0] for c in counts]
    models["params_nonembed"] = [c[1] for c in counts]
    gpt2 = models["family"] == "gpt2"
    if not np.array_equal(models.loc[gpt2, "params"], models.loc[gpt2, "params_total"]):
        raise SystemExit("inverse scaling: GPT-2 parameter formula disagrees with the source counts")
    models["params"] = models["params_nonembed"]
    models["flops"] = 6.0 * models["params"] * models["tokens"]
    return models.drop(columns="params_nonembed")


def convert_inverse_aggregate(src: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    agg = pd.read_csv(src / "inverse_scaling_pilot" / "inverse_pilot_aggregate.csv")
    meta = inverse_model_meta(agg)
    out = agg.drop(columns=["params", "tokens", "flops"]).merge(meta, on=["family", "model"], how="left")
    out["checkpoint"] = out["model"]
    check_unique(out, ["family", "model", "task", "metric"], "inverse aggregate")
    extras = ["checkpoint", "dataset", "task_type", "n_items", "full_ladder", "params_total"]
    return ladder_order(out, extras), meta


def inverse_manifest(meta: pd.DataFrame) -> pd.DataFrame:
    """The results-store manifest (capscale.store.MANIFEST_COLUMNS); path = Hugging Face repo id."""
    out = meta.copy()
    out["checkpoint"] = out["model"]
    out["step"] = np.nan
    out["path"] = out["model"].map(HF_REPOS)
    return out[MANIFEST_COLUMNS].sort_values(["family", "params"]).reset_index(drop=True)


def logsumexp_pair_from_loss(loss: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """'loss' rows, total = logsumexp(a_gold, a_other): a_gold = total - loss, a_other = total + ln(1 - e^-loss)."""
    return total - loss, total + np.log(-np.expm1(-loss))


def sum_pair_from_loss(loss: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """'loss' rows, total = a_gold + a_other: margin d = a_gold - a_other = -ln(e^loss - 1)."""
    margin = -np.log(np.expm1(loss))
    return (total + margin) / 2, (total - margin) / 2


def pair_from_logodds(logodds: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """'logodds' rows, x = a_0 - a_1, total = logsumexp(a_0, a_1): a_0 = total - softplus(-x), a_1 = total - softplus(x)."""
    return total - np.logaddexp(0.0, -logodds), total - np.logaddexp(0.0, logodds)


def total_is_sum(family: str) -> bool:
    """How the pipeline's total_logprob was formed for this file (README: the evidence).

    The GPT-2 files hold logsumexp over the options (a plain sum would put a positive
    log-likelihood on a choice for thousands of items); the OPT file holds the sum of the two
    options' log-likelihoods (only that reading puts both options on the float16 grid the
    half-precision OPT runs produce).
    """
    return family == "opt"


def loss_choices(items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """'loss' rows -> (logprob of choice 0, of choice 1, gold index).

    The options' original order is unknown, so the gold option is written as choice 0 - except
    for an exact tie (loss = ln 2 to the 7 digits stored), where both options get the same
    log-likelihood and the gold index follows the source's 'correct' (the pipeline's argmax
    takes the first option on ties).
    """
    loss, total = items["score"].to_numpy(float), items["total_logprob"].to_numpy(float)
    uses_sum = items["family"].map(total_is_sum).to_numpy(bool)
    gold_lse, other_lse = logsumexp_pair_from_loss(loss, total)
    gold_sum, other_sum = sum_pair_from_loss(loss, total)
    gold = np.where(uses_sum, gold_sum, gold_lse)
    other = np.where(uses_sum, other_sum, other_lse)
    correct = items["correct"].to_numpy() == 1
    tie = np.abs(loss - np.log(2.0)) <= 1e-7
    disagree = ((gold > other) != correct) & ~tie
    if disagree.any():
        raise SystemExit(f"inverse scaling: {int(disagree.sum())} 'loss' items contradict their 'correct' flag")
    level = np.logaddexp(gold, other) - np.log(2.0)
    gold, other = np.where(tie, level, gold), np.where(tie, level, other)
    gold_index = np.where(tie & ~correct, 1, 0)
    first = np.where(gold_index == 0, gold, other)
    second = np.where(gold_index == 0, other, gold)
    return first, second, gold_index


def logodds_choices(items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """'logodds' rows -> (logprob of class 0, of class 1, gold index), in the pipeline's class order.

    gold = 0 when the sign of x = a_0 - a_1 agrees with 'correct' (argmax == answer index), else 1.
    """
    x, total = items["score"].to_numpy(float), items["total_logprob"].to_numpy(float)
    first, second = pair_from_logodds(x, total)
    correct = items["correct"].to_numpy() == 1
    gold_index = np.where((x > 0) == correct, 0, 1)
    return first, second, gold_index


def choice_rows(items: pd.DataFrame) -> pd.DataFrame:
    """Per-item pipeline scores -> two per-choice rows per item (DESIGN.md per-choice schema)."""
    converters = {"loss": loss_choices, "logodds": logodds_choices}
    unknown = sorted(set(items["score_name"]) - set(converters))
    if unknown:
        raise SystemExit(f"inverse scaling: no conversion for score_name {unknown}")
    parts = []
    for name, group in items.groupby("score_name", sort=True):
        first, second, gold_index = converters[name](group)
        both = np.logaddexp(first, second)
        for choice, lp in ((0, first), (1, second)):
            parts.append(pd.DataFrame({
                "checkpoint": group["model"].to_numpy(), "task": group["task"].to_numpy(),
                "item": group["item"].to_numpy(), "choice": choice, "gold": gold_index == choice,
                "logprob": lp, "logprob_norm": lp - both,
            }))
    out = pd.concat(parts, ignore_index=True)
    for column in ("n_tokens", "n_chars", "n_bytes"):
        out[column] = -1
    out["greedy"] = False
    out = out[CHOICE_COLUMNS + ["logprob_norm"]]
    return out.sort_values(["checkpoint", "task", "item", "choice"], kind="stable").reset_index(drop=True)


def fp16_share(values: np.ndarray) -> float:
    """Share of values that lie (to 5% of a step) on the float16 grid."""
    values = np.asarray(values, float)
    spacing = np.abs(values) * 2.0**-10
    gap = np.abs(values - values.astype(np.float16).astype(float))
    return float(np.mean(gap <= 0.05 * spacing))


def report_total_logprob_evidence(items: pd.DataFrame) -> None:
    """Print the two checks that decide how total_logprob was formed (see total_is_sum)."""
    loss = items[items["score_name"] == "loss"]
    for family, group in loss.groupby("family"):
        s, t = group["score"].to_numpy(float), group["total_logprob"].to_numpy(float)
        positive = np.mean(np.maximum(*sum_pair_from_loss(s, t)) > 0)
        print(f"  {family}: a plain-sum reading gives a positive log-likelihood for {positive:.1%} of items; "
              f"float16 grid share, sum reading {fp16_share(np.concatenate(sum_pair_from_loss(s, t))):.1%}, "
              f"logsumexp reading {fp16_share(np.concatenate(logsumexp_pair_from_loss(s, t))):.1%}")


def convert_inverse_items(src: Path) -> tuple[pd.DataFrame, list[str]]:
    files = sorted((src / "inverse_scaling_pilot").glob("inverse_pilot_per_item_*.csv"))
    items = read_csvs(files)
    usable = items["total_logprob"].notna() & items["correct"].notna()
    skipped = sorted(items.loc[~usable, "task"].unique())
    items = items[usable].reset_index(drop=True)
    report_total_logprob_evidence(items)
    rows = choice_rows(items)
    check_unique(rows, ["checkpoint", "task", "item", "choice"], "inverse items")
    return rows, skipped


def check_items_against_aggregate(rows: pd.DataFrame, manifest: pd.DataFrame, aggregate: pd.DataFrame) -> None:
    """The recovered choices must reproduce the source: accuracy per model x task equals the aggregate."""
    table = ladder_table(rows.assign(item=rows["item"].astype(str)), manifest)
    ours = table[table["metric"] == "acc"].set_index(["checkpoint", "task"])["value"]
    theirs = aggregate[aggregate["metric"] == "acc"].set_index(["checkpoint", "task"])["value"]
    joined = pd.concat([ours.rename("ours"), theirs.rename("theirs")], axis=1, join="inner")
    worst = float((joined["ours"] - joined["theirs"]).abs().max())
    print(f"  check: acc from recovered choices vs aggregate, {len(joined)} model x task pairs, max |diff| = {worst:.2g}")
    if len(joined) < len(ours) or worst > 1e-6:
        raise SystemExit("inverse scaling: recovered per-choice rows do not reproduce the aggregate accuracy")


# --- main -------------------------------------------------------------------------------

# --- OPT/BLOOM 0-shot (EleutherAI/pythia evals) and lm-eval's 2023 results ----------------

# nominal chance = 1 / number of choices, for tasks whose choice count is fixed (others stay empty)
NOMINAL_CHANCE = {
    "arc_challenge": 0.25, "arc_easy": 0.25, "hellaswag": 0.25, "openbookqa": 0.25, "sciq": 0.25, "logiqa": 0.25,
    "headqa": 0.25, "prost": 0.25, "race": 0.25, "swag": 0.25, "mathqa": 0.2, "piqa": 0.5, "winogrande": 0.5,
    "boolq": 0.5, "copa": 0.5, "wsc": 0.5, "wsc273": 0.5, "wnli": 0.5, "rte": 0.5, "qnli": 0.5, "qqp": 0.5,
    "mrpc": 0.5, "sst": 0.5, "cola": 0.5, "wic": 0.5, "multirc": 0.5, "toxigen": 0.5, "cb": 1 / 3, "mnli": 1 / 3,
    "mnli_mismatched": 1 / 3, "anli_r1": 1 / 3, "anli_r2": 1 / 3, "anli_r3": 1 / 3,
    "bigbench_causal_judgement": 0.5, "bigbench_formal_fallacies_syllogisms_negation": 0.5,
    "bigbench_hyperbaton": 0.5, "bigbench_navigate": 0.5, "bigbench_snarks": 0.5,
    "bigbench_sports_understanding": 0.5, "bigbench_logical_deduction_three_objects": 1 / 3,
    "bigbench_logical_deduction_five_objects": 0.2, "bigbench_logical_deduction_seven_objects": 1 / 7,
    "bigbench_tracking_shuffled_objects_three_objects": 1 / 3,
    "bigbench_tracking_shuffled_objects_five_objects": 0.2,
    "bigbench_tracking_shuffled_objects_seven_objects": 1 / 7,
}
NOMINAL_CHANCE_PREFIXES = {"hendrycksTest-": 0.25, "blimp_": 0.5, "xcopa_": 0.5, "xstory_cloze_": 0.5,
                           "xwinograd_": 0.5, "pawsx_": 0.5, "xnli_": 1 / 3, "ethics_": 0.5}
CHANCE_METRICS = ("acc", "acc_norm", "multiple_choice_grade")


def nominal_chance(task: str, metric: str) -> float:
    if metric not in CHANCE_METRICS:
        return np.nan
    if task in NOMINAL_CHANCE:
        return NOMINAL_CHANCE[task]
    for prefix, chance in NOMINAL_CHANCE_PREFIXES.items():
        if task.startswith(prefix):
            return chance
    return np.nan


def nominal_total_params(df: pd.DataFrame) -> pd.DataFrame:
    """These sources give only the models' nominal total sizes (from their names): params keeps that
    number (params_total the same) and flops = 6 · params · tokens with the published token budgets."""
    out = df.copy()
    out["params_total"] = out["params"]
    out["flops"] = 6.0 * out["params"] * out["tokens"]
    out["chance"] = [nominal_chance(t, m) for t, m in zip(out["task"], out["metric"])]
    return out.drop(columns=[c for c in ("params_nonembed", "flops_source") if c in out.columns])


def convert_opt_bloom(src: Path) -> pd.DataFrame:
    df = pd.read_csv(src / "pythia" / "opt_bloom_zeroshot.csv")
    df = nominal_total_params(df)
    check_unique(df, ["family", "model", "task", "metric", "num_fewshot"], "opt_bloom")
    return ladder_order(df, ["num_fewshot", "stderr", "chance", "params_total"])


def shots_in_task_names(df: pd.DataFrame) -> pd.DataFrame:
    """A task reported at several shot counts (gsm8k 5- and 8-shot, drop, the math tasks) is several
    tasks: each keeps its shots in its name ("gsm8k_8shot"), so one (model, task, metric) is one row."""
    shots = df.groupby("task")["num_fewshot"].nunique()
    several = df["task"].isin(shots[shots > 1].index)
    out = df.copy()
    out.loc[several, "task"] = out.loc[several, "task"] + "_" + out.loc[several, "num_fewshot"].astype(int).astype(str) + "shot"
    return out


def convert_lm_eval_2023(src: Path) -> tuple[pd.DataFrame, int]:
    """One row per (model, task, metric, shots); where two result files report the same one (boolq,
    copa, ... in both common_sense_reasoning and superglue), the alphabetically first file is kept
    (their values differ in the 4th decimal at most)."""
    df = pd.read_csv(src / "lm_eval_2023" / "lm_eval_harness_results_2023.csv")
    df = nominal_total_params(df)
    keys = ["family", "model", "task", "metric", "num_fewshot"]
    df = df.sort_values(keys + ["result_file"], kind="stable")
    duplicated = df.duplicated(keys, keep="first")
    df = df.loc[~duplicated]
    check_unique(df, keys, "lm_eval_2023")
    df = shots_in_task_names(df)
    return ladder_order(df, ["num_fewshot", "stderr", "chance", "params_total", "result_file"]), int(duplicated.sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the shared data/ladders folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the ladder tables go")
    args = parser.parse_args(argv)
    src, out = args.source.resolve(), args.out
    out.mkdir(parents=True, exist_ok=True)

    write_table(convert_pythia(src), out, "pythia")
    write_table(convert_pythia_arithmetic(src), out, "pythia_arithmetic")
    write_table(convert_openlm(src), out, "openlm_overtraining")
    write_table(convert_opt_bloom(src), out, "opt_bloom")
    lm_eval, n_dropped = convert_lm_eval_2023(src)
    write_table(lm_eval, out, "lm_eval_2023")
    print(f"  lm_eval_2023: {n_dropped} rows reported twice (two result files) dropped")

    aggregate, meta = convert_inverse_aggregate(src)
    manifest = inverse_manifest(meta)
    rows, skipped = convert_inverse_items(src)
    check_items_against_aggregate(rows, manifest, aggregate)
    write_table(aggregate, out, "inverse_scaling_pilot")
    write_table(rows, out, "inverse_scaling_pilot_items")
    write_table(manifest, out, "inverse_scaling_pilot_checkpoints")
    print(f"  per-item tasks without correct/total_logprob (not converted to choices): {skipped}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
