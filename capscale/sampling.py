"""PassUntil sampling of generative tasks into the results store, resumable at round granularity.

Per item the sampler draws samples 0, 1, 2, ... until ``until`` (K) of them are correct or
``max_samples`` (B) were drawn. Samples are drawn in rounds planned by
:func:`capscale.scoring.allocation.plan_round` — items that reached K stop, the budget goes to
the rest, larger chunks to items that look hard — but the record of an item depends only on its
own sample sequence: samples drawn past its K-th success are discarded. With the counter-based
sampler (:mod:`capscale.scoring.sampler`) that makes the counts identical for any batch size,
round size, or number of interruptions.

After a round, at most every ``save_every_s`` seconds, the state (counts and distinct completions per
item) is written atomically to ``OUT/progress/``; a killed run resumes from the last saved round and
loses at most that much work.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from capscale.errors import CapscaleError, StoreError
from capscale.scoring.allocation import plan_round
from capscale.scoring.checkers import Checker, truncate_at_stop
from capscale.scoring.estimators import pass_until_estimate
from capscale.scoring.sandbox import require_kernel_isolation
from capscale.scoring.sampler import Prompt, SampleRun, generate, item_key
from capscale.store import ResultsStore, atomic_write_bytes, corrupt_message
from capscale.tasks.generative import GenTask

STATE_VERSION = 1
# progress is saved after a round at most this often: the work a kill can lose (env override for tests)
SAVE_EVERY_S = float(os.environ.get("CAPSCALE_SAVE_EVERY_S", "10"))


@dataclass(frozen=True)
class SamplingConfig:
    until: int = 4
    max_samples: int = 1000
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch: int = 256  # sequences decoded in parallel
    round_size: int | None = None  # samples planned per round (default 8 x batch)
    exact: bool = False  # also compute the exact pass probability of exact-match items
    unsafe_exec: bool = False  # run python checks even where there is no kernel isolation (not a number setting)

    def validate(self) -> None:
        if self.until < 1:
            raise CapscaleError(f"--until must be >= 1, got {self.until}")
        if self.max_samples < 0:
            raise CapscaleError(f"--max-samples must be >= 0, got {self.max_samples}")
        if self.temperature < 0:
            raise CapscaleError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise CapscaleError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.batch < 1:
            raise CapscaleError(f"--batch must be >= 1, got {self.batch}")

    def fingerprint_fields(self) -> dict:
        """What changes the numbers (batch and round size do not)."""
        return {k: getattr(self, k) for k in ("until", "max_samples", "temperature", "top_p", "seed")}


def sampling_fingerprint(task: GenTask, config: SamplingConfig, dtype: str) -> str:
    h = hashlib.sha256()
    for it in task.items:
        h.update(json.dumps([it.id, it.prompt, it.answer, it.check, list(it.stop), it.max_new_tokens,
                             it.tests, it.include_prompt]).encode())
    h.update(json.dumps([config.fingerprint_fields(), dtype], sort_keys=True).encode())
    return h.hexdigest()[:16]


@dataclass
class PairState:
    """Everything a resumed run needs; JSON-serialisable."""

    fingerprint: str
    n_drawn: list[int]
    n_correct: list[int]
    completions: list[dict[str, list]]  # per item: text -> [count, correct]
    greedy_text: list[str | None]
    greedy_correct: list[bool | None]
    exact_p: list[float | None]
    seconds: float = 0.0
    tokens_generated: int = 0
    samples_generated: int = 0  # including the ones discarded past the K-th success
    version: int = STATE_VERSION

    @classmethod
    def fresh(cls, fingerprint: str, n: int) -> "PairState":
        return cls(fingerprint, [0] * n, [0] * n, [{} for _ in range(n)], [None] * n, [None] * n, [None] * n)


def load_state(path, fingerprint: str, n_items: int, discard_unreadable: bool = False) -> PairState | None:
    """The saved state of a pair in flight, None when there is none (or, with ``discard_unreadable``,
    when it cannot be read: the pair then starts again)."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        state = PairState(**data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as e:
        if discard_unreadable:
            return None
        raise StoreError(f"{path}: unreadable sampling progress ({e}); rerun with --repair (or delete it) to "
                         "start the pair again") from e
    if state.fingerprint != fingerprint or len(state.n_drawn) != n_items or state.version != STATE_VERSION:
        raise StoreError(
            f"{path}: a sampling run with other settings or items is in progress for this pair; "
            "rerun with the same settings to resume, or pass --overwrite to start again"
        )
    return state


