"""Architecture search (DARTS): the second-order architecture gradient against the exact one, the search space and
its derivation, the search tasks, and a tiny search through the trainer, the evaluation's retraining comparison
and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from conftest import synthetic_dataset
from workbench import cli
from workbench.core.algorithms.darts import arch_gradient, exact_arch_gradient
from workbench.core.config import ExperimentConfig
from workbench.core.data.episodes import Episode, LabeledBatch
from workbench.core.kinds import get_kind
from workbench.core.kinds.architecture_search import (ArchitectureResult, RetrainTasks, class_halves,
                                                      image_halves)
from workbench.core.models import darts_cell
from workbench.core.models.darts_cell import PRIMITIVES, Genotype, SearchNetwork, derive, random_genotype


# --- the second-order approximation ---------------------------------------------------------------------------
class SoftMaxPool(torch.nn.Module):
    """A smooth stand-in for 3x3 max pooling (log-sum-exp), same shapes."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        windows = F.unfold(x.reshape(-1, 1, *x.shape[2:]), 3, padding=1, stride=self.stride)
        side = (x.shape[-1] - 1) // self.stride + 1
        return (torch.logsumexp(4 * windows, dim=1) / 4).reshape(*x.shape[:2], side, side)


def _smooth(network: torch.nn.Module) -> torch.nn.Module:
    """ReLU and max pooling made smooth: finite differences then converge to the Hessian-vector product everywhere
    (with kinks, a difference that straddles one does not, whatever the step)."""
    for module in list(network.modules()):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.ReLU):
                setattr(module, name, torch.nn.Softplus(beta=4))
            elif isinstance(child, darts_cell.MaxPool3x3):
                setattr(module, name, SoftMaxPool(child.stride))
    return network


def _tiny_problem(part: str):
    """A float64 search network on 8x8 images, its loss function and a train/val pair (batches or episodes)."""
    torch.manual_seed(0)
    network = _smooth(SearchNetwork(in_channels=1, channels=2, cells=2, classes=3).double())
    network.alpha_normal.data.normal_(0, 0.5)  # away from uniform, so every term is non-trivial
    network.alpha_reduce.data.normal_(0, 0.5)
    x = torch.randn(24, 1, 8, 8, dtype=torch.float64)
    labels = torch.arange(3).repeat(8)
    if part == "batch":
        train, val = LabeledBatch(x[:12], labels[:12]), LabeledBatch(x[12:], labels[12:])
    else:
        def episode(rows):
            return Episode(x[rows][:3], torch.arange(3), x[rows][3:], labels[rows][3:], [0, 1, 2], ["a", "b", "c"])
        train, val = episode(torch.arange(12)), episode(torch.arange(12, 24))
    kind = get_kind("architecture-search")
    arch = set(network.arch_names())
    named = dict(network.named_parameters())
    weights = {n: p for n, p in named.items() if n not in arch}
    alphas = {n: named[n] for n in network.arch_names()}

    def loss_of(w, a, which):
        def forward(inputs, head=False):
            return functional_call(network, {**w, **a}, (inputs,), {"head": head})
        logits, targets = kind.logits(forward, {"train": train, "val": val}[which])
        return F.cross_entropy(logits, targets)

    return loss_of, weights, alphas


def _flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("part", ["batch", "episode"])
def test_second_order_gradient_matches_the_exact_gradient_through_the_unrolled_step(part, one_torch_thread):
    """DARTS' eq. 7 with the finite-difference Hessian-vector product of eq. 8 against autograd through
    w' = w - xi grad_w L_train(w, alpha): close at the paper's eps (0.01 / ||v||) and closer as eps**2 (central
    differences) below it; the first-order gradient, without the second term, is far off."""
    loss_of, weights, alphas = _tiny_problem(part)
    xi = 0.5
    exact = _flat(exact_arch_gradient(loss_of, weights, alphas, xi))

    def error(epsilon):
        approximate = _flat(arch_gradient(loss_of, weights, alphas, xi, order=2, epsilon=epsilon)[0])
        return float((approximate - exact).norm() / exact.norm())

    coarse, fine = error(0.01), error(1e-4)
    assert coarse < 0.02 and fine < 1e-5 and fine < coarse / 1000, (coarse, fine)
    first = _flat(arch_gradient(loss_of, weights, alphas, xi, order=1)[0])
    assert float((first - exact).norm() / exact.norm()) > 0.3  # the second-order term matters here


