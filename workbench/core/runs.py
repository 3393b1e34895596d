"""The run store: one folder per training run plus an SQLite index for fast listing.

A run folder is self-contained (config.toml, run.json, metrics.jsonl, checkpoints/, evaluations/),
so the index can be rebuilt from the folders; :meth:`RunStore.list` does that for folders it has
not seen and drops rows whose folder was deleted by hand.

SQLite is opened per call (a fresh connection each time, WAL journal), so the GUI thread and a
training worker thread can both use one RunStore.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import secrets
import shutil
import socket
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from workbench.core.errors import CheckpointError, ConfigError, RunNotFound, WorkbenchError
from workbench.core.fileio import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from workbench.core.config import ExperimentConfig
    from workbench.core.kinds.classification import EvalResult

STATUSES = ("created", "running", "paused", "stopped", "finished", "failed", "diverged")
CHECKPOINT_KINDS = ("last", "best")
APP_DIR_NAME = "meta-learning-workbench"


def default_home() -> Path:
    """WORKBENCH_HOME if set, else the platform's per-user data folder."""
    env = os.environ.get("WORKBENCH_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_DIR_NAME))


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


@dataclass
class RunRecord:
    """One row of the run index."""

    id: str
    name: str = ""
    created: str = ""
    updated: str = ""
    status: str = "created"
    kind: str = "classification"
    algorithm: str = ""
    dataset: str = ""
    ways: int = 0
    shots: int = 0
    steps_done: int = 0
    steps_total: int = 0
    best_val_accuracy: float | None = None
    best_val_mse: float | None = None  # regression kinds; best_val_ci95 is then its interval
    best_val_ci95: float | None = None
    test_accuracy: float | None = None
    test_mse: float | None = None  # regression kinds report MSE; test_ci95 is then its interval
    test_ci95: float | None = None
    test_ways: int | None = None
    test_shots: int | None = None
    device: str = ""
    path: str = ""
    message: str = ""  # why a run stopped, failed or diverged

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def label(self) -> str:
        return self.name or self.id


_FIELDS = [f.name for f in dataclasses.fields(RunRecord)]
_NULLABLE = {"best_val_accuracy", "best_val_mse", "best_val_ci95", "test_accuracy", "test_mse", "test_ci95", "test_ways", "test_shots"}


def _column_type(field: dataclasses.Field) -> str:
    text = str(field.type)
    if "float" in text:
        return "REAL"
    if "int" in text:
        return "INTEGER"
    return "TEXT"


def _clean_float(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


OWNER_FILE = "owner.json"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill would terminate the process on Windows
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_owner(folder: Path) -> dict | None:
    try:
        return json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class RunStore:
    """All runs under ``<home>/runs/<run_id>/`` with the index in ``<home>/runs.sqlite``."""

    def __init__(self, home: Path | str | None = None):
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.runs_dir = self.home / "runs"
        self.index_path = self.home / "runs.sqlite"
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkbenchError(f"cannot create the run folder {self.runs_dir}: {exc.strerror or exc}; set "
                                 "WORKBENCH_HOME to a writable folder") from None
        self._init_index()

    # --- SQLite ---------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.index_path, timeout=30.0)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn

    def _init_index(self) -> None:
        columns = ", ".join(
            f"{f.name} {_column_type(f)}" + (" PRIMARY KEY" if f.name == "id" else "")
            for f in dataclasses.fields(RunRecord))
        try:
            with closing(self._connect()) as conn:
                conn.execute("PRAGMA journal_mode = WAL")
                with conn:
                    conn.execute(f"CREATE TABLE IF NOT EXISTS runs ({columns})")
                    have = {row["name"] for row in conn.execute("PRAGMA table_info(runs)")}
                    # An index made by an older version lacks newer columns.
                    for f in dataclasses.fields(RunRecord):
                        if f.name not in have:
                            conn.execute(f"ALTER TABLE runs ADD COLUMN {f.name} {_column_type(f)}")
        except sqlite3.DatabaseError as exc:
            raise WorkbenchError(f"the run index {self.index_path} cannot be opened ({exc}); delete it and it "
                                 "will be rebuilt from the run folders") from None

    def _row_to_record(self, row: sqlite3.Row) -> RunRecord:
        keys = row.keys()
        # NULL in a non-optional column (an older index) falls back to the field default.
        values = {name: row[name] for name in _FIELDS if name in keys and (row[name] is not None or name in _NULLABLE)}
        record = RunRecord(**values)
        record.path = str(self.runs_dir / record.id)
        return record

    def _upsert(self, record: RunRecord) -> None:
        values = dataclasses.asdict(record)
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with closing(self._connect()) as conn, conn:
            conn.execute(f"INSERT OR REPLACE INTO runs ({names}) VALUES ({marks})", list(values.values()))

    def _fetch(self, run_id: str) -> RunRecord | None:
        with closing(self._connect()) as conn:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return self._row_to_record(row) if row else None

    # --- runs -----------------------------------------------------------------------------------
    def new_run_id(self, algorithm: str) -> str:
        slug = re.sub(r"[^a-z0-9]+", "", algorithm.lower())[:16] or "run"
        return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}-{secrets.token_hex(2)}"

    def create(self, config: "ExperimentConfig") -> "Run":
        """Make a run folder holding config.toml and add it to the index with status 'created'."""
        for _ in range(100):
            run_id = self.new_run_id(config.algorithm.name)
            path = self.runs_dir / run_id
            try:
                path.mkdir(parents=True)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 100 collisions in one second
            raise WorkbenchError(f"could not pick a free run id in {self.runs_dir}")
        config.save(path / "config.toml")
        stamp = now_iso()
        record = RunRecord(
            id=run_id, name=config.name, created=stamp, updated=stamp, status="created",
            kind=config.kind, algorithm=config.algorithm.name, dataset=config.dataset.name, ways=config.dataset.ways,
            shots=config.dataset.shots, steps_done=0, steps_total=config.training.steps,
            device=config.training.device, path=str(path))
        self._upsert(record)
        run = Run(run_id, path, self)
        run._write_record_file(record)
        return run

    def get(self, run_id_or_name: str | Path) -> "Run":
        """Find a run by id, unique id prefix, name or folder path; raise RunNotFound saying what exists."""
        key = str(run_id_or_name).strip()
        if not key:
            raise RunNotFound("no run given; pass a run id or name (see `workbench runs`)")
        folder = Path(key).expanduser()
        if (os.sep in key or "/" in key or key.startswith(".")) and (folder / "config.toml").is_file():
            folder = folder.resolve()
            if folder.parent.resolve() == self.runs_dir.resolve():
                self._ensure_indexed(folder)
                return Run(folder.name, folder, self)
            # A run folder from another workbench home.
            other = RunStore(folder.parent.parent)
            other._ensure_indexed(folder)
            return Run(folder.name, folder, other)
        if (self.runs_dir / key / "config.toml").is_file():
            self._ensure_indexed(self.runs_dir / key)
            return Run(key, self.runs_dir / key, self)
        records = self.list()
        by_name = [r for r in records if r.name == key]
        if len(by_name) == 1:
            return self.run(by_name[0].id)
        by_prefix = [r for r in records if r.id.startswith(key)]
        if len(by_prefix) == 1:
            return self.run(by_prefix[0].id)
        if len(by_name) > 1 or len(by_prefix) > 1:
            matches = by_name if len(by_name) > 1 else by_prefix
            raise RunNotFound(f"'{key}' matches {len(matches)} runs ({', '.join(r.id for r in matches[:4])}"
                              f"{', ...' if len(matches) > 4 else ''}); use the full run id")
        hint = f"; recent runs: {', '.join(r.id for r in records[:3])}" if records else "; no runs yet"
        raise RunNotFound(f"no run '{key}' in {self.runs_dir}{hint}")

    def run(self, run_id: str) -> "Run":
        return Run(run_id, self.runs_dir / run_id, self)

    def list(self) -> list[RunRecord]:
        """Every run, newest first. Reconciles the index with the folders on disk."""
        with closing(self._connect()) as conn:
            rows = conn.execute("SELECT * FROM runs ORDER BY created DESC, id DESC").fetchall()
        records = [self._reconcile(self._row_to_record(row)) for row in rows]
        indexed = {r.id for r in records}
        gone = [r.id for r in records if not (self.runs_dir / r.id).is_dir()]
        if gone:
            with closing(self._connect()) as conn, conn:
                conn.executemany("DELETE FROM runs WHERE id = ?", [(g,) for g in gone])
            records = [r for r in records if r.id not in gone]
        added = False
        try:
            folders = [p for p in self.runs_dir.iterdir() if p.is_dir() and p.name not in indexed]
        except OSError:
            folders = []
        for folder in folders:
            if (folder / "config.toml").is_file():
                added |= self._ensure_indexed(folder)
        if added:
            return self.list()
        return records

    def _ensure_indexed(self, folder: Path) -> bool:
        """Add a run folder the index does not know (copied in, or the index was deleted)."""
        if self._fetch(folder.name) is not None:
            return False
        record = RunRecord(id=folder.name, path=str(folder))
        try:
            saved = json.loads((folder / "run.json").read_text(encoding="utf-8"))
            for key, value in saved.items():
                if key in _FIELDS and key not in ("id", "path"):
                    setattr(record, key, value)
        except (OSError, ValueError):
            try:
                import tomllib

                data = tomllib.loads((folder / "config.toml").read_text(encoding="utf-8"))
                record.name = str(data.get("name", ""))
                record.algorithm = str(data.get("algorithm", {}).get("name", ""))
                record.dataset = str(data.get("dataset", {}).get("name", ""))
                record.ways = int(data.get("dataset", {}).get("ways", 0))
                record.shots = int(data.get("dataset", {}).get("shots", 0))
                record.steps_total = int(data.get("training", {}).get("steps", 0))
            except (OSError, ValueError, AttributeError, TypeError):
                pass
            record.status = "stopped"
            stamp = datetime.fromtimestamp(folder.stat().st_mtime).astimezone().isoformat(timespec="seconds")
            record.created = record.updated = stamp
        self._upsert(record)
        return True

    def record(self, run_id: str) -> RunRecord:
        record = self._fetch(run_id)
        if record is None:
            folder = self.runs_dir / run_id
            if (folder / "config.toml").is_file() and self._ensure_indexed(folder):
                record = self._fetch(run_id)
        if record is None:
            raise RunNotFound(f"no run '{run_id}' in {self.runs_dir}")
        return self._reconcile(record)

    def _reconcile(self, record: RunRecord) -> RunRecord:
        """A run marked running/paused whose training process is gone was killed or crashed: say so."""
        if record.status not in ("running", "paused"):
            return record
        owner = read_owner(self.runs_dir / record.id)
        if owner is None or owner.get("host") != socket.gethostname() or _pid_alive(int(owner.get("pid", 0))):
            return record
        (self.runs_dir / record.id / OWNER_FILE).unlink(missing_ok=True)
        return self.update(record.id, status="stopped", message=(
            f"the training process ended unexpectedly after step {record.steps_done} (killed or crashed); "
            f"resume it from its last checkpoint with: workbench runs resume {record.id}"))

    def update(self, run_id: str, **fields: Any) -> RunRecord:
        """Change index columns of one run (and its run.json); returns the new record."""
        unknown = sorted(set(fields) - set(_FIELDS) - {"updated"})
        if unknown or "id" in fields:
            raise ValueError(f"cannot update run fields {unknown or ['id']}")
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"unknown run status {fields['status']!r}")
        for key in ("best_val_accuracy", "best_val_mse", "best_val_ci95", "test_accuracy", "test_mse", "test_ci95"):
            if key in fields:
                fields[key] = _clean_float(fields[key])
        fields.setdefault("updated", now_iso())
        record = self.record(run_id)
        sets = ", ".join(f"{name} = ?" for name in fields)
        with closing(self._connect()) as conn, conn:
            conn.execute(f"UPDATE runs SET {sets} WHERE id = ?", [*fields.values(), run_id])
        record = dataclasses.replace(record, **fields)
        Run(run_id, self.runs_dir / run_id, self)._write_record_file(record)
        return record

    def rename(self, run_id: str, name: str) -> RunRecord:
        run = self.get(run_id)
        name = name.strip()
        clash = [r.id for r in self.list() if r.name == name and r.id != run.id and name]
        if clash:
            raise ConfigError("name", f"another run is already called '{name}' ({clash[0]}); pick another name")
        return self.update(run.id, name=name)

    def delete(self, run_id: str) -> None:
        """Remove a run's folder and its index row."""
        run = self.get(run_id)
        record = self.record(run.id)  # reconciled: a killed run no longer counts as running
        owner = read_owner(run.path)
        if record.status in ("running", "paused") and owner is not None:
            raise WorkbenchError(f"run {run.id} is {record.status} (process {owner.get('pid')}); stop it before "
                                 "deleting it")
        if run.path.exists():
            try:
                shutil.rmtree(run.path)
            except OSError as exc:
                raise WorkbenchError(f"could not delete {run.path}: {exc.strerror or exc}") from None
        with closing(self._connect()) as conn, conn:
            conn.execute("DELETE FROM runs WHERE id = ?", (run.id,))

    def compare(self, run_ids: Iterable[str]) -> list[RunRecord]:
        """Records of the given runs, in the order given (ids, prefixes or names)."""
        return [self.get(run_id).record() for run_id in run_ids]