def encode_prompts(tokenizer, task: GenTask, max_length: int) -> tuple[list[Prompt], list[bool]]:
    """Prompt tokens as the model sees them (left-truncated so prompt + generation fit the window)."""
    from capscale.scoring.encoding import prefix_token_id

    prompts, truncated = [], []
    for it in task.items:
        ids = tokenizer.encode(it.prompt, add_special_tokens=False) or [prefix_token_id(tokenizer)]
        keep = max_length - it.max_new_tokens
        if keep < 1:
            raise CapscaleError(f"item {it.id!r}: max_new_tokens={it.max_new_tokens} leaves no room for the prompt "
                                f"in the model's window of {max_length} tokens")
        truncated.append(len(ids) > keep)
        prompts.append(Prompt(tuple(ids[-keep:]), item_key(it.id), it.max_new_tokens, tuple(it.stop)))
    return prompts, truncated


def split_runs(runs: list[SampleRun], batch: int) -> list[list[SampleRun]]:
    """Pack runs into batches of at most ``batch`` sequences, splitting long runs."""
    batches, current, room = [], [], batch
    for run in runs:
        start, left = run.start, run.count
        while left:
            take = min(left, room)
            current.append(SampleRun(run.item, start, take))
            start, left, room = (start + take if start >= 0 else start), left - take, room - take
            if room == 0:
                batches.append(current)
                current, room = [], batch
    if current:
        batches.append(current)
    return batches


def generator_for(loaded):
    """The decoder of a loaded checkpoint: capscale's counter-based sampler over an HF model, or the
    engine's own ``generate`` (same signature) for a vLLM checkpoint (capscale.scoring.vllm_backend)."""
    own = getattr(loaded, "generate", None)
    if own is not None:
        return own

    def hf(prompts, runs, *, seed, temperature, top_p):
        return generate(loaded.model, loaded.tokenizer, prompts, runs, seed=seed, temperature=temperature,
                        top_p=top_p, device=loaded.device)

    return hf


BACKENDS = ("hf", "vllm")


def release(loaded) -> None:
    """Free a checkpoint's device memory before the next one loads (a vLLM engine holds most of the GPU)."""
    close = getattr(loaded, "close", None)
    if close is not None:
        close()
    import gc

    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_for_sampling(spec, store: ResultsStore, device: str, dtype: str, backend: str = "hf"):
    """Load a checkpoint for the chosen backend and record it in the manifest."""
    if backend == "vllm":
        from capscale.evaluate import manifest_record
        from capscale.scoring.vllm_backend import load_vllm_checkpoint

        loaded = load_vllm_checkpoint(spec.path, device=device, dtype=dtype)
        store.upsert_checkpoint(manifest_record(spec, loaded))
        return loaded
    if backend != "hf":
        raise CapscaleError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    from capscale.evaluate import load_and_register

    return load_and_register(spec, store, device, dtype)


