"""Ladder specs: which checkpoints (with their scale metadata) to evaluate on which tasks.

```yaml
family: toy
tasks: [tasks/facts.jsonl, lm-eval:hellaswag]   # task specs; relative paths are from this file
generative_tasks: [tasks/arith_gen.jsonl]        # for `capscale sample --ladder` (optional)
checkpoints:
  - checkpoint: toy-s1-step400   # unique name (default: the path's last two parts)
    model: toy-s1                # the training run (default: checkpoint)
    path: s1/step400             # HF directory (relative to this file) or hub id
    step: 400
    params: 51234                # non-embedding; measured from the model when absent
    params_total: 90000
    tokens: 1638400
    flops: 5.0e11                # default 6 * params * tokens
```

params must be > 0; tokens and flops > 0 except at step 0 (an initial checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from capscale.errors import TaskFormatError


@dataclass
class CheckpointSpec:
    path: str
    checkpoint: str
    model: str
    family: str = ""
    step: float | None = None
    params: float | None = None
    params_total: float | None = None
    tokens: float | None = None
    flops: float | None = None


def default_checkpoint_name(path: str) -> str:
    parts = Path(path.rstrip("/")).parts
    return "-".join(parts[-2:]) if len(parts) >= 2 and parts[-1].startswith(("step", "checkpoint")) else parts[-1]


def number(entry: dict, key: str, where: str) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TaskFormatError(f"{where}: {key}={value!r} is not a number") from None


def scale_problem(key: str, value: float | None, step: float | None) -> str | None:
    """What is wrong with one scale value ("params must be > 0, got 0"), or None; the rule is
    capscale.ladder.bad_scale (params <= 0, tokens or flops <= 0 after step 0 are impossible)."""
    from capscale.ladder import bad_scale

    if value is None or key not in ("params", "params_total", "tokens", "flops"):
        return None
    column = "params" if key.startswith("params") else key
    if not bad_scale([value], [float("nan") if step is None else step], column)[0]:
        return None
    rule = "must be > 0" if column == "params" else "must be > 0 (0 only at step 0)"
    return f"{key} {rule}, got {value:g}"


def scale_numbers(entry: dict, where: str) -> dict[str, float | None]:
    """step, params, params_total, tokens, flops of one checkpoint entry; an impossible scale is an error."""
    values = {k: number(entry, k, where) for k in ("step", "params", "params_total", "tokens", "flops")}
    for key, value in values.items():
        problem = scale_problem(key, value, values["step"])
        if problem:
            raise TaskFormatError(f"{where}: {problem}")
    return values


def read_yaml(path: Path, what: str):
    """A YAML file's contents; a missing, non-UTF-8 or malformed file is an error naming it."""
    if not path.is_file():
        raise TaskFormatError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise TaskFormatError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from e
    except yaml.YAMLError as e:
        raise TaskFormatError(f"{path}: not valid YAML: {e}") from e


def resolve_relative(base: Path, value: str) -> str:
    """Relative to the spec's folder when that exists; otherwise as given (absolute path or hub id)."""
    candidate = base / value
    return str(candidate) if candidate.exists() else value


def task_specs(data: dict, base: Path, key: str) -> list[str]:
    return [t if str(t).startswith("lm-eval:") else resolve_relative(base, str(t)) for t in data.get(key) or []]


def generative_task_specs(path: str | Path) -> list[str]:
    """The spec's ``generative_tasks`` (sampled by ``capscale sample --ladder``); the spec is validated first."""
    load_ladder_spec(path)
    data = read_yaml(Path(path), "ladder spec")
    return task_specs(data, Path(path).parent, "generative_tasks")


def load_ladder_spec(path: str | Path) -> tuple[list[CheckpointSpec], list[str]]:
    path = Path(path)
    data = read_yaml(path, "ladder spec")
    if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), list) or not data["checkpoints"]:
        raise TaskFormatError(f"{path}: expected a mapping with a non-empty 'checkpoints' list")
    base = path.parent
    family = str(data.get("family", ""))
    tasks = task_specs(data, base, "tasks")
    specs, seen = [], set()
    for n, entry in enumerate(data["checkpoints"], start=1):
        where = f"{path}: checkpoints[{n}]"
        if not isinstance(entry, dict) or "path" not in entry:
            raise TaskFormatError(f"{where}: each checkpoint needs at least a 'path'")
        ck_path = resolve_relative(base, str(entry["path"]))
        name = str(entry.get("checkpoint") or default_checkpoint_name(str(entry["path"])))
        if name in seen:
            raise TaskFormatError(f"{where}: duplicate checkpoint name {name!r}")
        seen.add(name)
        specs.append(
            CheckpointSpec(
                path=ck_path,
                checkpoint=name,
                model=str(entry.get("model") or name),
                family=str(entry.get("family", family)),
                **scale_numbers(entry, where),
            )
        )
    return specs, tasks


META_COLUMNS = ("checkpoint", "family", "model", "path", "step", "params", "params_total", "tokens", "flops")


def load_checkpoint_meta(path: str | Path) -> list[CheckpointSpec]:
    """Scale metadata per checkpoint, for runs scored elsewhere (``ingest-lm-eval --meta``): a ladder
    spec (YAML, as for ladder-eval) or a table (CSV/Parquet) with columns ``checkpoint`` and any of
    family, model, path, step, params, params_total, tokens, flops. Errors name the file and entry."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        return load_ladder_spec(path)[0]
    from capscale.ladder import read_table

    if not path.is_file():
        raise TaskFormatError(f"{path}: checkpoint metadata file not found")
    table = read_table(path, "checkpoint metadata (a ladder spec YAML, or a CSV/Parquet table)")
    if "checkpoint" not in table.columns:
        raise TaskFormatError(f"{path}: needs a 'checkpoint' column (and any of {', '.join(META_COLUMNS[1:])})")
    unknown = [c for c in table.columns if c not in META_COLUMNS]
    if unknown:
        raise TaskFormatError(f"{path}: unknown column(s) {unknown}; expected {', '.join(META_COLUMNS)}")
    line = 2 if table.attrs.get("row_kind") == "line" else 1
    specs, seen = [], set()
    for n, row in enumerate(table.to_dict("records")):
        where = f"{path}: {table.attrs.get('row_kind', 'row')} {n + line}"
        entry = {k: (None if not isinstance(v, str) and v != v else v) for k, v in row.items()}  # NaN -> None
        name = str(entry.get("checkpoint") or "").strip()
        if not name:
            raise TaskFormatError(f"{where}: empty checkpoint name")
        if name in seen:
            raise TaskFormatError(f"{where}: duplicate checkpoint name {name!r}")
        seen.add(name)
        specs.append(CheckpointSpec(path=str(entry.get("path") or ""), checkpoint=name,
                                    model=str(entry.get("model") or name), family=str(entry.get("family") or ""),
                                    **scale_numbers(entry, where)))
    return specs
