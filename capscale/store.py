"""The results store: per-choice rows as a Parquet dataset, a checkpoint manifest, run notes.

Layout under OUT:
  checkpoints.csv                   one row per checkpoint (docs/design.md manifest + model, params_total)
  choices/<checkpoint>--<task>.parquet   per-choice rows of one (checkpoint, task) pair
  runs/<checkpoint>--<task>.json    what the run counted (truncations, mode, timing) and its fingerprint
  samples/<checkpoint>--<task>.parquet      per-item sampling counts of a generative task (SAMPLE_SCHEMA)
  completions/<checkpoint>--<task>.parquet  every distinct completion of every item with its count and verdict
  runs/samples--<checkpoint>--<task>.json   the sampling run's settings, timing and fingerprint
  progress/<checkpoint>--<task>.json        state of a sampling run in flight (removed when the pair is done)

A pair's Parquet file is written to a hidden temporary name and renamed into place, so a
pair is either completely present or absent: a killed run loses at most the pair in
flight and never leaves a partial file that ``pandas.read_parquet(OUT/choices)`` would read
(pyarrow skips names starting with '.').

Many writers, one store (several ``eval`` / ``sample`` / ``ladder-eval`` / ``ingest-lm-eval`` jobs
into the same OUT, e.g. one per GPU):
- pair files have one name per (checkpoint, task) and are replaced atomically, so writers of
  different pairs never touch each other's files, and two writers of the same pair leave one
  complete copy (the same numbers: scoring and sampling are deterministic);
- the manifest is the one file every writer updates. It stays a single CSV that users and other
  tools read directly, so its read-modify-write runs under an exclusive ``fcntl.flock`` on
  ``OUT/.checkpoints.csv.lock`` and ends in an atomic rename: no update is lost, and readers
  (who take no lock) see the old or the new file, never half of one. Per-checkpoint manifest
  files merged on read would also be lossless, but would change a layout that readers outside
  capscale rely on. flock works between processes of one machine and, on Linux NFS clients,
  between machines (it is mapped onto POSIX byte-range locks);
- a temporary is held under an flock by its writer until it is renamed into place; the cleanup
  of temporaries left by killed runs removes only those nobody holds, so it never deletes a
  live writer's file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from capscale.errors import StoreError

CHOICE_SCHEMA = pa.schema(
    [
        ("checkpoint", pa.string()),
        ("task", pa.string()),
        ("item", pa.string()),
        ("choice", pa.int32()),
        ("gold", pa.bool_()),
        ("logprob", pa.float64()),
        ("n_tokens", pa.int32()),
        ("n_chars", pa.int32()),
        ("n_bytes", pa.int32()),
        ("greedy", pa.bool_()),
    ]
)
CHOICE_COLUMNS = CHOICE_SCHEMA.names

# docs/design.md per-sample rows (checkpoint, task, item, n_drawn, n_correct, stop_reason, seed) plus what a
# reader needs to interpret them without the run note: the stopping rule, sampling settings, the greedy
# answer and the exact pass probability (NaN unless computed).
SAMPLE_SCHEMA = pa.schema(
    [
        ("checkpoint", pa.string()),
        ("task", pa.string()),
        ("item", pa.string()),
        ("n_drawn", pa.int64()),
        ("n_correct", pa.int64()),
        ("stop_reason", pa.string()),  # "until": reached K successes; "budget": max_samples drawn; "none": no sampling
        ("seed", pa.int64()),
        ("until", pa.int64()),
        ("max_samples", pa.int64()),
        ("temperature", pa.float64()),
        ("top_p", pa.float64()),
        ("greedy_correct", pa.bool_()),
        ("greedy_text", pa.string()),
        ("exact_p", pa.float64()),
        ("n_distinct", pa.int64()),
        ("prompt_truncated", pa.bool_()),
    ]
)
SAMPLE_COLUMNS = SAMPLE_SCHEMA.names
COMPLETION_SCHEMA = pa.schema(
    [
        ("checkpoint", pa.string()),
        ("task", pa.string()),
        ("item", pa.string()),
        ("text", pa.string()),  # cut at the first stop string
        ("count", pa.int64()),
        ("correct", pa.bool_()),
    ]
)
COMPLETION_COLUMNS = COMPLETION_SCHEMA.names
MANIFEST_COLUMNS = ["checkpoint", "family", "params", "tokens", "flops", "step", "path", "model", "params_total"]


LOCK_NAME = ".checkpoints.csv.lock"
TEMP_SUFFIX = ".tmp"


def safe_name(name: str) -> str:
    """File-system-safe and collision-free: readable part plus a short hash when characters were replaced."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "x"
    if clean != name:
        clean += "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return clean


