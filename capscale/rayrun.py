"""Run (checkpoint, task) pairs on a Ray cluster: one worker per GPU (or per CPU slot), checkpoints loaded once.

The unit of work is the pair, the unit of scheduling the checkpoint: the driver plans on the
store which pairs are missing (exactly as a serial run would), groups them by checkpoint and
hands each group to an idle worker, which loads that checkpoint once and runs all its pairs
before it gets the next group. Workers write every pair themselves, atomically, into the shared
store (``capscale.store``: many writers are safe), so results never travel through Ray and a
driver that dies loses nothing; OUT must therefore be a folder every node can reach (NFS, Lustre).

Failures, by kind:
- the worker process dies (segfault, OOM kill, a node lost): Ray restarts the worker and runs the
  pair again, up to ``retries`` times (``max_task_retries``); the restarted worker reloads the
  checkpoint. The pair that was in flight had written nothing (pairs are atomic), so nothing is
  lost or duplicated;
- an unexpected exception inside a pair (CUDA error, a file system hiccup): resubmitted up to
  ``retries`` times;
- a ``CapscaleError`` (bad checkpoint, NaN logits, a task that does not fit): deterministic, so not
  retried; the pair is reported failed with the reason, as in a serial run.
Every pair ends in the returned list (done, skipped or failed): the CLI prints the failures, and
rerunning the same command retries exactly those.

Workers must import the same capscale (install it on every node, or pass a ``runtime_env``).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from capscale.errors import CapscaleError
from capscale.store import ResultsStore

LOCAL = "local"  # --ray without an address: join RAY_ADDRESS if set, else start a cluster on this machine


def import_ray():
    try:
        import ray
    except ImportError:
        raise CapscaleError("--ray needs Ray: pip install 'capscale[ray]'") from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    address: str = LOCAL  # "local", "auto" (a running cluster on this node), "HOST:PORT" or "ray://HOST:10001"
    workers: int | None = None  # default: one per GPU, else one per CPU
    retries: int = 2  # per pair, for a dead worker and for an unexpected exception each


# --- jobs: what a worker does with one pair (picklable, shipped to every worker) -------------------

@dataclass(frozen=True)
class EvalJob:
    """Score multiple-choice tasks (``capscale eval`` / ``ladder-eval``)."""

    tasks: tuple
    store_root: str
    device: str = "cpu"
    dtype: str = "float32"
    token_budget: int | None = None
    mode: str = "auto"
    overwrite: bool = False
    repair: bool = False

    def plan(self, store: ResultsStore, spec) -> tuple[list[str], bool]:
        """(task names to run, whether the checkpoint still needs its manifest row)."""
        from capscale.evaluate import is_registered, pending_tasks

        todo = [t.name for t in pending_tasks(store, spec, list(self.tasks), self.dtype, self.overwrite,
                                               self.repair)]
        return todo, not todo and not is_registered(store, spec.checkpoint)

    def load(self, spec, store: ResultsStore, device: str):
        from capscale.evaluate import load_and_register

        return load_and_register(spec, store, device, self.dtype)

    def run(self, loaded, spec, task_name: str, store: ResultsStore):
        from capscale.evaluate import score_task

        task = next(t for t in self.tasks if t.name == task_name)
        return score_task(loaded, spec.checkpoint, task, store, token_budget=self.token_budget, mode=self.mode,
                          progress=False)

    def result(self, spec, task_name: str, status: str, message: str = ""):
        from capscale.evaluate import PairResult

        task = next(t for t in self.tasks if t.name == task_name)
        return PairResult(spec.checkpoint, task_name, status, len(task.items), message=message)


@dataclass(frozen=True)
class SampleJob:
    """PassUntil sampling of generative tasks (``capscale sample``)."""

    tasks: tuple
    store_root: str
    config: object  # capscale.sampling.SamplingConfig
    device: str = "cpu"
    dtype: str = "float32"
    overwrite: bool = False
    repair: bool = False
    backend: str = "hf"

    def plan(self, store: ResultsStore, spec) -> tuple[list[str], bool]:
        from capscale.evaluate import is_registered
        from capscale.sampling import finished_pair_is_usable, sampling_fingerprint

        todo = []
        for task in self.tasks:
            done = (store.has_samples(spec.checkpoint, task.name) and not self.overwrite
                    and finished_pair_is_usable(store, spec.checkpoint, task,
                                                sampling_fingerprint(task, self.config, self.dtype), self.repair))
            if not done:
                todo.append(task.name)
        return todo, not todo and not is_registered(store, spec.checkpoint)

    def load(self, spec, store: ResultsStore, device: str):
        from capscale.sampling import load_for_sampling

        return load_for_sampling(spec, store, device, self.dtype, self.backend)

    def run(self, loaded, spec, task_name: str, store: ResultsStore):
        from capscale.sampling import sample_pair

        task = next(t for t in self.tasks if t.name == task_name)
        return sample_pair(loaded, spec.checkpoint, task, store, self.config, overwrite=self.overwrite,
                           repair=self.repair, progress=False)

    def result(self, spec, task_name: str, status: str, message: str = ""):
        from capscale.sampling import SamplePairResult

        task = next(t for t in self.tasks if t.name == task_name)
        return SamplePairResult(spec.checkpoint, task_name, status, len(task.items), message=message)


# --- the worker --------------------------------------------------------------------------------------

class PairWorker:
    """A Ray actor that keeps one checkpoint loaded and runs the pairs it is sent, in order."""

    def __init__(self, job, device: str, threads: int | None):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the driver's bar over pairs is the progress report
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.job, self.device = job, device
        self.store = ResultsStore(job.store_root)
        self.current: str | None = None
        self.loaded = None
        self.load_error: str | None = None

    def checkpoint(self, spec):
        """The loaded checkpoint of ``spec`` (loading it, and dropping the previous one, on first use)."""
        if self.current != spec.checkpoint:
            if self.loaded is not None:
                from capscale.sampling import release

                release(self.loaded)
            self.loaded, self.load_error = None, None
            gc.collect()
            self.current = spec.checkpoint
            try:
                self.loaded = self.job.load(spec, self.store, self.device)
            except CapscaleError as e:
                self.load_error = str(e)
        return self.loaded

    def run(self, spec, task_name: str | None):
        """One pair's result; ``task_name`` None only registers the checkpoint (returns the error or None)."""
        loaded = self.checkpoint(spec)
        if task_name is None:
            return self.load_error
        if self.load_error is not None:
            return self.job.result(spec, task_name, "failed", self.load_error)
        try:
            return self.job.run(loaded, spec, task_name, self.store)
        except CapscaleError as e:
            return self.job.result(spec, task_name, "failed", str(e))


