"""The run store: folders, the SQLite index, metrics files and safe checkpoints."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading

import pytest
import torch

from conftest import tiny_dataset_config
from workbench.core.checkpoints import read_checkpoint
from workbench.core.runs import load_model
from workbench.core.errors import CheckpointError, ConfigError, RunNotFound, WorkbenchError
from workbench.core.runs import RunStore, default_home


def test_default_home_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "elsewhere"))
    assert default_home() == tmp_path / "elsewhere"
    store = RunStore()
    assert store.index_path == tmp_path / "elsewhere" / "runs.sqlite"
    assert store.index_path.is_file()


def test_create_writes_folder_config_and_index_row():
    store = RunStore()
    config = tiny_dataset_config(name="first")
    run = store.create(config)
    assert re.fullmatch(r"\d{8}-\d{6}-protonet-[0-9a-f]{4}", run.id)
    assert (run.path / "config.toml").is_file()
    assert run.config.to_dict() == config.to_dict()
    record = run.record()
    assert (record.status, record.algorithm, record.dataset, record.ways, record.shots) == (
        "created", "protonet", "glyphs", 3, 1)
    assert record.steps_total == config.training.steps
    assert record.path == str(run.path)
    assert [r.id for r in store.list()] == [run.id]


def test_run_ids_are_unique_and_sortable_by_creation():
    store = RunStore()
    config = tiny_dataset_config()
    ids = [store.create(config).id for _ in range(5)]
    assert len(set(ids)) == 5
    prefixes = [i[:15] for i in ids]
    assert prefixes == sorted(prefixes)  # the time prefix sorts runs by creation


def test_get_by_prefix_name_and_folder_and_clear_errors():
    store = RunStore()
    a = store.create(tiny_dataset_config(name="alpha"))
    b = store.create(tiny_dataset_config(name="beta"))
    assert store.get(a.id).id == a.id
    assert store.get("beta").id == b.id
    assert store.get(str(a.path)).id == a.id
    with pytest.raises(RunNotFound, match="matches 2 runs"):
        store.get(a.id[:8])  # both ids share the date
    with pytest.raises(RunNotFound, match="no run 'nope'"):
        store.get("nope")


def test_rename_update_delete():
    store = RunStore()
    run = store.create(tiny_dataset_config())
    other = store.create(tiny_dataset_config())
    store.rename(run.id, "my run")
    assert store.get("my run").id == run.id
    with pytest.raises(ConfigError, match="already called"):
        store.rename(other.id, "my run")
    store.update(run.id, status="finished", steps_done=6, best_val_accuracy=0.75)
    record = store.get(run.id).record()
    assert (record.status, record.steps_done, record.best_val_accuracy) == ("finished", 6, 0.75)
    with pytest.raises(ValueError):
        store.update(run.id, status="exploded")
    assert [r.id for r in store.compare([other.id, run.id])] == [other.id, run.id]
    store.delete(run.id)
    assert not run.path.exists()
    assert [r.id for r in store.list()] == [other.id]
    with pytest.raises(RunNotFound):
        store.get(run.id)


def test_index_rebuilds_from_folders():
    store = RunStore()
    run = store.create(tiny_dataset_config(name="kept"))
    store.update(run.id, status="finished", best_val_accuracy=0.5)
    store.index_path.unlink()
    for suffix in ("-wal", "-shm"):
        store.index_path.with_name(store.index_path.name + suffix).unlink(missing_ok=True)
    fresh = RunStore(store.home)
    [record] = fresh.list()
    assert (record.id, record.name, record.status, record.best_val_accuracy) == (run.id, "kept", "finished", 0.5)
    # A folder removed by hand disappears from the listing.
    import shutil

    shutil.rmtree(run.path)
    assert fresh.list() == []


def test_index_is_safe_from_several_threads():
    store = RunStore()
    runs = [store.create(tiny_dataset_config()) for _ in range(4)]
    errors = []

    def worker(run):
        try:
            for step in range(25):
                store.update(run.id, steps_done=step, status="running")
                store.list()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert {r.steps_done for r in store.list()} == {24}
    with sqlite3.connect(store.index_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"


def test_metrics_tolerate_a_truncated_last_line_and_truncate_on_resume():
    run = RunStore().create(tiny_dataset_config())
    run.append_metrics([{"step": s, "loss": 1.0 / s} for s in range(1, 6)])
    with open(run.metrics_path, "a", encoding="utf-8") as handle:
        handle.write('{"step": 6, "lo')  # the process died mid-write
    assert [m["step"] for m in run.read_metrics()] == [1, 2, 3, 4, 5]
    dropped = run.truncate_metrics(3)
    assert dropped == 2
    assert [m["step"] for m in run.read_metrics()] == [1, 2, 3]
    assert run.metrics_path.read_text().endswith("\n")
    assert "lo" not in run.metrics_path.read_text().splitlines()[-1][-4:]


def _payload(run, value: float) -> dict:
    from workbench.core.algorithms import get_algorithm
    from workbench.core.algorithms.base import ModelSpec
    from workbench.core.checkpoints import make_payload
    from workbench.core.data.base import PreprocessSpec

    cls = get_algorithm("protonet")
    algorithm = cls(cls.build_hparams({"hidden": 8}), ModelSpec(1, 16, 3, 12))
    with torch.no_grad():
        for p in algorithm.encoder.parameters():
            p.fill_(value)
    spec = PreprocessSpec(16, 1, (0.5,), (0.5,))
    return make_payload(algorithm, run.config, spec, step=int(value), best_val_accuracy=None)


def test_checkpoint_round_trip_and_model_loading():
    run = RunStore().create(tiny_dataset_config())
    run.save_checkpoint(_payload(run, 3.0), "best")
    loaded = load_model(run)
    assert loaded.step == 3
    assert loaded.spec.image_size == 16
    weight = next(loaded.algorithm.encoder.parameters())
    assert torch.all(weight == 3.0)
    assert not loaded.algorithm.encoder.training
    # By id, and by file.
    assert load_model(run.id).step == 3
    assert load_model(run.checkpoint_path("best")).step == 3


def test_failed_checkpoint_write_keeps_the_old_file(monkeypatch):
    run = RunStore().create(tiny_dataset_config())
    run.save_checkpoint(_payload(run, 1.0), "last")
    real_save = torch.save

    def failing_save(obj, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(CheckpointError, match="No space left"):
        run.save_checkpoint(_payload(run, 2.0), "last")
    monkeypatch.setattr(torch, "save", real_save)
    assert run.load_checkpoint("last")["step"] == 1
    assert sorted(p.name for p in (run.path / "checkpoints").iterdir()) == ["last.pt"]


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    run = RunStore().create(tiny_dataset_config())
    evil = {"format": 1, "algorithm": "protonet", "hparams": {}, "model_spec": {}, "preprocess": {}, "state": {},
            "payload": _Exploit(marker)}
    run.checkpoint_path("best").parent.mkdir(parents=True, exist_ok=True)
    torch.save(evil, run.checkpoint_path("best"))
    with pytest.raises(CheckpointError, match="refused: file contains executable pickle data"):
        run.load_checkpoint("best")
    with pytest.raises(CheckpointError, match="refused"):
        load_model(run.checkpoint_path("best"))
    assert not marker.exists()


def test_non_checkpoints_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 not a checkpoint")
    with pytest.raises(CheckpointError, match="not a workbench checkpoint"):
        read_checkpoint(garbage)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    with pytest.raises(CheckpointError, match="not a workbench checkpoint"):
        read_checkpoint(plain)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "missing.pt")


def test_a_checkpoint_whose_weight_bytes_changed_is_refused_naming_the_file():
    run = RunStore().create(tiny_dataset_config())
    path = run.save_checkpoint(_payload(run, 3.0), "best")
    assert load_model(run).step == 3
    data = bytearray(path.read_bytes())
    pattern = torch.full((4,), 3.0).numpy().tobytes()  # four weights of 3.0, as stored in the zip
    at = bytes(data).find(pattern)
    assert at > 0
    data[at:at + 4] = torch.tensor([2.0]).numpy().tobytes()  # one weight silently becomes 2.0
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)["step"] == 3  # torch itself reads it without complaint
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*do not match the checksum"):
        load_model(run)


def test_a_checkpoint_without_checksum_loads_with_a_one_line_note(caplog):
    run = RunStore().create(tiny_dataset_config())
    payload = _payload(run, 3.0)
    del payload["checksum"]  # as written before checksums
    path = run.save_checkpoint(payload, "best")
    with caplog.at_level("WARNING", logger="workbench.core.checkpoints"):
        assert load_model(run).step == 3
        assert load_model(run).step == 3
    notes = [r.getMessage() for r in caplog.records if "no checksum" in r.getMessage()]
    assert len(notes) == 1 and str(path) in notes[0] and "\n" not in notes[0]


def test_checkpoint_from_another_architecture_is_refused():
    run = RunStore().create(tiny_dataset_config())
    payload = _payload(run, 1.0)
    hparams = payload["config"]["algorithm"]["hparams"]
    payload["config"]["algorithm"]["hparams"] = {**hparams, "hidden": 16}  # weights are for hidden=8
    run.save_checkpoint(payload, "best")
    with pytest.raises(CheckpointError, match="do not match the 'protonet' architecture"):
        load_model(run)
    payload["config"]["algorithm"]["name"] = "no-such-method"
    run.save_checkpoint(payload, "best")
    with pytest.raises(CheckpointError, match="'no-such-method'"):
        load_model(run)


def test_missing_checkpoint_names_the_run():
    run = RunStore().create(tiny_dataset_config())
    with pytest.raises(CheckpointError, match=f"run {run.id} has no 'best' checkpoint"):
        run.load_checkpoint("best")


def test_record_file_mirrors_the_index():
    store = RunStore()
    run = store.create(tiny_dataset_config())
    store.update(run.id, status="stopped", message="by hand")
    saved = json.loads((run.path / "run.json").read_text())
    assert (saved["status"], saved["message"]) == ("stopped", "by hand")


def test_a_running_run_whose_process_died_is_marked_stopped():
    import socket
    import subprocess
    import sys

    store = RunStore()
    alive = store.create(tiny_dataset_config())
    dead = store.create(tiny_dataset_config())
    for run in (alive, dead):
        run.claim()
        store.update(run.id, status="running", steps_done=4)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owner = {"pid": int(finished.stdout), "host": socket.gethostname()}
    (dead.path / "owner.json").write_text(json.dumps(owner))
    records = {r.id: r for r in store.list()}
    assert records[alive.id].status == "running"  # this process still owns it
    assert records[dead.id].status == "stopped"
    assert "ended unexpectedly after step 4" in records[dead.id].message
    assert not (dead.path / "owner.json").exists()
    with pytest.raises(WorkbenchError, match="stop it before deleting"):
        store.delete(alive.id)
    store.delete(dead.id)


def test_a_weights_only_copy_is_smaller_loads_alike_and_still_guards_its_weights(tmp_path):
    from workbench.core.algorithms import get_algorithm
    from workbench.core.algorithms.base import ModelSpec
    from workbench.core.checkpoints import make_payload, weights_only_payload
    from workbench.core.data.base import PreprocessSpec

    run = RunStore().create(tiny_dataset_config())
    cls = get_algorithm("protonet")
    algorithm = cls(cls.build_hparams({"hidden": 8}), ModelSpec(1, 16, 3, 12))
    algorithm.configure_optimizers(1e-3, 10)
    sum(p.square().sum() for p in algorithm.encoder.parameters()).backward()
    algorithm.optimizers[0].step()  # Adam now holds two moments per weight
    payload = make_payload(algorithm, run.config, PreprocessSpec(16, 1, (0.5,), (0.5,)), step=5,
                           best_val_accuracy=None)
    full, slim = tmp_path / "full.pt", tmp_path / "slim.pt"
    torch.save(payload, full)
    torch.save(weights_only_payload(payload), slim)
    assert slim.stat().st_size < 0.6 * full.stat().st_size
    assert "optimizer" not in torch.load(slim, weights_only=True)
    images = torch.rand(4, 1, 16, 16)
    original, shipped = load_model(full), load_model(slim)
    assert shipped.step == 5 and torch.equal(original.algorithm.embed(images), shipped.algorithm.embed(images))
    tampered = torch.load(slim, weights_only=True)
    next(iter(tampered["state"]["encoder"].values())).add_(1.0)
    torch.save(tampered, slim)
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        load_model(slim)
