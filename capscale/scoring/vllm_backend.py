"""vLLM as the decoder of ``capscale sample --backend vllm`` (optional extra: ``pip install 'capscale[vllm]'``).

The sampling loop (rounds, PassUntil stopping, checking, the store) is the HF backend's; only the
draws change hands. Prompts go to vLLM as token ids (the same ids the HF backend feeds, so no
second tokenization can differ), one request per run of consecutive samples of one item with
``n`` = the run's length, and a per-request seed derived from (seed, item, first sample index).
Completions come back as token ids and are decoded and cut at the stop string by the caller,
exactly as HF completions are.

Reproducibility (see README, "vLLM"): with per-request seeds vLLM's random draws do not depend
on the other requests, but its logits do, slightly, unless the kernels are batch-invariant
(``VLLM_BATCH_INVARIANT=1`` on supported GPUs): continuous batching puts a request into
different batches from run to run, and float reductions then round differently. A draw that
lands near a CDF boundary can therefore pick another token in another run. The samples are also
not the HF backend's samples (another random stream); what is the same is their distribution,
the greedy answers (up to ties at float precision), the rows and the stopping rule.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from capscale.errors import CheckpointError
from capscale.scoring.sampler import Prompt, SampleRun

SEED_BITS = 63


def request_seed(seed: int, key: int, start: int) -> int:
    """A seed per request, a pure function of (run seed, item key, first sample index)."""
    digest = hashlib.sha256(f"{seed}:{key}:{start}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << SEED_BITS) - 1)


def vllm_requests(prompts: list[Prompt], runs: list[SampleRun], *, seed: int, temperature: float,
                  top_p: float) -> list[tuple[list[int], dict, int]]:
    """(prompt token ids, SamplingParams keyword arguments, copies) per run, in run order.

    A greedy run (start -1) or temperature 0 decodes greedily: one completion (n=1, no seed: nothing is
    random), repeated ``copies`` = the run's count times (vLLM refuses n > 1 without sampling in some versions)."""
    requests = []
    for run in runs:
        prompt = prompts[run.item]
        params = {"max_tokens": prompt.max_new_tokens, "stop": list(prompt.stop) or None,
                  "include_stop_str_in_output": True, "skip_special_tokens": True}
        if run.start < 0 or temperature == 0:
            requests.append((list(prompt.ids), params | {"n": 1, "temperature": 0.0}, run.count))
        else:
            params |= {"n": run.count, "temperature": temperature, "top_p": top_p,
                       "seed": request_seed(seed, prompt.key, run.start)}
            requests.append((list(prompt.ids), params, 1))
    return requests


def completion_tokens(token_ids, eos_id: int | None) -> list[int]:
    """A completion's tokens as the HF sampler returns them: an end-of-sequence token is not part of it."""
    ids = list(token_ids)
    if ids and eos_id is not None and ids[-1] == eos_id:
        ids.pop()
    return ids


@dataclass
class VllmCheckpoint:
    """A checkpoint served by a vLLM engine, with what the sampling loop and the manifest read."""

    engine: object  # vllm.LLM
    tokenizer: object
    path: str
    device: str
    dtype: str
    max_length: int
    params: int
    params_total: int

    def generate(self, prompts: list[Prompt], runs: list[SampleRun], *, seed: int, temperature: float,
                 top_p: float) -> list[list[list[int]]]:
        """Token ids of every sample of every run, in run order (the HF sampler's contract)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        requests = vllm_requests(prompts, runs, seed=seed, temperature=temperature, top_p=top_p)
        outputs = self.engine.generate([TokensPrompt(prompt_token_ids=ids) for ids, _, _ in requests],
                                       [SamplingParams(**params) for _, params, _ in requests], use_tqdm=False)
        eos = self.tokenizer.eos_token_id
        return [[completion_tokens(c.token_ids, eos) for c in out.outputs] * copies
                for out, (_, _, copies) in zip(outputs, requests)]


    def close(self) -> None:
        """Shut the engine down so the next checkpoint's engine gets the GPU memory (best effort: the
        engine-core handle is vLLM's V1 layout; older engines are freed by garbage collection)."""
        core = getattr(getattr(self.engine, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.engine = None


def count_params_from_config(path: str) -> tuple[int, int, object]:
    """(non-embedding, total) parameters and the config, from an empty (meta-device) model: no weights read."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from capscale.models import count_params

    config = AutoConfig.from_pretrained(path)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    params, total = count_params(model)
    return params, total, config


def load_vllm_checkpoint(path: str, device: str = "cuda", dtype: str = "bfloat16") -> VllmCheckpoint:
    """Start a vLLM engine on ``path`` (one GPU); errors name the checkpoint and the missing piece."""
    from capscale.models import DTYPES, max_context_length

    try:
        from vllm import LLM
    except ImportError:
        raise CheckpointError("--backend vllm needs vLLM: pip install 'capscale[vllm]' (CUDA GPUs)") from None
    if dtype not in DTYPES:
        raise CheckpointError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not str(device).startswith("cuda") and device != "auto":
        raise CheckpointError(f"--backend vllm runs on a CUDA GPU; got --device {device}")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        params, total, config = count_params_from_config(path)
    except Exception as e:  # transformers raises many types here
        raise CheckpointError(f"{path}: cannot load tokenizer or config: {e}") from e
    max_length = max_context_length(config, tokenizer)
    try:
        engine = LLM(model=path, dtype=dtype, seed=0, enable_prefix_caching=True, max_model_len=max_length)
    except Exception as e:
        raise CheckpointError(f"{path}: vLLM cannot serve this checkpoint: {e}") from e
    return VllmCheckpoint(engine, tokenizer, str(path), "cuda", dtype, max_length, params, total)
