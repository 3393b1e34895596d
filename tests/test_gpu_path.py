"""The CUDA path, tested where it can be without a GPU: the decision to pin host memory and copy without blocking,
the trainer reading a step's numbers a step late (as on CUDA) with every record and the NaN check intact, and the
GPU bench saying plainly that it has nothing to measure on a machine without one."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch

from conftest import REPO_ROOT, tiny_dataset_config
from workbench.core import device as device_module
from workbench.core.algorithms.base import accuracy, accuracy_tensor
from workbench.core.data.episodes import Episode, LabeledBatch
from workbench.core.device import pins_memory, to_device
from workbench.core.training import Trainer
from workbench.core.training.trainer import PendingStep, values_lag


def test_host_memory_is_pinned_only_for_cuda():
    assert pins_memory("cuda") and pins_memory(torch.device("cuda:1"))
    assert not pins_memory("cpu") and not pins_memory("mps")


@pytest.fixture
def fake_copies(monkeypatch):
    """Tensor.pin_memory and Tensor.to recorded instead of run, so a copy "to CUDA" can be followed on a CPU."""
    calls = []

    def pin(self):
        calls.append(("pin", tuple(self.shape)))
        return self

    def to(self, device, non_blocking=False, **_kwargs):
        calls.append(("to", str(device), non_blocking))
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    monkeypatch.setattr(torch.Tensor, "to", to)
    return calls


def test_a_batch_bound_for_cuda_is_pinned_then_copied_without_blocking(fake_copies):
    to_device(torch.zeros(2, 3), torch.device("cuda"))
    assert fake_copies == [("pin", (2, 3)), ("to", "cuda", True)]


def test_every_tensor_of_an_episode_goes_non_blocking_labels_included(fake_copies):
    episode = Episode(torch.zeros(3, 1, 4, 4), torch.arange(3), torch.zeros(6, 1, 4, 4), torch.arange(3).repeat(2),
                      [0, 1, 2], ["a", "b", "c"])
    episode.to(torch.device("cuda"))
    assert [c for c in fake_copies if c[0] == "pin"] and len(fake_copies) == 8
    assert all(call == ("to", "cuda", True) for call in fake_copies if call[0] == "to")
    fake_copies.clear()
    LabeledBatch(torch.zeros(4, 1, 4, 4), torch.arange(4)).to("cuda")
    assert [c[0] for c in fake_copies] == ["pin", "to", "pin", "to"]


def test_a_cpu_batch_is_neither_pinned_nor_copied(monkeypatch):
    def refuse(self):
        raise AssertionError("pinned for the CPU")

    monkeypatch.setattr(torch.Tensor, "pin_memory", refuse)
    tensor = torch.zeros(2)
    assert to_device(tensor, "cpu") is tensor
    episode = Episode(torch.zeros(2, 1, 4, 4), torch.arange(2), torch.zeros(2, 1, 4, 4), torch.arange(2), [0, 1],
                      ["a", "b"])
    assert episode.to("cpu") is episode


def test_the_trainer_reads_numbers_a_step_late_only_on_cuda():
    assert values_lag(torch.device("cuda"), False) == 1
    assert values_lag(torch.device("cuda:0"), True) == 0  # several processes average them at once anyway
    assert values_lag(torch.device("cpu"), False) == values_lag(torch.device("mps"), False) == 0


def test_a_pending_step_turns_zero_dim_tensors_into_floats():
    pending = PendingStep(4, 0.0, {"loss": torch.tensor(0.5), "accuracy": 0.25, "note": "text"})
    assert pending.values() == {"loss": 0.5, "accuracy": 0.25, "note": "text"}
    assert pending.step == 4


def test_accuracy_as_a_tensor_matches_the_float():
    logits, targets = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]]), torch.tensor([0, 1, 1])
    assert isinstance(accuracy_tensor(logits, targets), torch.Tensor)
    assert float(accuracy_tensor(logits, targets)) == pytest.approx(accuracy(logits, targets)) == pytest.approx(2 / 3)


def _lagged(trainer: Trainer) -> Trainer:
    trainer._values_lag = 1  # as on CUDA: a step's numbers are read after the next step is queued
    return trainer


@pytest.mark.usefixtures("use_synthetic_data")
def test_numbers_read_a_step_late_give_the_same_records():
    config = tiny_dataset_config(training={"steps": 7, "val_interval": 3, "checkpoint_interval": 4})
    now = list(Trainer(config).steps())
    late = list(_lagged(Trainer(config)).steps())
    assert [(r.event, r.step) for r in late] == [(r.event, r.step) for r in now]
    assert [r.loss for r in late if r.event == "step"] == [r.loss for r in now if r.event == "step"]
    assert late[-1].event == "finished"


@pytest.mark.usefixtures("use_synthetic_data")
@pytest.mark.parametrize("lag", [0, 1])
def test_a_loss_that_turns_nan_is_caught_and_named(lag):
    trainer = Trainer(tiny_dataset_config(training={"steps": 8, "val_interval": 0, "checkpoint_interval": 2}))
    trainer._values_lag = lag
    step = trainer.algorithm.meta_train_step
    calls = []

    def turns_nan(batch):
        out = step(batch)
        calls.append(1)
        # A 0-dim tensor, as algorithms return off the CPU.
        return {**out, "loss": torch.tensor(float("nan")) if len(calls) == 5 else torch.tensor(out["loss"])}

    trainer.algorithm.meta_train_step = turns_nan
    records = list(trainer.steps())
    final = records[-1]
    assert final.event == "diverged" and "training diverged at step 5: the loss became nan" in final.message
    assert [r.step for r in records if r.event == "step"] == [1, 2, 3, 4]
    assert "last good checkpoint (step 4)" in final.message
    assert trainer.run.record().status == "diverged" and trainer.run.record().steps_done == 4


def load_gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_training", REPO_ROOT / "bench" / "gpu_training.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_training", module)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_bench_says_plainly_when_there_is_no_gpu(monkeypatch, capsys):
    bench = load_gpu_bench()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main([]) == 1
    err = capsys.readouterr().err
    assert "no CUDA GPU here" in err and "torch.cuda.is_available() is False" in err and "Nothing was measured" in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert bench.missing_gpu_message() is None


def test_steps_are_finite_floats_on_the_cpu_as_before():
    from workbench.core.algorithms import get_algorithm
    from workbench.core.models.spec import ModelSpec

    cls = get_algorithm("protonet")
    algorithm = cls(cls.build_hparams({"hidden": 8}), ModelSpec(1, 16, 3, 5))
    algorithm.configure_optimizers(1e-3, 10, "constant")
    episode = Episode(torch.randn(3, 1, 16, 16), torch.arange(3), torch.randn(6, 1, 16, 16), torch.arange(3).repeat(2),
                      [0, 1, 2], ["a", "b", "c"])
    out = algorithm.meta_train_step([episode])
    assert isinstance(out["loss"], float) and isinstance(out["accuracy"], float) and math.isfinite(out["loss"])
    assert device_module.pins_memory("cpu") is False