# --- the search space ---------------------------------------------------------------------------------------------
def test_max_pool_matches_torch_and_operations_keep_shapes(one_torch_thread):
    x = torch.randn(2, 4, 9, 9)
    for stride in (1, 2):
        assert torch.equal(darts_cell.MaxPool3x3(stride)(x), F.max_pool2d(x, 3, stride, 1))
        for name in PRIMITIVES:
            out = darts_cell.make_op(name, 4, stride, affine=True)(x)
            assert out.shape == (2, 4, 5 if stride == 2 else 9, 5 if stride == 2 else 9), name


def test_derive_keeps_each_nodes_two_strongest_edges_and_never_zero():
    weights = np.full((darts_cell.edge_count(), len(PRIMITIVES)), 0.1)
    zero, skip, sep = PRIMITIVES.index("none"), PRIMITIVES.index("skip_connect"), PRIMITIVES.index("sep_conv_3x3")
    weights[:, zero] = 0.9  # zero is strongest everywhere, yet never chosen
    weights[0, skip] = 0.5  # node 0: edges k-2 (skip) and k-1 (sep)
    weights[1, sep] = 0.4
    weights[2 + 2, sep] = 0.6  # node 1: only its edge from node 0 stands out; the tie is broken by order
    weights[5 + 3, skip] = 0.7  # node 2: edges from node 1 and k-1
    weights[5 + 1, sep] = 0.3
    cell = derive(weights)
    assert cell[0:2] == (("skip_connect", 0), ("sep_conv_3x3", 1))
    assert cell[2:4] == (("max_pool_3x3", 0), ("sep_conv_3x3", 2))
    assert cell[4:6] == (("sep_conv_3x3", 1), ("skip_connect", 3))
    assert all(op != "none" for op, _ in cell) and len(cell) == 8


def test_a_random_cell_comes_from_the_same_space_and_its_seed():
    one, again, other = random_genotype(3), random_genotype(3), random_genotype(4)
    assert one == again and one != other
    for cell in (one.normal, one.reduce):
        for node in range(darts_cell.NODES):
            (op_a, a), (op_b, b) = cell[2 * node:2 * node + 2]
            assert 0 <= a < b < 2 + node and {op_a, op_b} <= set(PRIMITIVES[1:])
    assert Genotype.from_dict(json.loads(json.dumps(one.to_dict()))) == one
    with pytest.raises(ValueError, match="genotype"):
        Genotype.from_dict({"normal": []})


def test_networks_of_the_space_reduce_where_darts_does(one_torch_thread):
    assert darts_cell.reduction_cells(3) == {1, 2} and darts_cell.reduction_cells(2) == {1}
    assert darts_cell.reduction_cells(8) == {2, 5}
    x = torch.randn(3, 1, 28, 28)
    search = SearchNetwork(1, 4, 3, classes=5, stem_stride=2)
    assert search(x).shape == (3, search.out_dim) and search(x, head=True).shape == (3, 5)
    discrete = darts_cell.DiscreteNetwork(search.genotype(), 1, 4, 3, stem_stride=2)
    assert discrete(x).shape == (3, discrete.out_dim)
    assert darts_cell.parameter_count(discrete) < darts_cell.parameter_count(search)
    drawing = darts_cell.draw_cell(search.genotype().normal, "normal cell", 128)
    assert drawing.shape == (128, 128, 3) and 0 <= drawing.min() and drawing.max() <= 1 and drawing.std() > 0


