"""MANN (Santoro et al. 2016): LRUA's memory step against an independent computation on a tiny memory, the
least-used location, sequences built from episodes, instance accuracies, training through the Trainer with the
memory heatmaps, and a checkpoint round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import synthetic_dataset, tiny_dataset_config
from workbench.core.algorithms import ModelSpec, get_algorithm
from workbench.core.algorithms.mann import (INSTANCES, MemoryState, instance_numbers, least_used, lrua_step,
                                            previous_labels)
from workbench.core.data.episodes import FixedEpisodes
from workbench.core.kinds import get_kind
from workbench.core.runs import load_model
from workbench.core.snapshots import INSPECTION_FILE, read_inspections
from workbench.core.training import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SLOTS, HEADS, WIDTH = 6, 2, 3
TINY = {"hidden": 8, "controller_units": 16, "memory_slots": 8, "memory_width": 4, "read_heads": 2}


def tiny_state(generator) -> MemoryState:
    rand = lambda *shape: torch.rand(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    read = rand(1, HEADS, SLOTS).softmax(-1)
    return MemoryState(rand(1, SLOTS, WIDTH) - 0.5, rand(1, SLOTS) * 3, read, rand(1, HEADS * WIDTH), rand(1, 4),
                       rand(1, 4))


def test_an_lrua_step_matches_a_computation_by_hand():
    """Write weights sigmoid(a) w^r_{t-1} + (1 - sigmoid(a)) w^lu_{t-1}, the least-used row zeroed before the write,
    cosine-softmax reads and the decayed usage, each computed here with plain Python loops."""
    gen = torch.Generator().manual_seed(3)
    state = tiny_state(gen)
    keys = torch.rand(1, HEADS, WIDTH, generator=gen, dtype=torch.float64) - 0.5
    written = torch.rand(1, HEADS, WIDTH, generator=gen, dtype=torch.float64)
    gate, strength, gamma = torch.tensor([[0.7, -1.3]], dtype=torch.float64), torch.tensor([[1.0, 2.5]]).double(), 0.9
    new, weights = lrua_step(state, keys, gate, written, strength, gamma)

    usage = state.usage[0].tolist()
    ranked = sorted(range(SLOTS), key=lambda i: usage[i])
    lu = [1.0 if i in ranked[:HEADS] else 0.0 for i in range(SLOTS)]  # the n = heads least used
    memory = [[0.0 if i == ranked[0] else float(state.memory[0, i, j]) for j in range(WIDTH)] for i in range(SLOTS)]
    write = []
    for h in range(HEADS):
        s = 1 / (1 + math.exp(-float(gate[0, h])))
        write.append([s * float(state.read_weights[0, h, i]) + (1 - s) * lu[i] for i in range(SLOTS)])
        for i in range(SLOTS):
            for j in range(WIDTH):
                memory[i][j] += write[h][i] * float(written[0, h, j])
    assert torch.allclose(weights["write"][0], torch.tensor(write, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(new.memory[0], torch.tensor(memory, dtype=torch.float64), atol=1e-12)
    for h in range(HEADS):
        k = keys[0, h].tolist()
        cosines = [sum(a * b for a, b in zip(k, row)) / (math.sqrt(sum(a * a for a in k)) *
                                                          math.sqrt(sum(b * b for b in row))) for row in memory]
        exps = [math.exp(float(strength[0, h]) * c) for c in cosines]
        read = [e / sum(exps) for e in exps]
        assert weights["read"][0, h].tolist() == pytest.approx(read, abs=1e-12)
        assert new.reads[0, h * WIDTH:(h + 1) * WIDTH].tolist() == pytest.approx(
            [sum(read[i] * memory[i][j] for i in range(SLOTS)) for j in range(WIDTH)], abs=1e-12)
    expected_usage = [gamma * usage[i] + sum(float(weights["read"][0, h, i]) + write[h][i] for h in range(HEADS))
                      for i in range(SLOTS)]
    assert new.usage[0].tolist() == pytest.approx(expected_usage, abs=1e-12)


def test_the_least_used_location_is_the_argmin_of_usage_and_is_emptied_before_the_write():
    gen = torch.Generator().manual_seed(0)
    usage = torch.rand(20, SLOTS, generator=gen)
    assert torch.equal(least_used(usage, 1).argmax(-1), usage.argmin(-1))
    marked = least_used(usage, 3)
    assert torch.all(marked.sum(-1) == 3)
    assert torch.equal(marked.bool(), usage <= usage.sort(-1).values[:, 2:3])
    # Gate +inf writes only where it last read; nothing was read at the least-used row, so it ends empty.
    state = tiny_state(gen)
    emptied = int(state.usage.argmin())
    state.read_weights[..., emptied] = 0.0
    keys = torch.rand(1, HEADS, WIDTH, generator=gen, dtype=torch.float64)
    new, _ = lrua_step(state, keys, torch.full((1, HEADS), math.inf), keys, torch.ones(1, HEADS), 0.95)
    assert torch.all(new.memory[0, emptied] == 0) and torch.all(state.memory[0, emptied] != 0)


def test_each_step_is_shown_the_previous_label_and_instances_count_presentations():
    targets = torch.tensor([[2, 0, 2, 1, 2, 0]])
    inputs = previous_labels(targets, 3)
    assert inputs[0, 0].tolist() == [0, 0, 0] and inputs[0, 1].tolist() == [0, 0, 1]
    assert inputs[0, 1:].argmax(-1).tolist() == targets[0, :-1].tolist()
    assert instance_numbers(targets).tolist() == [[1, 1, 2, 1, 3, 2]]


def tiny_mann(ways=3, **hparams):
    cls = get_algorithm("mann")
    torch.manual_seed(0)
    return cls(cls.build_hparams({**TINY, **hparams}), ModelSpec(1, 16, ways, 10))


def test_instance_accuracy_counts_each_presentation_and_is_at_chance_first_when_untrained(monkeypatch):
    dataset = synthetic_dataset(per_class=12)
    algorithm = tiny_mann()
    result = algorithm.instance_accuracy(dataset.split("test"), dataset.spec, 3, 60, 1)
    assert sorted(result["accuracy_by_instance"], key=int) == [str(k) for k in INSTANCES]
    assert set(result["ci95_by_instance"]) == set(result["accuracy_by_instance"])
    assert abs(result["accuracy_by_instance"]["1"] - 1 / 3) < 0.12  # 180 first presentations, sd 0.035

    def remembers(images, targets, record=False):  # right from the 2nd presentation on, wrong at the 1st
        seen = torch.nn.functional.one_hot(targets, 3).float()
        sign = torch.where(instance_numbers(targets) > 1, 1.0, -1.0)
        return sign[..., None] * seen, None, []

    monkeypatch.setattr(algorithm, "_sequence_logits", remembers)
    oracle = algorithm.instance_accuracy(dataset.split("test"), dataset.spec, 3, 20, 1)["accuracy_by_instance"]
    assert oracle == {"1": 0.0, **{str(k): 1.0 for k in INSTANCES[1:]}}


def test_predictions_do_not_depend_on_the_other_queries():
    algorithm = tiny_mann().eval()
    gen = torch.Generator().manual_seed(2)
    support_x, query_x = torch.randn(6, 1, 16, 16, generator=gen), torch.randn(5, 1, 16, 16, generator=gen)
    adapted = algorithm.adapt(support_x, torch.arange(3).repeat(2), 3)
    probs = algorithm.predict(adapted, query_x)
    assert probs.shape == (5, 3) and torch.allclose(probs.sum(-1), torch.ones(5))
    assert torch.allclose(algorithm.predict(adapted, query_x[3:4]), probs[3:4], atol=1e-6)
    # The query continues the support's memory: another support changes the prediction.
    other = algorithm.adapt(support_x.flip(0), torch.arange(3).repeat(2), 3)
    assert not torch.allclose(algorithm.predict(other, query_x), probs)


@pytest.mark.usefixtures("use_synthetic_data")
def test_trains_through_the_trainer_with_the_memory_heatmaps_and_a_checkpoint_that_predicts_identically():
    config = tiny_dataset_config(algorithm={"name": "mann", "hparams": TINY},
                                 training={"steps": 4, "meta_batch": 2, "val_interval": 2, "checkpoint_interval": 2,
                                           "lr": 1e-2})
    trainer = Trainer(config)
    assert trainer.run_all().event == "finished"
    steps = [m for m in trainer.run.read_metrics() if m["event"] == "step"]
    assert len(steps) == 4 and all(math.isfinite(m["loss"]) and 0 <= m["accuracy"] <= 1 for m in steps)
    history = read_inspections(trainer.run.path / INSPECTION_FILE)
    assert [s.name for s in history.specs] == ["read_weights", "write_weights", "usage"]
    record = history.records[-1]["read_weights"]
    steps_shown = 3 * (1 + 2)  # ways x (shots + queries) of the probe episode
    assert record["values"].shape == (steps_shown, TINY["memory_slots"])
    assert record["row_images"].shape == (steps_shown, 16, 16) and len(record["columns"]) == TINY["memory_slots"]
    assert np.allclose(record["values"].sum(1), TINY["read_heads"], atol=1e-4)  # a softmax per head
    assert record["rows"][0].startswith("t1 ")

    live = trainer.algorithm
    dataset = synthetic_dataset()
    episode = FixedEpisodes(dataset.split("test"), dataset.spec, 3, 1, 2, count=1, seed=3)[0]
    probs = live.predict(live.adapt(episode.support_x, episode.support_y, 3), episode.query_x)
    loaded = load_model(trainer.run, kind="last").algorithm
    again = loaded.predict(loaded.adapt(episode.support_x, episode.support_y, 3), episode.query_x)
    assert torch.allclose(again, probs, atol=1e-6)
    assert live.embed(episode.query_x).shape == (len(episode.query_x), TINY["hidden"])


def test_an_evaluation_reports_accuracy_by_instance():
    dataset = synthetic_dataset(per_class=12)
    tasks = FixedEpisodes(dataset.split("test"), dataset.spec, 3, 1, 2, count=4, seed=5)
    result = get_kind("classification").evaluate(tiny_mann(), tasks)
    extras = result.extras
    assert set(extras["accuracy_by_instance"]) == set(extras["ci95_by_instance"]) == {str(k) for k in INSTANCES}
    assert "3 classes x 11 images" in extras["instance_note"]
    too_small = synthetic_dataset(per_class=8)  # fewer than 11 images per class: said, not raised
    tasks = FixedEpisodes(too_small.split("test"), too_small.spec, 3, 1, 2, count=2, seed=5)
    extras = get_kind("classification").evaluate(tiny_mann(), tasks).extras
    assert "unavailable" in extras["instance_note"] and "accuracy_by_instance" not in extras