@dataclass
class SamplingRun:
    """One model's sampling of one task; call :meth:`run` to fill ``state``."""

    loaded: object  # capscale.models.LoadedCheckpoint
    task: GenTask
    config: SamplingConfig
    state: PairState
    save: object = None  # callable(state), after a round at most every save_every_s seconds, and at the end
    progress: bool = True
    save_every_s: float | None = None  # default SAVE_EVERY_S
    prompts: list[Prompt] = field(init=False)
    truncated: list[bool] = field(init=False)
    checkers: list[Checker] = field(init=False)

    def __post_init__(self):
        self.last_save = time.perf_counter()
        self.prompts, self.truncated = encode_prompts(self.loaded.tokenizer, self.task, self.loaded.max_length)
        self.checkers = [Checker(it, unsafe_exec=self.config.unsafe_exec) for it in self.task.items]

    def decode(self, item: int, token_ids: list[int]) -> str:
        text = self.loaded.tokenizer.decode(token_ids, skip_special_tokens=True)
        return truncate_at_stop(text, tuple(self.task.items[item].stop))

    def draw(self, runs: list[SampleRun], temperature: float) -> dict[int, list[str]]:
        """Texts of the samples of ``runs`` per item, in sample-index order."""
        texts: dict[int, list[str]] = {}
        backend = generator_for(self.loaded)
        for batch in split_runs(runs, self.config.batch):
            outs = backend(self.prompts, batch, seed=self.config.seed, temperature=temperature,
                           top_p=self.config.top_p)
            for run, seqs in zip(batch, outs):
                self.state.tokens_generated += sum(len(s) for s in seqs)
                texts.setdefault(run.item, []).extend(self.decode(run.item, s) for s in seqs)
        return texts

    def verdicts(self, item: int, texts: list[str]) -> dict[str, bool]:
        """Correctness per distinct text; texts seen before are not checked again."""
        known = self.state.completions[item]
        new = sorted({t for t in texts if t not in known})
        found = {t: bool(v) for t, v in zip(new, self.checkers[item].check_many(new))} if new else {}
        return {t: (known[t][1] if t in known else found[t]) for t in set(texts)}

    def run_greedy(self) -> None:
        todo = [i for i, g in enumerate(self.state.greedy_correct) if g is None]
        if not todo:
            return
        texts = self.draw([SampleRun(i, -1, 1) for i in todo], temperature=0.0)
        for i in todo:
            text = texts[i][0]
            self.state.greedy_text[i] = text
            self.state.greedy_correct[i] = bool(self.checkers[i].check_many([text])[0])
        self.save_state()

    def run_exact(self) -> None:
        if all(p is not None for p in self.state.exact_p):
            return
        from capscale.scoring.exact import exact_pass_probability

        values = exact_pass_probability(self.loaded.model, self.loaded.tokenizer, self.task.items,
                                        [p.ids for p in self.prompts], device=self.loaded.device)
        self.state.exact_p = [None if np.isnan(v) else float(v) for v in values]
        self.save_state()

    def absorb(self, item: int, texts: list[str]) -> None:
        """Add an item's new samples in index order, stopping at the K-th success."""
        verdict = self.verdicts(item, texts)
        seen = self.state.completions[item]
        for text in texts:
            if self.state.n_correct[item] >= self.config.until:
                break
            ok = verdict[text]
            entry = seen.setdefault(text, [0, ok])
            entry[0] += 1
            self.state.n_drawn[item] += 1
            self.state.n_correct[item] += int(ok)

    def run_sampling(self) -> None:
        cfg = self.config
        round_size = cfg.round_size or 8 * cfg.batch
        n_items = len(self.task.items)
        done = lambda: sum(1 for i in range(n_items) if self.item_finished(i))  # noqa: E731
        with tqdm(total=n_items, initial=done(), unit="item", desc=f"sampling {self.task.name}",
                  disable=not self.progress, leave=False) as bar:
            while True:
                alloc = plan_round(np.array(self.state.n_drawn), np.array(self.state.n_correct), cfg.until,
                                   cfg.max_samples, round_size)
                runs = [SampleRun(i, self.state.n_drawn[i], int(k)) for i, k in enumerate(alloc) if k > 0]
                if not runs:
                    break
                t0 = time.perf_counter()
                before = done()
                texts = self.draw(runs, temperature=cfg.temperature)
                for run in runs:
                    self.absorb(run.item, texts[run.item])
                self.state.samples_generated += sum(r.count for r in runs)
                self.state.seconds += time.perf_counter() - t0
                every = SAVE_EVERY_S if self.save_every_s is None else self.save_every_s
                if time.perf_counter() - self.last_save >= every:
                    self.save_state()
                bar.update(done() - before)
                bar.set_postfix(samples=sum(self.state.n_drawn), refresh=False)

    def item_finished(self, i: int) -> bool:
        return self.state.n_correct[i] >= self.config.until or self.state.n_drawn[i] >= self.config.max_samples

    def save_state(self) -> None:
        self.last_save = time.perf_counter()
        if self.save is not None:
            self.save(self.state)

    def run(self) -> PairState:
        t0 = time.perf_counter()
        self.run_greedy()
        if self.config.exact:
            self.run_exact()
        self.state.seconds += time.perf_counter() - t0
        self.run_sampling()
        self.save_state()
        return self.state