# --- the search tasks -----------------------------------------------------------------------------------------
def test_search_tasks_hold_out_disjoint_data_for_alpha():
    split = synthetic_dataset().split("train")
    first, second = class_halves(split)
    assert not set(first.class_names) & set(second.class_names)
    assert set(first.class_names) | set(second.class_names) == set(split.class_names)
    for half in (first, second):  # labels renumbered, images those of the named classes
        assert half.labels.max() == half.num_classes - 1
    rows_a, rows_b = image_halves(split)
    assert not set(rows_a.tolist()) & set(rows_b.tolist()) and len(rows_a) + len(rows_b) == len(split)
    assert set(split.labels[rows_a].tolist()) == set(split.labels[rows_b].tolist())  # every class on both sides


def test_too_few_training_classes_for_two_halves_is_an_error_naming_the_setting():
    from workbench.core.errors import ConfigError
    from workbench.core.kinds.architecture_search import EpisodePairSampler

    dataset = synthetic_dataset(train_classes=5)
    with pytest.raises(ConfigError, match="two halves") as caught:
        EpisodePairSampler(dataset.split("train"), dataset.spec, 3, 1, 1, seed=0)
    assert caught.value.field == "task.search_task"


# --- through the trainer, the evaluation and the CLI ------------------------------------------------------------
TINY_TASK = {"retrain_steps": 3, "retrain_channels": 4, "retrain_cells": 2, "conv4_width": 8}


def _tiny_config(task: dict | None = None, **training) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "kind": "architecture-search", "task": {**TINY_TASK, **(task or {})},
        "dataset": {"name": "glyphs", "image_size": 16, "ways": 3, "shots": 1, "queries": 2},
        "algorithm": {"name": "darts", "hparams": {"init_channels": 2, "cells": 2}},
        "training": {"steps": 4, "val_interval": 2, "val_episodes": 3, "checkpoint_interval": 2, "device": "cpu",
                     "threads": 1, "seed": 0, "lr": 0.05, "train_queries": 2, **training},
        "evaluation": {"episodes": 4, "seed": 7}})


@pytest.mark.parametrize("task", ["episodes", "classification"])
def test_a_tiny_search_trains_records_alpha_and_retrains_three_networks(task, use_synthetic_data, one_torch_thread):
    from workbench.core.evaluation import evaluate_run
    from workbench.core.runs import load_model
    from workbench.core.snapshots import INSPECTION_FILE, read_inspections
    from workbench.core.training import Trainer

    trainer = Trainer(_tiny_config({"search_task": task, "batch_size": 8}))
    before = trainer.algorithm.network.alpha_normal.detach().clone()
    assert trainer.run_all().event == "finished"
    assert not torch.equal(before, trainer.algorithm.network.alpha_normal.detach())  # alpha learned
    history = read_inspections(trainer.run.path / INSPECTION_FILE)
    assert history.steps == [2, 4]
    last = history.records[-1]
    assert last["alpha_normal"]["values"].shape == (14, 5)
    np.testing.assert_allclose(last["alpha_normal"]["values"].sum(1), 1, rtol=1e-5)
    assert list(last["ops_reduce"]["step"]) == [1, 2, 3, 4] and last["derived_cell"]["images"].shape[0] == 2

    loaded = load_model(trainer.run, "cpu", kind="last")  # the checkpoint keeps alpha: the same derived cell
    assert loaded.algorithm.genotype() == trainer.algorithm.genotype()
    result = evaluate_run(trainer.run, device="cpu", checkpoint="last")
    assert isinstance(result, ArchitectureResult) and list(result.comparison) == ["derived", "random", "conv4"]
    assert result.per_episode.shape == (3, 4) and result.value == result.comparison["derived"]["accuracy"]
    assert Genotype.from_dict(result.genotype) == trainer.algorithm.genotype() and result.task == task
    saved = trainer.run.load_evaluation(result.file_stem())
    assert saved.comparison == result.comparison  # JSON keeps the floats exactly
    np.testing.assert_array_equal(saved.per_episode, result.per_episode)