# --- the driver --------------------------------------------------------------------------------------

def check_device(device: str) -> None:
    """Only the spelling is checked here: the driver may have no GPU while the workers do."""
    from capscale.models import DEVICE_PATTERN

    if not DEVICE_PATTERN.fullmatch(device or ""):
        raise CapscaleError(f"--device must be cpu, cuda, cuda:N, mps or auto; got {device!r}")
    if device.startswith("cuda:"):
        raise CapscaleError(f"--device {device} with --ray: use --device cuda (each worker gets its own GPU)")


@dataclass
class Placement:
    """Where workers run: their device, the Ray resources each one reserves, how many there are."""

    device: str
    resources: dict
    workers: int
    threads: int | None = None


def placement(cluster: dict, device: str, wanted: int | None, n_groups: int) -> Placement:
    """One worker per GPU when the device is (or auto-resolves to) cuda, else CPU workers sharing the
    cluster's CPUs (torch threads = CPUs per worker); never more workers than checkpoint groups."""
    gpus, cpus = int(cluster.get("GPU", 0)), max(1, int(cluster.get("CPU", 1)))
    use_gpu = device.startswith("cuda") or (device == "auto" and gpus > 0)
    if use_gpu and gpus == 0:
        raise CapscaleError(f"--device {device} with --ray: the Ray cluster has no GPU (resources: {cluster})")
    if wanted is not None and wanted < 1:
        raise CapscaleError(f"--ray-workers must be >= 1, got {wanted}")
    if use_gpu:
        workers = min(wanted or gpus, max(1, n_groups))
        return Placement("cuda", {"num_gpus": 1, "num_cpus": 1}, workers)
    workers = min(wanted or cpus, max(1, n_groups))
    threads = max(1, cpus // workers)
    return Placement("cpu" if device == "auto" else device, {"num_cpus": min(threads, cpus)}, workers, threads)


def connect(ray, address: str) -> bool:
    """Join (or start) the cluster; True when this call started Ray and should shut it down."""
    if ray.is_initialized():
        return False
    ray.init(address=None if address == LOCAL else address, include_dashboard=False,
             logging_level="WARNING", log_to_driver=True)
    return True


def absolute(spec):
    """Checkpoint paths as absolute paths, so workers on other nodes (other working directories) find them."""
    return replace(spec, path=str(Path(spec.path).resolve())) if Path(spec.path).exists() else spec


@dataclass
class Dispatch:
    """Book-keeping of the driver: pairs in flight per worker and attempts per pair."""

    actors: list
    queue: list
    inflight: dict = field(default_factory=dict)  # ref -> (actor, spec, task name)
    left: dict = field(default_factory=dict)  # actor index -> pairs in flight
    attempts: dict = field(default_factory=dict)  # (checkpoint, task) -> attempts so far

    def submit(self, k: int, spec, name: str | None) -> None:
        ref = self.actors[k].run.remote(spec, name)
        self.inflight[ref] = (k, spec, name)
        self.left[k] = self.left.get(k, 0) + 1
        key = (spec.checkpoint, name)
        self.attempts[key] = self.attempts.get(key, 0) + 1

    def feed_idle(self) -> None:
        """Give every idle worker the next checkpoint group (all its pairs at once: run in order)."""
        for k in range(len(self.actors)):
            if self.left.get(k, 0) == 0 and self.queue:
                spec, names = self.queue.pop(0)
                for name in names or [None]:
                    self.submit(k, spec, name)


def run_pairs(job, specs: list, options: RayOptions, progress: bool = True) -> list:
    """Run every pending pair of ``specs`` x ``job.tasks`` on Ray; one result per pair, in spec order."""
    ray = import_ray()
    check_device(job.device)
    job = replace(job, store_root=str(Path(job.store_root).resolve()))
    store = ResultsStore(job.store_root)
    store.create()
    store.remove_stale_temporaries()
    specs = [absolute(s) for s in specs]
    results: dict[tuple[str, str], object] = {}
    queue = []
    for spec in specs:
        todo, register = job.plan(store, spec)
        for task in job.tasks:
            if task.name not in todo:
                results[(spec.checkpoint, task.name)] = job.result(spec, task.name, "skipped")
        if todo or register:
            queue.append((spec, todo))
    started = connect(ray, options.address) if queue else False
    total = len(specs) * len(job.tasks)
    bar = tqdm(total=total, initial=len(results), desc="pairs", unit="pair", disable=not progress)
    try:
        if queue:
            run_queue(ray, job, queue, options, results, bar)
    finally:
        bar.close()
        if started:
            ray.shutdown()
    return [results[(s.checkpoint, t.name)] for s in specs for t in job.tasks]


def run_queue(ray, job, queue: list, options: RayOptions, results: dict, bar) -> None:
    from ray.exceptions import RayActorError, RayTaskError

    where = placement(ray.cluster_resources(), job.device, options.workers, len(queue))
    worker = ray.remote(PairWorker).options(max_restarts=-1, max_task_retries=options.retries, **where.resources)
    actors = [worker.remote(job, where.device, where.threads) for _ in range(where.workers)]
    state = Dispatch(actors, list(queue))
    try:
        state.feed_idle()
        while state.inflight:
            ready, _ = ray.wait(list(state.inflight), num_returns=1)
            for ref in ready:
                k, spec, name = state.inflight.pop(ref)
                state.left[k] -= 1
                outcome = collect(ray, ref, RayActorError, RayTaskError)
                if isinstance(outcome, Retry) and state.attempts[(spec.checkpoint, name)] <= options.retries:
                    state.submit(k, spec, name)
                    continue
                record(job, spec, name, outcome, results, bar)
            state.feed_idle()
    finally:
        for actor in actors:
            ray.kill(actor)


@dataclass
class Retry:
    message: str


@dataclass
class Died:
    message: str


def collect(ray, ref, actor_error, task_error):
    """The pair's result, a Retry (an exception worth another attempt) or Died (retries used up)."""
    try:
        return ray.get(ref)
    except actor_error as e:  # the worker died more often than max_task_retries allowed
        return Died(f"worker died: {str(e).splitlines()[0]}")
    except task_error as e:
        return Retry(f"{type(e.cause).__name__ if e.cause else 'error'}: {str(e.cause or e).splitlines()[0]}")


def record(job, spec, name: str | None, outcome, results: dict, bar) -> None:
    """Store the final outcome of one submitted call (a pair, or the registration of a checkpoint)."""
    failure = outcome.message if isinstance(outcome, (Retry, Died)) else None
    if name is None:  # registration only: its pairs were skipped; they fail if the checkpoint cannot register
        error = failure or outcome
        if error:
            for task in job.tasks:
                results[(spec.checkpoint, task.name)] = job.result(
                    spec, task.name, "failed", f"no row in checkpoints.csv and cannot register it: {error}")
        return
    results[(spec.checkpoint, name)] = job.result(spec, name, "failed", failure) if failure else outcome
    bar.set_postfix_str(f"{spec.checkpoint} / {name}")
    bar.update(1)

