"""Which model a run of lm-eval scored, its checkpoint name in the store, and its manifest row."""

from __future__ import annotations

import re
from pathlib import Path

from capscale.errors import StoreError
from capscale.ladderspec import CheckpointSpec
from capscale.store import same_path


def model_args(results: dict) -> dict:
    """lm-eval 0.4.x stores model_args as a dict; older files as 'k=v,k=v'."""
    args = results.get("config", {}).get("model_args") or {}
    if isinstance(args, str):
        parsed = {}
        for part in args.split(","):
            if "=" in part:
                k, v = part.split("=", 1)
                parsed[k.strip()] = v.strip()
        args = parsed
    return args


def model_identity(results: dict) -> tuple[str, str | None]:
    """(pretrained path or hub id, revision or None): what distinguishes one evaluated model."""
    args = model_args(results)
    pretrained = args.get("pretrained") or args.get("model") or results.get("model_name") or ""
    revision = args.get("revision")
    if revision in (None, "", "main"):
        revision = None
    return str(pretrained), (str(revision) if revision is not None else None)


def path_parts(pretrained: str) -> list[str]:
    """The folders of a model path or hub id, root excluded ('/ckpt/runA/step20' -> ckpt, runA, step20)."""
    path = Path(pretrained.rstrip("/"))
    return [part for part in path.parts if part != path.anchor] or [pretrained]


def suffix_name(identity: tuple[str, str | None], depth: int) -> str:
    """The last ``depth`` folders joined by '-'; a revision (e.g. Pythia's step143000) is kept after '@'."""
    pretrained, revision = identity
    name = "-".join(path_parts(pretrained)[-depth:])
    return f"{name}@{revision}" if revision else name


def checkpoint_names(identities, taken: dict[str, str]) -> dict[tuple[str, str | None], str]:
    """A unique checkpoint name per model: the shortest tail of its path that no other model of this
    ingest, and no checkpoint of another path already in the store (``taken``: name -> path), uses.
    A model alone keeps its folder name; runA/step20 and runB/step20 become runA-step20 and runB-step20.
    A model already in the store (same path and revision) keeps its name there, so ingesting its runs
    again, alone or with others, never files them under a second name. Two models whose whole paths
    give one name are an error naming both."""
    known = {}
    for identity in identities:
        same = [name for name, path in taken.items()
                if same_path(path, identity[0]) and (name.rpartition("@")[2] if "@" in name else None) == identity[1]]
        if len(same) == 1:
            known[identity] = same[0]
    rest = [identity for identity in identities if identity not in known]
    depth = {identity: 1 for identity in rest}
    while True:
        names = {identity: suffix_name(identity, depth[identity]) for identity in rest}
        groups: dict[str, list] = {}
        for identity, name in names.items():
            groups.setdefault(name, []).append(identity)
        clashes = [(name, group) for name, group in groups.items()
                   if len(group) > 1 or name in known.values()
                   or (name in taken and not same_path(taken[name], group[0][0]))]
        if not clashes:
            return {**known, **names}
        for name, group in clashes:
            longer = [i for i in group if depth[i] < len(path_parts(i[0]))]
            if not longer:
                others = [i[0] + (f"@{i[1]}" if i[1] else "") for i in group]
                if len(group) == 1:
                    others.append(f"{taken.get(name, name)} (already in the store)")
                raise StoreError(f"models {' and '.join(others)} would both be named {name!r}; name them with "
                                 "--meta (a checkpoint per path) or ingest them into separate stores")
            for identity in longer:
                depth[identity] += 1


def match_meta(identity: tuple[str, str | None], name: str, meta: list[CheckpointSpec]) -> CheckpointSpec | None:
    """The metadata entry of a model: by checkpoint name, else (without a revision) by path."""
    for spec in meta:
        if spec.checkpoint == name:
            return spec
    pretrained, revision = identity
    if revision is None:
        hits = [spec for spec in meta if spec.path and same_path(spec.path, pretrained)]
        if len(hits) == 1:
            return hits[0]
    return None


def non_embedding_params(pretrained: str, reported_total: int | None) -> tuple[int | None, int | None, str | None]:
    """(params, params_total, note). lm-eval reports only the total (embeddings included); the
    ladder's ``params`` is non-embedding, so count it from config.json on the meta device
    (no weights loaded) when the checkpoint directory is here."""
    config_path = Path(pretrained) / "config.json" if pretrained else None
    if config_path is None or not config_path.exists():
        return None, reported_total, (
            f"checkpoint {pretrained!r} is not a local directory: non-embedding params unknown (left NaN)"
        )
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from capscale.models import count_params

        config = AutoConfig.from_pretrained(config_path.parent)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        params, total = count_params(model)
    except Exception as e:  # any failure only costs the parameter count, never the rows
        return None, reported_total, f"cannot count parameters from {config_path}: {e} (params left NaN)"
    if reported_total is not None and total != reported_total:
        return None, reported_total, (
            f"{config_path} describes {total} parameters but lm-eval reported {reported_total}: "
            "not the evaluated model? (params left NaN)"
        )
    return params, total, None


def manifest_record(checkpoint: str, pretrained: str, revision: str | None, results: dict,
                    meta: CheckpointSpec | None) -> tuple[dict, str | None]:
    """The model's manifest row (unknown fields None) and a note on what could not be measured.
    ``meta`` (from --meta) gives family, model and the scale; params are counted only where it has none."""
    given = {k: getattr(meta, k) for k in ("family", "model", "step", "params", "params_total", "tokens", "flops")
             } if meta is not None else {}
    note = None
    if given.get("params") is None:
        reported = results.get("config", {}).get("model_num_parameters")
        reported = int(reported) if isinstance(reported, (int, float)) and reported > 0 else None
        given["params"], counted_total, note = non_embedding_params(pretrained, reported)
        given["params_total"] = given.get("params_total") or counted_total
    if given.get("step") is None and revision and re.fullmatch(r"step(\d+)", revision):
        given["step"] = int(revision[4:])
    if given.get("flops") is None and given.get("params") is not None and given.get("tokens") is not None:
        given["flops"] = 6.0 * given["params"] * given["tokens"]
    record = {"checkpoint": checkpoint, "path": pretrained, **{k: v for k, v in given.items() if v not in ("", None)}}
    return record, note