def test_retraining_is_fair_and_reproducible(use_synthetic_data, one_torch_thread):
    """The same seed gives the same numbers; each candidate is scored on the same fixed test episodes."""
    from workbench.core.training import Trainer

    trainer = Trainer(_tiny_config(steps=1, val_interval=0))
    trainer.run_all()
    kind = trainer.kind
    tasks = kind.fixed_tasks(trainer.dataset, trainer.config, "test", 4, 7)
    assert isinstance(tasks, RetrainTasks) and len(tasks) == 4
    one = kind.evaluate(trainer.algorithm, tasks)
    two = kind.evaluate(trainer.algorithm, kind.fixed_tasks(trainer.dataset, trainer.config, "test", 4, 7))
    np.testing.assert_array_equal(one.per_episode, two.per_episode)
    assert one.comparison["derived"]["parameters"] != one.comparison["conv4"]["parameters"]
    assert not isinstance(kind.fixed_tasks(trainer.dataset, trainer.config, "val", 3, 7), RetrainTasks)


def test_cli_trains_and_evaluates_the_kind_in_json(capsys, use_synthetic_data, one_torch_thread):
    flags = ["--kind", "architecture-search", "--algorithm", "darts", "--image-size", "16", "--ways", "3",
             "--shots", "1", "--queries", "2", "--steps", "2", "--val-interval", "2", "--val-episodes", "3",
             "--eval-episodes", "3", "--device", "cpu", "--threads", "1", "--hparam", "init_channels=2",
             "--hparam", "cells=2", "--train-queries", "2"]
    flags += [item for key, value in TINY_TASK.items() for item in ("--task", f"{key}={value}")]
    assert cli.main(["train", *flags, "--json", "--quiet"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["kind"] == "architecture-search" and trained["algorithm"] == "darts"
    assert trained["recipe"] == "default" and 0 <= trained["test"]["accuracy"] <= 1
    assert cli.main(["eval", trained["run"], "--episodes", "3", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["comparison"]) == {"derived", "random", "conv4"}
    assert all(0 <= row["accuracy"] <= 1 and row["ci95"] >= 0 for row in result["comparison"].values())
    assert result["derived_cell"].startswith("normal: 0 = ")
    # the comparison also as the evaluation views' breakdown by network
    assert set(result["accuracy_by_network"]) == {"derived cell", "random cell", "Conv-4"}
    assert result["accuracy_by_network"]["Conv-4"] == result["comparison"]["conv4"]["accuracy"]


def test_try_a_task_classifies_with_the_searched_network_as_a_protonet_encoder(one_torch_thread):
    """The kind's try view ("images"): support images per class, then queries, through adapt/predict and embed."""
    from workbench.core.algorithms import get_algorithm
    from workbench.core.checkpoints import LoadedModel
    from workbench.core.data.base import PreprocessSpec
    from workbench.core.models.spec import ModelSpec
    from workbench.core.tryatask import Task, TaskImage, classify

    cls = get_algorithm("darts")
    algorithm = cls(cls.build_hparams({"init_channels": 2, "cells": 2}),
                    ModelSpec(1, 16, 3, 12, kind="architecture-search"))
    model = LoadedModel(algorithm.eval(), PreprocessSpec(16, 1, (0.5,), (0.5,)), None, {"step": 0})
    rng = np.random.default_rng(0)
    patterns = {name: rng.integers(0, 256, (16, 16)) for name in ("a", "b", "c")}
    task = Task()
    for name, pattern in patterns.items():
        task.add_class(name)
        task.add_support(name, [TaskImage.from_array(np.clip(pattern + rng.normal(0, 10, (16, 16)), 0, 255),
                                                     f"{name}-{k}") for k in range(2)])
    task.add_queries([TaskImage.from_array(patterns["b"], "query")])
    result = classify(model, task, embeddings=True)
    [prediction] = result.predictions
    assert prediction.predicted == "b"  # nearest prototype: the query is class b's pattern itself
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert result.query_embeddings is not None and len(result.query_embeddings) == 1
