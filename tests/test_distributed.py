"""Data-parallel meta-training (workbench.core.training.distributed): two gloo processes on the CPU take the step one
process takes with the whole meta-batch; rank 0 alone writes the run; stops, budgets and resuming keep the ranks in
step; `workbench train --nproc 2` end to end.

Starting processes is the slow part (each imports torch), so one launch does all the two-process work of the
trainer tests (a module fixture) and the tests check its results."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Callable

import pytest
import torch

from conftest import synthetic_dataset, tiny_dataset_config
from workbench import cli
from workbench.core import data
from workbench.core.errors import ConfigError, WorkbenchError
from workbench.core.runs import RunStore, load_model
from workbench.core.training import Trainer
from workbench.core.training.distributed import DistributedContext, check_parallel, launch

ALGORITHMS = ("protonet", "maml")
HPARAMS = {"protonet": {"hidden": 8}, "maml": {"hidden": 8, "train_inner_steps": 1}}


def _config(algorithm: str, steps: int, **training):
    return tiny_dataset_config(algorithm={"name": algorithm, "hparams": HPARAMS[algorithm]},
                               training={"steps": steps, "meta_batch": 4, "val_interval": 2, "checkpoint_interval": 2,
                                         "lr": 1e-3, **training})


def _parameters(trainer) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value.detach().clone() for name, module in trainer.algorithm.modules().items()
            for key, value in module.named_parameters()}


def _use_synthetic_data() -> Callable:
    """Every config loads the synthetic data in this process; returns the real loader."""
    from workbench.core import data

    dataset, real = synthetic_dataset(), data.load_dataset
    data.load_dataset = lambda config, progress=data.no_progress, use_cache=True: dataset
    return real


def _tasks_seen(trainer) -> list:
    """The classes of each task the trainer's algorithm trains on, filled in as it trains."""
    seen, step = [], trainer.algorithm.meta_train_step

    def recording_step(batch):
        seen.extend(list(task.class_ids) for task in batch)
        return step(batch)

    trainer.algorithm.meta_train_step = recording_step
    return seen


def _ranks_work(out: str) -> int:
    """One rank of the launch the trainer tests share; writes what each scenario ended with."""
    real_loader = _use_synthetic_data()
    context = DistributedContext.from_env()
    results = {}
    for name in ALGORITHMS:  # one meta-step on half the meta-batch each
        trainer = Trainer(_config(name, steps=1), RunStore(f"{out}/{name}"), distributed=context)
        results[f"{name} tasks"] = _tasks_seen(trainer)
        trainer.run_all()
        torch.save(_parameters(trainer), f"{out}/{name}.rank{context.rank}.pt")
    store = RunStore(f"{out}/resume")  # 4 steps, then resumed to 6
    first = Trainer(_config("maml", steps=4), store, distributed=context)
    first.run_all()
    resumed = Trainer(_config("maml", steps=6), store, resume=first.run.id or None, distributed=context)
    results["resumed"] = [resumed.step, resumed.run_all().step]
    torch.save(_parameters(resumed), f"{out}/resumed.rank{context.rank}.pt")
    stopping = Trainer(_config("protonet", steps=50), RunStore(f"{out}/stop"), distributed=context)
    final = stopping.run_all(lambda record: stopping.stop() if context.is_leader and record.step == 3 else None)
    results["stopped"] = [final.event, final.step]
    budget = Trainer(_config("protonet", steps=0, max_minutes=0.005), RunStore(f"{out}/budget"), distributed=context)
    final = budget.run_all()
    results["budget"] = [final.event, final.step]
    drifting = Trainer(_config("protonet", steps=2), RunStore(f"{out}/drift"), distributed=context)
    if not context.is_leader:  # a weight update outside the optimizers' step(), on one rank
        with torch.no_grad():
            next(drifting.algorithm.modules()["encoder"].parameters()).add_(0.5)
    try:
        results["drift"] = drifting.run_all().event
    except WorkbenchError as error:
        results["drift"] = str(error)
    # `workbench train` in a rank, as under torchrun: rank 0 prints the one JSON object, the other rank nothing.
    os.environ["WORKBENCH_HOME"] = f"{out}/cli"
    data.load_dataset = real_loader
    with open(f"{out}/cli.rank{context.rank}.out", "w") as printed, contextlib.redirect_stdout(printed):
        results["cli"] = cli.main(["train", *_cli_flags(Path(out) / "images"), "--steps", "2", "--meta-batch", "2"])
    Path(f"{out}/rank{context.rank}.json").write_text(json.dumps(results))
    return 0


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two-ranks")
    _image_folder(out / "images")
    assert launch(_ranks_work, (str(out),), nproc=2) == 0
    return out