@contextmanager
def exclusive_lock(path: Path):
    """Hold an exclusive flock on ``path`` (created if missing) for the block; the kernel releases it
    if the process dies, so a killed writer never leaves the store locked."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def open_temporary(path: Path) -> tuple[int, Path]:
    """A new hidden temporary beside ``path``, locked by this writer (see :func:`remove_if_abandoned`).

    Created with mode 0o666 and the process umask applied by the kernel, as a file written in place
    would be (results are meant to be shared; mkstemp would make them private)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(tmp)):
                return fd, tmp
        except FileNotFoundError:
            pass
        os.close(fd)  # a cleanup removed it between creation and locking: take another name


def remove_if_abandoned(tmp: Path) -> bool:
    """Delete a temporary that no live writer holds (its writer was killed); True if removed."""
    try:
        fd = os.open(tmp, os.O_RDONLY)
    except (FileNotFoundError, IsADirectoryError):
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a writer is still filling it
        try:
            if not os.path.samestat(os.fstat(fd), os.stat(tmp)):
                return False
        except FileNotFoundError:
            return False
        tmp.unlink()
        return True
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a locked temporary and rename it over ``path``: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = open_temporary(path)
    f = os.fdopen(fd, "wb")
    try:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        os.replace(tmp, path)  # before closing: the lock keeps the cleanup away until the rename is done
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        f.close()


def same_path(a: str, b: str) -> bool:
    """Two spellings of one checkpoint location (relative/absolute, '..') count as the same; hub ids compare as text."""
    if a == b:
        return True
    return Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve()


def json_bytes(obj) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, default=str).encode()