class Run:
    """One run folder. Cheap to create; everything is read from disk when asked."""

    def __init__(self, run_id: str, path: Path, store: RunStore):
        self.id = run_id
        self.path = Path(path)
        self.store = store
        self._config: ExperimentConfig | None = None

    def __repr__(self) -> str:
        return f"Run({self.id!r}, {str(self.path)!r})"

    # --- files ----------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def checkpoint_path(self, kind: str = "best") -> Path:
        if kind not in CHECKPOINT_KINDS:
            raise ValueError(f"checkpoint kind must be one of {CHECKPOINT_KINDS}, not {kind!r}")
        return self.path / "checkpoints" / f"{kind}.pt"

    @property
    def config(self) -> "ExperimentConfig":
        if self._config is None:
            from workbench.core.config import ExperimentConfig

            self._config = ExperimentConfig.load(self.config_path)
        return self._config

    def save_config(self, config: "ExperimentConfig") -> None:
        config.save(self.config_path)
        self._config = config

    def record(self) -> RunRecord:
        return self.store.record(self.id)

    def _write_record_file(self, record: RunRecord) -> None:
        # run.json lets the index be rebuilt from the folders alone.
        atomic_write_text(self.path / "run.json", json.dumps(record.to_dict(), indent=1) + "\n")

    # --- metrics --------------------------------------------------------------------------------
    def append_metrics(self, records: list[dict]) -> None:
        """Append JSON lines; flushed, not fsynced (a crash loses at most the last batch)."""
        if not records:
            return
        text = "".join(json.dumps(r, allow_nan=False, separators=(",", ":")) + "\n" for r in records)
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(text)

    def read_metrics(self) -> list[dict]:
        """All metric records; a line cut short by a crash is skipped."""
        try:
            text = self.metrics_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def truncate_metrics(self, last_step: int) -> int:
        """Keep only records up to ``last_step`` (used on resume); returns how many were dropped."""
        records = self.read_metrics()
        kept = [r for r in records if int(r.get("step", 0)) <= last_step]
        dropped = len(records) - len(kept)
        if dropped or (self.metrics_path.exists() and not self.metrics_path.read_bytes().endswith(b"\n")
                       and self.metrics_path.stat().st_size):
            text = "".join(json.dumps(r, allow_nan=False, separators=(",", ":")) + "\n" for r in kept)
            atomic_write_text(self.metrics_path, text)
        return dropped

    # --- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, payload: dict, kind: str = "last") -> Path:
        import torch

        path = self.checkpoint_path(kind)
        try:
            return atomic_write(path, lambda tmp: torch.save(payload, tmp))
        except OSError as exc:
            raise CheckpointError(f"could not write the checkpoint {path}: {exc.strerror or exc}; the previous "
                                  "checkpoint was kept") from None

    def has_checkpoint(self, kind: str = "best") -> bool:
        return self.checkpoint_path(kind).is_file()

    def load_checkpoint(self, kind: str = "best") -> dict:
        from workbench.core.checkpoints import read_checkpoint

        path = self.checkpoint_path(kind)
        if not path.is_file():
            other = "last" if kind == "best" else "best"
            hint = f"; a '{other}' checkpoint exists" if self.checkpoint_path(other).is_file() else \
                "; the run saved no checkpoint yet"
            raise CheckpointError(f"run {self.id} has no '{kind}' checkpoint ({path}){hint}")
        return read_checkpoint(path)

    # --- evaluations ----------------------------------------------------------------------------
    def save_evaluation(self, result: "EvalResult") -> Path:
        """Write evaluations/<ways>w<shots>s-<episodes>ep-seed<seed>.json (+ .npz arrays); update test columns."""
        import numpy as np

        folder = self.path / "evaluations"
        stem = result.file_stem()
        path = folder / f"{stem}.json"
        atomic_write_text(path, json.dumps(result.to_dict(), indent=1, allow_nan=False) + "\n")

        def write_arrays(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, **result.arrays())

        atomic_write(folder / f"{stem}.npz", write_arrays)
        self.store.update(self.id, **result.index_fields())
        return path

    def evaluations(self) -> list[dict]:
        """Saved evaluation summaries (JSON dicts), oldest first; each has "file" naming its JSON."""
        folder = self.path / "evaluations"
        out = []
        for path in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            data["file"] = str(path)
            out.append(data)
        return out

    def load_evaluation(self, file_or_stem: str | Path) -> "EvalResult":
        """A saved evaluation with its arrays (per-episode accuracy, confusion, query records); the kind that
        made it reads it back."""
        from workbench.core.kinds import DEFAULT_KIND, get_kind_class

        path = Path(file_or_stem)
        if not path.is_absolute():
            path = self.path / "evaluations" / path.name
        path = path.with_suffix(".json")
        data = json.loads(path.read_text(encoding="utf-8"))
        arrays_path = path.with_suffix(".npz")
        arrays = None
        if arrays_path.is_file():
            import numpy as np

            with np.load(arrays_path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        return get_kind_class(data.get("kind") or DEFAULT_KIND).result_from_dict(data, arrays)

    # --- status ---------------------------------------------------------------------------------
    def claim(self) -> None:
        """Record which process trains this run, so a killed run is recognised later."""
        atomic_write_text(self.path / OWNER_FILE, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                              "since": now_iso()}))

    def release(self) -> None:
        (self.path / OWNER_FILE).unlink(missing_ok=True)

    def set_status(self, status: str, message: str = "", **fields: Any) -> RunRecord:
        return self.store.update(self.id, status=status, message=message, **fields)

    def update(self, **fields: Any) -> RunRecord:
        return self.store.update(self.id, **fields)


def load_model(source: "str | Path | Run", device: Any = "cpu", *, kind: str = "best",
               store: "RunStore | None" = None):
    """A ready model (eval mode) from a run (object, id, name or folder) or a .pt file.

    ``kind`` picks the run's "best" or "last" checkpoint; "best" falls back to "last" when a run
    stopped before its first validation.
    """
    from workbench.core.checkpoints import load_checkpoint_file, read_checkpoint

    if isinstance(source, Run):
        payload, label = _run_payload(source, kind)
    else:
        path = Path(str(source)).expanduser()
        if path.is_file():
            payload, label = read_checkpoint(path), str(path)
        elif path.suffix == ".pt":
            raise CheckpointError(f"{path}: no such checkpoint file")
        else:
            payload, label = _run_payload((store or RunStore()).get(str(source)), kind)
    return load_checkpoint_file(payload, device, label)


def _run_payload(run: "Run", kind: str) -> tuple[dict[str, Any], str]:
    if kind == "best" and not run.has_checkpoint("best") and run.has_checkpoint("last"):
        kind = "last"
    return run.load_checkpoint(kind), f"run {run.id} ({kind} checkpoint)"