def _one_process(config, monkeypatch, home: Path):
    monkeypatch.setattr("workbench.core.data.load_dataset", lambda *args, **kwargs: synthetic_dataset())
    trainer = Trainer(config, RunStore(home))
    trainer.run_all()
    return trainer


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[key] - b[key]).abs().max()) for key in a)  # tensors without grad: saved or cloned


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_one_meta_step_on_two_processes_equals_one_process_with_the_whole_meta_batch(
        two_ranks, algorithm, monkeypatch, tmp_path):
    rank0 = torch.load(two_ranks / f"{algorithm}.rank0.pt")
    rank1 = torch.load(two_ranks / f"{algorithm}.rank1.pt")
    assert all(torch.equal(rank0[key], rank1[key]) for key in rank0)  # the ranks hold one model
    monkeypatch.setattr("workbench.core.data.load_dataset", lambda *args, **kwargs: synthetic_dataset())
    one = Trainer(_config(algorithm, steps=1), RunStore(tmp_path))
    tasks = _tasks_seen(one)
    one.run_all()
    alone = _parameters(one)
    ranks = [json.loads((two_ranks / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert len(tasks) == 4 and ranks[0][f"{algorithm} tasks"] + ranks[1][f"{algorithm} tasks"] == tasks
    start = _parameters(Trainer(_config(algorithm, steps=1), RunStore(tmp_path / "start")))
    assert _max_difference(alone, start) > 1e-4  # the step moved the weights
    assert _max_difference(rank0, alone) < 1e-5


def test_rank_0_alone_writes_one_run_whose_checkpoint_loads_in_one_process(two_ranks):
    store = RunStore(two_ranks / "protonet")
    records = store.list()
    assert len(records) == 1 and [p.name for p in store.runs_dir.iterdir()] == [records[0].id]
    assert (records[0].status, records[0].steps_done) == ("finished", 1)
    run = store.get(records[0].id)
    assert [m["step"] for m in run.read_metrics() if m["event"] == "step"] == [1]
    loaded = load_model(run, kind="last")
    rank0 = torch.load(two_ranks / "protonet.rank0.pt")
    weights = {f"{name}.{key}": value.detach() for name, module in loaded.algorithm.modules().items()
               for key, value in module.named_parameters()}
    assert _max_difference(weights, rank0) == 0


def test_a_resumed_two_process_run_continues_in_one_run_as_one_process_would(two_ranks, monkeypatch, tmp_path):
    ranks = [json.loads((two_ranks / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["resumed"] == ranks[1]["resumed"] == [4, 6]  # the follower took rank 0's step and weights
    store = RunStore(two_ranks / "resume")
    (record,) = store.list()
    assert (record.status, record.steps_done) == ("finished", 6)
    steps = [m["step"] for m in store.get(record.id).read_metrics() if m["event"] == "step"]
    assert steps == [1, 2, 3, 4, 5, 6]
    resumed = torch.load(two_ranks / "resumed.rank0.pt")
    assert _max_difference(resumed, torch.load(two_ranks / "resumed.rank1.pt")) == 0
    first = _one_process(_config("maml", steps=4), monkeypatch, tmp_path)  # the same two sessions in one process
    alone = Trainer(_config("maml", steps=6), first.store, resume=first.run.id)
    alone.run_all()
    assert _max_difference(resumed, _parameters(alone)) < 1e-5


def test_rank_0_stops_every_rank_at_the_same_step(two_ranks):
    ranks = [json.loads((two_ranks / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["stopped"] == ranks[1]["stopped"] == ["stopped", 3]
    event, step = ranks[0]["budget"]
    assert event == "budget" and step > 0 and ranks[1]["budget"] == [event, step]
    (record,) = RunStore(two_ranks / "stop").list()
    assert (record.status, record.steps_done) == ("stopped", 3)


def test_ranks_whose_weights_drift_apart_stop_with_a_clear_error(two_ranks):
    ranks = [json.loads((two_ranks / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["drift"] == ranks[1]["drift"]
    assert "copies of the model differ after step 1: 'protonet' changes weights outside" in ranks[0]["drift"]
    (record,) = RunStore(two_ranks / "drift").list()
    assert record.status == "failed"


def test_shares_split_the_meta_batch_and_misfits_are_refused():
    assert DistributedContext.from_env({}).world_size == 1
    context = DistributedContext.from_env({"WORLD_SIZE": "3", "RANK": "1", "LOCAL_RANK": "1"})
    assert (context.active, context.is_leader, context.local_rank) == (True, False, 1)
    assert context.share_of(list(range(6))) == [2, 3]
    check_parallel(_config("maml", steps=1), 2)
    with pytest.raises(ConfigError, match="training.meta_batch: 4 tasks .* over 3 processes.*a meta-batch of 6"):
        check_parallel(_config("maml", steps=1), 3)
    batches = tiny_dataset_config(algorithm={"name": "finetune", "hparams": {"hidden": 8}})
    with pytest.raises(ConfigError, match="algorithm.name: 'finetune' .* labelled batches"):
        check_parallel(batches, 2)


def _image_folder(root: Path, classes: int = 15, per_class: int = 6) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c:02d}").mkdir(parents=True)
        pattern = rng.integers(0, 256, (4, 4))
        for i in range(per_class):
            pixels = np.kron(pattern, np.ones((4, 4))) + rng.normal(0, 20, (16, 16))
            Image.fromarray(pixels.clip(0, 255).astype("uint8"), "L").save(root / f"class{c:02d}" / f"{i}.png")
    return root


def _cli_flags(images: Path) -> list[str]:
    return ["--dataset", "folder", "--data-root", str(images), "--image-size", "16", "--ways", "3", "--shots", "1",
            "--queries", "2", "--val-episodes", "3", "--device", "cpu", "--threads", "1", "--hparam", "hidden=8",
            "--recipe", "none", "--no-eval", "--json", "--quiet"]


def test_cli_refuses_a_meta_batch_the_processes_cannot_share_before_starting_any(capfd, tmp_path):
    flags = [*_cli_flags(tmp_path / "images"), "--steps", "2", "--meta-batch", "3"]
    assert cli.main(["train", *flags, "--nproc", "2"]) == cli.EXIT_USER_ERROR
    assert "training.meta_batch: 3 tasks per step cannot be split evenly over 2 processes" in capfd.readouterr().err
    assert RunStore().list() == []


def test_cli_trains_in_ranks_and_resumes_with_nproc(two_ranks, capfd, monkeypatch):
    ranks = [json.loads((two_ranks / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["cli"] == ranks[1]["cli"] == cli.EXIT_OK
    assert (two_ranks / "cli.rank1.out").read_text() == ""  # only rank 0 reports
    trained = json.loads((two_ranks / "cli.rank0.out").read_text())
    assert (trained["status"], trained["steps"]) == ("finished", 2)
    monkeypatch.setenv("WORKBENCH_HOME", str(two_ranks / "cli"))
    assert cli.main(["runs", "resume", trained["run"], "--steps", "4", "--nproc", "2", "--no-eval", "--json",
                     "--quiet"]) == cli.EXIT_OK
    resumed = json.loads(capfd.readouterr().out)  # one JSON object: rank 0's
    assert (resumed["run"], resumed["status"], resumed["steps"]) == (trained["run"], "finished", 4)
    store = RunStore()
    assert [record.id for record in store.list()] == [trained["run"]]
    assert [m["step"] for m in store.get(trained["run"]).read_metrics() if m["event"] == "step"] == [1, 2, 3, 4]
