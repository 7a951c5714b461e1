"""Load a causal LM checkpoint (local HF directory or hub id) with its tokenizer.

Also measures what a ladder needs from a checkpoint: non-embedding parameter count
(Kaplan et al. 2020 convention: exclude token and position embeddings and an untied
output projection) and the context window.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from capscale.errors import CheckpointError

DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when neither config nor tokenizer says


@dataclass
class LoadedCheckpoint:
    model: object
    tokenizer: object
    path: str
    device: str
    dtype: str
    max_length: int
    params: int  # non-embedding
    params_total: int


DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?|mps|auto")


def resolve_device(device: str | None) -> str:
    """The torch device to use: cpu, cuda, cuda:N, mps, or auto (cuda when there is one); anything
    else, or a device this machine lacks, is an error naming the option."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise CheckpointError(f"--device must be cpu, cuda, cuda:N, mps or auto; got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CheckpointError(f"--device {device} requested but CUDA is not available on this machine")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise CheckpointError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise CheckpointError("--device mps requested but MPS is not available on this machine")
    return device


def max_context_length(config, tokenizer) -> int:
    """Same order as lm-eval: config n_positions / max_position_embeddings / n_ctx, then tokenizer."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value:
            return int(value)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if tok_max and tok_max < 10**12:
        return int(tok_max)
    return DEFAULT_MAX_LENGTH


def count_params(model) -> tuple[int, int]:
    """(non-embedding, total) parameters, counting tied weights once."""
    import torch.nn as nn

    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    embedding_ids = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            embedding_ids.add(id(module.weight))
    out = model.get_output_embeddings()
    if out is not None and getattr(out, "weight", None) is not None:
        embedding_ids.add(id(out.weight))
    embed = sum(unique[i].numel() for i in embedding_ids if i in unique)
    return total - embed, total


def has_tokenizer_files(path: Path) -> bool:
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")
    return any((path / n).exists() for n in names)


def load_checkpoint(path: str, device: str | None = "cpu", dtype: str = "float32",
                    attn_implementation: str | None = None) -> LoadedCheckpoint:
    """Load model + tokenizer in eval mode; errors name the directory and what is missing.
    ``attn_implementation`` (sdpa, eager, ...) overrides transformers' choice (benchmarks compare them)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise CheckpointError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    local = Path(path)
    if local.exists():
        if not (local / "config.json").exists():
            raise CheckpointError(f"{path}: not a Hugging Face checkpoint (no config.json)")
        if not has_tokenizer_files(local):
            raise CheckpointError(
                f"{path}: checkpoint directory has no tokenizer files "
                "(tokenizer.json / tokenizer_config.json); save the tokenizer with the model"
            )
    device = resolve_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # transformers raises many types here
        raise CheckpointError(f"{path}: cannot load tokenizer: {e}") from e
    try:
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), **extra)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot load model: {e}") from e
    model.to(device)
    model.eval()
    params, params_total = count_params(model)
    return LoadedCheckpoint(
        model=model,
        tokenizer=tokenizer,
        path=str(path),
        device=device,
        dtype=dtype,
        max_length=max_context_length(model.config, tokenizer),
        params=params,
        params_total=params_total,
    )