def parquet_bytes(rows: pd.DataFrame, schema: pa.Schema) -> bytes:
    """Rows as Parquet with exactly ``schema``'s columns; a missing column is an error, not a NaN column."""
    missing = [c for c in schema.names if c not in rows.columns]
    if missing:
        raise StoreError(f"rows lack columns {missing}")
    table = pa.Table.from_pandas(rows[schema.names], schema=schema, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def corrupt_message(path: Path, why: str) -> str:
    return (f"{path}: corrupt or unreadable ({why}); rerun the command that wrote it with --repair to rewrite "
            "only this pair, or delete the file")


def parquet_problem(path: Path, full: bool = True) -> str | None:
    """Why a stored Parquet file cannot be read, or None: every page when ``full``, else only its footer
    (cheap: enough to catch truncated and overwritten files)."""
    try:
        if full:
            pq.read_table(path)
        else:
            pq.read_metadata(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def read_json_note(path: Path) -> dict | None:
    """A run note or None when absent; an unreadable one is an error naming it."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(corrupt_message(path, f"{type(e).__name__}: {e}")) from e
    if not isinstance(data, dict):
        raise StoreError(corrupt_message(path, "not a JSON object"))
    return data


def unknown(value) -> bool:
    """None, NaN or an empty string: a manifest field nobody gave."""
    return value is None or (isinstance(value, str) and value == "") or (not isinstance(value, str) and pd.isna(value))


class ResultsStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.choices_dir = self.root / "choices"
        self.runs_dir = self.root / "runs"
        self.manifest_path = self.root / "checkpoints.csv"
        self.samples_dir = self.root / "samples"
        self.completions_dir = self.root / "completions"
        self.progress_dir = self.root / "progress"

    def create(self) -> None:
        """Make OUT (with parents) before writing; a file in its place, or a folder that cannot be made,
        is an error naming it."""
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root}: is a file; --out must name a results-store folder (created if missing)")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"{self.root}: cannot create the results-store folder: {e.strerror or e}") from e

    def read_parquet_folder(self, folder: Path) -> pd.DataFrame:
        """Every pair file of ``folder`` as one frame; a corrupt file is an error naming it."""
        try:
            return pd.read_parquet(folder)
        except (pa.ArrowException, OSError, ValueError, TypeError) as e:
            for path in sorted(folder.glob("*.parquet")):
                why = parquet_problem(path)
                if why:
                    raise StoreError(corrupt_message(path, why)) from e
            raise StoreError(f"{folder}: cannot read its Parquet files together: {e}") from e

    def broken_file(self, files: list[Path], full: bool) -> tuple[Path, str] | None:
        """The first of a pair's existing files that cannot be read, with the reason (see parquet_problem)."""
        for path in files:
            if not path.exists():
                continue
            if path.suffix == ".parquet":
                why = parquet_problem(path, full=full)
            else:
                try:
                    read_json_note(path)
                    why = None
                except StoreError as e:
                    why = str(e)
            if why:
                return path, why
        return None

    # --- per-choice rows -------------------------------------------------
    def pair_stem(self, checkpoint: str, task: str) -> str:
        return f"{safe_name(checkpoint)}--{safe_name(task)}"

    def pair_path(self, checkpoint: str, task: str) -> Path:
        return self.choices_dir / f"{self.pair_stem(checkpoint, task)}.parquet"

    def has_pair(self, checkpoint: str, task: str) -> bool:
        return self.pair_path(checkpoint, task).exists()

    def write_pair(self, checkpoint: str, task: str, rows: pd.DataFrame, run_info: dict) -> Path:
        """Write one pair's rows atomically, then its run note. Rows must match CHOICE_SCHEMA."""
        missing = [c for c in CHOICE_COLUMNS if c not in rows.columns]
        if missing:
            raise StoreError(f"rows for {checkpoint}/{task} lack columns {missing}")
        if rows.duplicated(["item", "choice"]).any():
            raise StoreError(f"rows for {checkpoint}/{task} contain duplicate (item, choice) pairs")
        path = self.pair_path(checkpoint, task)
        atomic_write_bytes(self.runs_dir / f"{self.pair_stem(checkpoint, task)}.json", json_bytes(run_info))
        atomic_write_bytes(path, parquet_bytes(rows, CHOICE_SCHEMA))
        return path

    def run_info_path(self, checkpoint: str, task: str) -> Path:
        return self.runs_dir / f"{self.pair_stem(checkpoint, task)}.json"

    def run_info(self, checkpoint: str, task: str) -> dict | None:
        return read_json_note(self.run_info_path(checkpoint, task))

    def pair_files(self, checkpoint: str, task: str) -> list[Path]:
        """What a scored pair consists of (rows, run note)."""
        return [self.pair_path(checkpoint, task), self.run_info_path(checkpoint, task)]

    def read_choices(self) -> pd.DataFrame:
        if not self.choices_dir.is_dir() or not any(self.choices_dir.glob("*.parquet")):
            raise StoreError(f"{self.root}: no per-choice results (expected {self.choices_dir}/*.parquet)")
        return self.read_parquet_folder(self.choices_dir)

    # --- per-sample rows (generative tasks) -----------------------------------
    def samples_path(self, checkpoint: str, task: str) -> Path:
        return self.samples_dir / f"{self.pair_stem(checkpoint, task)}.parquet"

    def progress_path(self, checkpoint: str, task: str) -> Path:
        return self.progress_dir / f"{self.pair_stem(checkpoint, task)}.json"

    def sample_run_info_path(self, checkpoint: str, task: str) -> Path:
        return self.runs_dir / f"samples--{self.pair_stem(checkpoint, task)}.json"

    def has_samples(self, checkpoint: str, task: str) -> bool:
        return self.samples_path(checkpoint, task).exists()

    def completions_path(self, checkpoint: str, task: str) -> Path:
        return self.completions_dir / f"{self.pair_stem(checkpoint, task)}.parquet"

    def sample_files(self, checkpoint: str, task: str) -> list[Path]:
        """What a sampled pair consists of (per-item rows, completions, run note)."""
        return [self.samples_path(checkpoint, task), self.completions_path(checkpoint, task),
                self.sample_run_info_path(checkpoint, task)]

    def sample_run_info(self, checkpoint: str, task: str) -> dict | None:
        return read_json_note(self.sample_run_info_path(checkpoint, task))

    def write_samples(self, checkpoint: str, task: str, rows: pd.DataFrame, completions: pd.DataFrame,
                      run_info: dict) -> Path:
        """Completions and run note first, the per-item rows last: a pair counts as done only when
        its samples file exists, so a crash in between leaves a pair that is simply redone."""
        if rows["item"].duplicated().any():
            raise StoreError(f"sample rows for {checkpoint}/{task} repeat an item")
        atomic_write_bytes(self.completions_path(checkpoint, task), parquet_bytes(completions, COMPLETION_SCHEMA))
        atomic_write_bytes(self.sample_run_info_path(checkpoint, task), json_bytes(run_info))
        path = self.samples_path(checkpoint, task)
        atomic_write_bytes(path, parquet_bytes(rows, SAMPLE_SCHEMA))
        self.progress_path(checkpoint, task).unlink(missing_ok=True)
        return path

    def read_samples(self) -> pd.DataFrame:
        if not self.samples_dir.is_dir() or not any(self.samples_dir.glob("*.parquet")):
            raise StoreError(f"{self.root}: no per-sample results (expected {self.samples_dir}/*.parquet)")
        return self.read_parquet_folder(self.samples_dir)

    def read_completions(self) -> pd.DataFrame:
        if not self.completions_dir.is_dir() or not any(self.completions_dir.glob("*.parquet")):
            raise StoreError(f"{self.root}: no completions (expected {self.completions_dir}/*.parquet)")
        return self.read_parquet_folder(self.completions_dir)

    def read_rows(self) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
        """(per-choice rows, per-sample rows), each None when the store has none; both None is an error."""
        choices = self.read_choices() if any(self.choices_dir.glob("*.parquet")) else None
        samples = self.read_samples() if any(self.samples_dir.glob("*.parquet")) else None
        if choices is None and samples is None:
            raise StoreError(f"{self.root}: no results (expected {self.choices_dir}/*.parquet or "
                             f"{self.samples_dir}/*.parquet)")
        return choices, samples

    def remove_stale_temporaries(self) -> int:
        """Delete temporaries left by killed runs (never read, this only frees space); a temporary that a
        live writer holds is left alone, so this is safe while other jobs write the store."""
        n = 0
        for d in (self.root, self.choices_dir, self.runs_dir, self.samples_dir, self.completions_dir,
                  self.progress_dir):
            for tmp in d.glob(f".*{TEMP_SUFFIX}") if d.is_dir() else []:
                n += remove_if_abandoned(tmp)
        return n

    # --- manifest ----------------------------------------------------------
    def read_manifest(self) -> pd.DataFrame:
        if not self.manifest_path.exists():
            return pd.DataFrame(columns=MANIFEST_COLUMNS)
        try:
            manifest = pd.read_csv(self.manifest_path,
                                   dtype={"checkpoint": str, "family": str, "model": str, "path": str})
        except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as e:
            raise StoreError(f"{self.manifest_path}: unreadable manifest: {e}") from e
        if "checkpoint" not in manifest.columns:
            raise StoreError(f"{self.manifest_path}: manifest has no 'checkpoint' column")
        return manifest

    def upsert_checkpoint(self, record: dict, defaults: dict | None = None) -> None:
        """Add or refresh one manifest row, atomically under the store lock (safe with concurrent writers).

        A refresh keeps the row's known values where the record leaves a field unknown (None, NaN, ''),
        so a rerun without --tokens does not forget the tokens; ``defaults`` fill what neither knows.
        The same name pointing at another path is an error."""
        self.create()
        with exclusive_lock(self.root / LOCK_NAME):
            manifest = self.read_manifest()
            name = record["checkpoint"]
            existing = manifest[manifest["checkpoint"] == name]
            if len(existing) and not same_path(str(existing.iloc[0]["path"]), str(record["path"])):
                raise StoreError(
                    f"{self.manifest_path}: checkpoint name {name!r} already used for {existing.iloc[0]['path']}, "
                    f"not {record['path']}; give it another name (--name or the ladder spec)"
                )
            sources = [record] + ([existing.iloc[0]] if len(existing) else []) + [defaults or {}]
            row = {c: next((v for v in (src.get(c) for src in sources) if not unknown(v)), None)
                   for c in MANIFEST_COLUMNS}
            if len(existing):  # refresh in place: the manifest keeps its order
                row["path"] = existing.iloc[0]["path"]
                manifest = manifest.reindex(columns=MANIFEST_COLUMNS).astype(object)
                manifest.loc[existing.index[0], MANIFEST_COLUMNS] = [row[c] for c in MANIFEST_COLUMNS]
            else:
                manifest = pd.concat([manifest, pd.DataFrame([row])], ignore_index=True)
            atomic_write_bytes(self.manifest_path, manifest[MANIFEST_COLUMNS].to_csv(index=False).encode())