def sample_rows(checkpoint: str, task: GenTask, config: SamplingConfig, state: PairState,
                truncated: list[bool]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-item rows in SAMPLE_SCHEMA, per-completion rows in COMPLETION_SCHEMA)."""
    reason = [
        "none" if config.max_samples == 0 else ("until" if c >= config.until else "budget")
        for c in state.n_correct
    ]
    rows = pd.DataFrame({
        "checkpoint": checkpoint, "task": task.name, "item": [it.id for it in task.items],
        "n_drawn": state.n_drawn, "n_correct": state.n_correct, "stop_reason": reason, "seed": config.seed,
        "until": config.until, "max_samples": config.max_samples, "temperature": config.temperature,
        "top_p": config.top_p, "greedy_correct": [bool(g) for g in state.greedy_correct],
        "greedy_text": state.greedy_text,
        "exact_p": [np.nan if p is None else p for p in state.exact_p],
        "n_distinct": [len(c) for c in state.completions], "prompt_truncated": truncated,
    })
    completions = pd.DataFrame(
        [(checkpoint, task.name, it.id, text, count, bool(ok))
         for it, comp in zip(task.items, state.completions) for text, (count, ok) in sorted(comp.items())],
        columns=["checkpoint", "task", "item", "text", "count", "correct"],
    )
    return rows, completions


@dataclass
class SamplePairResult:
    checkpoint: str
    task: str
    status: str  # done, skipped, resumed, failed
    n_items: int = 0
    greedy_acc: float = float("nan")
    pass_until: float = float("nan")
    exact_p: float = float("nan")
    samples: int = 0
    seconds: float = 0.0
    samples_per_s: float = 0.0
    message: str = ""


def finished_pair_is_usable(store: ResultsStore, checkpoint: str, task: GenTask, fingerprint: str,
                            repair: bool) -> bool:
    """A stored pair that can be skipped: readable and made with these settings. An unreadable one is an
    error unless ``repair`` (then it is redone); other settings are an error (``--overwrite`` replaces)."""
    broken = store.broken_file(store.sample_files(checkpoint, task.name), full=repair)
    if broken is not None:
        if repair:
            return False
        raise StoreError(corrupt_message(*broken))
    info = store.sample_run_info(checkpoint, task.name) or {}
    if info.get("fingerprint") != fingerprint:
        raise StoreError(
            f"{store.samples_path(checkpoint, task.name)}: stored samples were drawn with other settings or "
            "items; pass --overwrite to replace them"
        )
    return True


def sample_pair(loaded, checkpoint: str, task: GenTask, store: ResultsStore, config: SamplingConfig, *,
                overwrite: bool = False, repair: bool = False, progress: bool = True) -> SamplePairResult:
    """Sample one (checkpoint, task) pair into the store; skip it when already done with the same settings.
    With ``repair`` an unreadable stored pair, or unreadable progress, is sampled again from the start."""
    fingerprint = sampling_fingerprint(task, config, loaded.dtype)
    if (store.has_samples(checkpoint, task.name) and not overwrite
            and finished_pair_is_usable(store, checkpoint, task, fingerprint, repair)):
        return SamplePairResult(checkpoint, task.name, "skipped", len(task.items))
    progress_path = store.progress_path(checkpoint, task.name)
    if overwrite:
        progress_path.unlink(missing_ok=True)
    state = load_state(progress_path, fingerprint, len(task.items), discard_unreadable=repair)
    status = "resumed" if state is not None else "done"
    state = state or PairState.fresh(fingerprint, len(task.items))

    def save(s: PairState) -> None:
        atomic_write_bytes(progress_path, json.dumps(asdict(s)).encode())

    runner = SamplingRun(loaded, task, config, state, save=save, progress=progress)
    state = runner.run()
    rows, completions = sample_rows(checkpoint, task, config, state, runner.truncated)
    info = {
        "fingerprint": fingerprint, "config": asdict(config), "dtype": loaded.dtype, "device": loaded.device,
        "seconds": state.seconds, "tokens_generated": state.tokens_generated,
        "samples_kept": int(sum(state.n_drawn)), "samples_generated": state.samples_generated,
        "prompt_truncated_items": int(sum(runner.truncated)), "model_path": loaded.path,
    }
    store.write_samples(checkpoint, task.name, rows, completions, info)
    estimate = pass_until_estimate(rows["n_drawn"].to_numpy(), rows["n_correct"].to_numpy(), config.until)
    return SamplePairResult(
        checkpoint, task.name, status, len(task.items), float(rows["greedy_correct"].mean()),
        float(np.mean(estimate)) if config.max_samples else float("nan"), float(rows["exact_p"].mean()),
        state.samples_generated, state.seconds,
        state.samples_generated / state.seconds if state.seconds > 0 else float("nan"),
    )


def check_backend(config: SamplingConfig, backend: str) -> None:
    """Settings that a backend cannot honour are errors before any model loads."""
    config.validate()
    if backend not in BACKENDS:
        raise CapscaleError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "vllm" and config.exact:
        raise CapscaleError("--exact needs the HF backend (one forward pass of the HF model); drop --exact or "
                            "use --backend hf")


def sample_checkpoints(specs, tasks: list[GenTask], store: ResultsStore, config: SamplingConfig, *,
                       device: str = "cpu", dtype: str = "float32", overwrite: bool = False,
                       repair: bool = False, progress: bool = True,
                       keep_going: bool = True, backend: str = "hf") -> list[SamplePairResult]:
    """Sample every (checkpoint, task) pair; a finished pair is skipped, one in flight resumes."""
    check_backend(config, backend)
    if any(it.check == "python" for task in tasks for it in task.items):
        require_kernel_isolation(config.unsafe_exec)  # before any model is loaded
    store.create()
    store.remove_stale_temporaries()
    results: list[SamplePairResult] = []
    outer = tqdm(total=len(specs) * len(tasks), desc="pairs", unit="pair", disable=not progress)
    for spec in specs:
        try:
            loaded = load_for_sampling(spec, store, device, dtype, backend)
        except CapscaleError as e:
            if not keep_going:
                raise
            results += [SamplePairResult(spec.checkpoint, t.name, "failed", message=str(e)) for t in tasks]
            outer.update(len(tasks))
            continue
        for task in tasks:
            outer.set_postfix_str(f"{spec.checkpoint} / {task.name}")
            try:
                results.append(sample_pair(loaded, spec.checkpoint, task, store, config, overwrite=overwrite,
                                           repair=repair, progress=progress))
            except CapscaleError as e:
                if not keep_going or isinstance(e, StoreError):
                    raise
                results.append(SamplePairResult(spec.checkpoint, task.name, "failed", message=str(e)))
            outer.update(1)
        release(loaded)
    outer.close()
    return results
