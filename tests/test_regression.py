"""Few-shot sine regression (Finn et al. 2017, section 5.1): the task distribution, fixed tasks, the MLP, MAML and
the pretrained baseline on the regression kind, the MSE-by-steps evaluation, the trainer end to end (metrics,
best checkpoint by lowest MSE, fit history), checkpoints and `workbench eval`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from workbench.core.algorithms import ModelSpec, get_algorithm
from workbench.core.config import ExperimentConfig
from workbench.core.data import load_dataset
from workbench.core.data.episodes import LabeledBatch
from workbench.core.data.sine import AMPLITUDE, PHASE, X_RANGE, SineBatchSampler, SineSampler, SineTasks
from workbench.core.errors import ConfigError
from workbench.core.evaluation import evaluate_run
from workbench.core.kinds import get_kind
from workbench.core.kinds.regression import FewShotRegression, RegressionResult
from workbench.core.models.mlp import MLPRegressor
from workbench.core.runs import RunStore, load_model
from workbench.core.snapshots import FIT_FILE
from workbench.core.training import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = ModelSpec(in_channels=1, image_size=0, ways=1, num_train_classes=0, kind="regression")
KIND = get_kind("regression")
DATASET = SineTasks()
CONFIG = ExperimentConfig.from_dict({"kind": "regression", "algorithm": {"name": "maml", "recipe": "paper"}})


def make(name: str, lr: float = 3e-3, **hparams):
    torch.manual_seed(0)
    cls = get_algorithm(name)
    recipe = next(r for r in cls.recipes if r.kind == "regression")
    algorithm = cls(cls.build_hparams({**recipe.hparams, **hparams}), SPEC)
    algorithm.configure_optimizers(lr, 100, "constant")
    return algorithm


def fixed(split="test", count=20, seed=5, **kwargs):
    return KIND.fixed_tasks(DATASET, CONFIG, split, count, seed, **kwargs)


# --- data ------------------------------------------------------------------------------------------------------
def test_sine_tasks_follow_the_paper_distribution():
    sampler = SineSampler(DATASET, shots=5, queries=7, seed=0)
    tasks = [sampler.sample() for _ in range(400)]
    task = tasks[0]
    assert task.support_x.shape == task.support_y.shape == (5, 1)
    assert task.query_x.shape == task.query_y.shape == (7, 1) and task.ways == 1
    amplitudes = np.array([t.amplitude for t in tasks])
    phases = np.array([t.phase for t in tasks])
    xs = torch.cat([torch.cat([t.support_x, t.query_x]) for t in tasks])
    assert AMPLITUDE[0] <= amplitudes.min() and amplitudes.max() <= AMPLITUDE[1]
    assert PHASE[0] <= phases.min() and phases.max() <= PHASE[1]
    assert X_RANGE[0] <= float(xs.min()) and float(xs.max()) <= X_RANGE[1]
    # Uniform draws fill their ranges (not, say, a constant or a narrow band).
    assert amplitudes.max() - amplitudes.min() > 4.5 and phases.max() - phases.min() > 2.9
    assert float(xs.max() - xs.min()) > 9.5
    for t in tasks[:5]:
        expected = t.amplitude * torch.sin(torch.cat([t.support_x, t.query_x]) - t.phase)
        assert torch.allclose(torch.cat([t.support_y, t.query_y]), expected, atol=1e-5)
        assert torch.allclose(t.target(t.query_x), t.query_y, atol=1e-5)
    batch = SineBatchSampler(DATASET, batch_size=300, seed=0).sample()
    assert isinstance(batch, LabeledBatch) and batch.x.shape == batch.y.shape == (300, 1)
    assert float(batch.y.abs().max()) <= AMPLITUDE[1]
    assert load_dataset(CONFIG.dataset).summary()["name"] == "sine"


def test_fixed_tasks_are_identical_across_calls_and_differ_between_splits():
    first, again = fixed(), fixed()
    assert len(first) == 20 and first.shots == 10 and first.queries == 100  # the recipe's K and queries
    for a, b in zip(first, again):
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
    val, other_seed = fixed("val"), fixed(seed=6)
    assert not torch.equal(first[0].support_x, val[0].support_x)
    assert not torch.equal(first[0].support_x, other_seed[0].support_x)
    small = fixed(shots=5, queries=3)
    assert small[0].support_x.shape == (5, 1) and small[0].query_x.shape == (3, 1)
    with pytest.raises(ConfigError, match="ways"):
        fixed(ways=5)


def test_mlp_is_1_40_40_1_with_features_and_head():
    network = KIND.build_network(SPEC, 40)
    assert isinstance(network, MLPRegressor) and network.features.out_dim == 40
    assert network(torch.zeros(7, 1)).shape == (7, 1)
    shapes = {name: tuple(p.shape) for name, p in network.named_parameters()}
    assert shapes == {"features.0.weight": (40, 1), "features.0.bias": (40,), "features.2.weight": (40, 40),
                      "features.2.bias": (40,), "head.weight": (1, 40), "head.bias": (1,)}
    assert KIND.build_encoder(SPEC, 40)(torch.zeros(3, 1)).shape == (3, 40)
    assert KIND.model_spec(DATASET, CONFIG) == SPEC


# --- algorithms ------------------------------------------------------------------------------------------------
def mean_mse_after(algorithm, tasks, steps: int) -> float:
    errors = []
    for task in tasks:
        predicted = algorithm.predict(algorithm.adapt(task.support_x, task.support_y, 1, steps=steps), task.query_x)
        errors.append(float(((predicted - task.query_y) ** 2).mean()))
    return float(np.mean(errors))


@pytest.mark.parametrize("name", ["maml", "fomaml"])
def test_maml_meta_steps_lower_the_mse_of_fixed_tasks(name):
    algorithm = make(name, lr=1e-2)
    tasks = fixed("val", count=30)
    before = mean_mse_after(algorithm, tasks, 1)
    sampler = SineSampler(DATASET, shots=10, queries=10, seed=0)
    records = [algorithm.meta_train_step([sampler.sample() for _ in range(10)]) for _ in range(100)]
    assert set(records[0]) == {"loss", "mse"}  # the kind's metric, not "accuracy"
    assert all(math.isfinite(r["loss"]) and r["mse"] == pytest.approx(r["loss"]) for r in records)
    after = mean_mse_after(algorithm, tasks, 1)
    assert after < 0.7 * before, (before, after)  # about 4.3 -> 2.3


@pytest.mark.parametrize("hparams", [{}, {"train_inner_steps": 2}, {"first_order": True, "train_inner_steps": 2},
                                     {"head": "zero"}])
def test_tasks_batched_with_vmap_give_the_loops_meta_gradient(hparams):
    gradients = []
    for vmapped in (True, False):
        algorithm = make("maml", **hparams)
        algorithm.model.double()
        algorithm._vmap_tasks = vmapped
        tasks = fixed(count=5, queries=7)
        for task in tasks:
            for name in ("support_x", "support_y", "query_x", "query_y"):
                setattr(task, name, getattr(task, name).double())
        out = algorithm.meta_train_step(list(tasks))
        gradients.append((torch.cat([p.grad.flatten() for p in algorithm.model.parameters() if p.grad is not None]),
                          out))
    (vmapped, vmapped_out), (looped, looped_out) = gradients
    assert vmapped.abs().max() > 0 and torch.allclose(vmapped, looped, rtol=1e-10, atol=1e-12)
    assert vmapped_out == pytest.approx(looped_out, rel=1e-12)


def test_maml_trace_adapt_and_predict_agree():
    algorithm = make("maml")
    task = fixed()[0]
    trace = algorithm.adaptation_trace(task.support_x, task.support_y, task.query_x, task.query_y, ways=1, steps=10)
    assert [t["step"] for t in trace] == list(range(11)) and "query_mse" in trace[0]
    assert "query_accuracy" not in trace[0]
    for steps in (0, 1, 10):
        predicted = algorithm.predict(algorithm.adapt(task.support_x, task.support_y, 1, steps=steps), task.query_x)
        assert predicted.shape == (100, 1)
        assert float(((predicted - task.query_y) ** 2).mean()) == pytest.approx(trace[steps]["query_mse"], rel=1e-5)
    assert trace[10]["support_loss"] < trace[0]["support_loss"]  # adapting fits the K points


def test_pretrained_baseline_learns_the_pooled_tasks_then_fine_tunes_the_whole_regressor():
    algorithm = make("finetune")
    assert algorithm.classifier.out_features == 1
    sampler = SineBatchSampler(DATASET, batch_size=250, seed=0)
    records = [algorithm.meta_train_step(sampler.sample()) for _ in range(60)]
    assert set(records[0]) == {"loss", "mse"}
    assert np.mean([r["loss"] for r in records[-10:]]) < np.mean([r["loss"] for r in records[:10]])
    task = fixed()[1]
    # Zero steps: the pre-trained regressor itself (its head is kept, not replaced by a fresh one).
    unadapted = algorithm.predict(algorithm.adapt(task.support_x, task.support_y, 1, steps=0), task.query_x)
    with torch.no_grad():
        assert torch.allclose(unadapted, algorithm.classifier(algorithm.encoder(task.query_x)))
    trace = algorithm.adaptation_trace(task.support_x, task.support_y, task.query_x, task.query_y, ways=1, steps=10)
    assert len(trace) == 11 and "query_mse" in trace[0]
    assert trace[10]["support_loss"] < trace[0]["support_loss"]
    adapted = algorithm.adapt(task.support_x, task.support_y, 1)  # the recipe's 10 steps
    assert adapted["encoder"] is not None  # the whole network is fine-tuned
    assert float(((algorithm.predict(adapted, task.query_x) - task.query_y) ** 2).mean()) == pytest.approx(
        trace[10]["query_mse"], rel=1e-5)


def test_recipes_set_the_paper_setup_and_every_algorithm_has_one_for_images():
    config = ExperimentConfig.from_dict({"kind": "regression", "algorithm": {"name": "fomaml", "recipe": "paper"}})
    assert (config.dataset.name, config.dataset.shots, config.dataset.queries) == ("sine", 10, 100)
    assert (config.training.meta_batch, config.training.lr, config.training.threads) == (25, 1e-3, 1)
    hparams = get_algorithm("fomaml").build_hparams(config.algorithm.hparams)
    assert (hparams.hidden, hparams.train_inner_lr, hparams.train_inner_steps, hparams.test_inner_steps) == \
        (40, 0.01, 1, 10)
    explicit = ExperimentConfig.from_dict({"kind": "regression", "dataset": {"shots": 5},
                                           "algorithm": {"name": "maml", "recipe": "paper"}})
    assert explicit.dataset.shots == 5  # fields given explicitly win over the recipe's
    for name in ("maml", "fomaml", "finetune", "nearest-neighbour", "protonet"):
        cls = get_algorithm(name)
        assert any(r.kind == "classification" and r.recommended for r in cls.recipes), name
        assert all(r.kind in cls.kinds for r in cls.recipes)
    for name in ("maml", "fomaml", "finetune"):
        assert get_algorithm(name).supports("regression")


# --- evaluation ------------------------------------------------------------------------------------------------
def test_evaluation_reports_mse_after_0_1_and_10_steps():
    algorithm = make("maml")
    tasks = fixed(count=12)
    result = KIND.evaluate(algorithm, tasks, split="test")
    assert isinstance(result, RegressionResult) and result.steps == 10
    assert list(result.mse_by_steps) == ["0", "1", "10"]
    assert result.value == result.mse == result.mse_by_steps["10"]
    assert result.per_task_mse.shape == (12, 3)
    assert result.mse_by_steps["1"] == pytest.approx(result.per_task_mse[:, 1].mean(), rel=1e-5)
    assert result.mse_by_steps["1"] == pytest.approx(mean_mse_after(algorithm, tasks, 1), rel=1e-5)
    data = result.to_dict()
    for key in ("kind", "mse", "ci95", "mse_by_steps", "ci95_by_steps", "episodes", "shots", "queries", "seed",
                "steps", "run", "dataset", "algorithm", "checkpoint", "created", "elapsed_s"):
        assert key in data, key
    assert (data["kind"], data["episodes"], data["shots"], data["queries"], data["seed"]) == \
        ("regression", 12, 10, 100, 5)
    json.dumps(data, allow_nan=False)
    again = FewShotRegression.result_from_dict(data, result.arrays())
    assert again.mse_by_steps == pytest.approx(result.mse_by_steps) and again.per_task_mse.shape == (12, 3)
    assert result.index_fields()["test_mse"] == result.mse
    assert result.file_stem() == "k10-12tasks-seed5"
    assert result.summary().startswith(f"MSE {result.mse:.3f} ± {result.ci95:.3f} after 10 steps (0 steps: ")
    # The headline follows the algorithm's own test steps.
    assert KIND.evaluate(make("maml", test_inner_steps=3), tasks).steps == 3


def test_an_algorithm_without_an_inner_loop_is_scored_by_its_own_adaptation():
    from workbench.core.algorithms.base import Algorithm, Family

    class SupportMean(Algorithm):  # predicts the mean of the K support values everywhere
        name, title, family, summary, description = "support-mean", "Support mean", Family.BASELINE, "-", "-"
        kinds = ("regression",)

        def modules(self):
            return {}

        def meta_train_step(self, batch):
            return {"loss": 0.0, "mse": 0.0}

        def adapt(self, support_x, support_y, ways):
            return support_y.mean()

        def predict(self, adapted, query_x):
            return adapted.expand(len(query_x), 1)

    tasks = fixed(count=6)
    result = KIND.evaluate(SupportMean(None, SPEC), tasks)
    expected = np.mean([float(((t.query_y - t.support_y.mean()) ** 2).mean()) for t in tasks])
    assert result.mse == pytest.approx(expected, rel=1e-6) and result.steps == 0
    assert result.mse_by_steps == {} and result.per_task_mse.shape == (6, 1)
    assert result.summary() == f"MSE {expected:.3f} ± {result.ci95:.3f}"


# --- the trainer, checkpoints and the CLI ---------------------------------------------------------------------------
def tiny_config(**training) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "kind": "regression", "algorithm": {"name": "maml", "recipe": "paper"},
        "training": {"steps": 6, "meta_batch": 4, "val_interval": 2, "val_episodes": 5, "checkpoint_interval": 3,
                     "device": "cpu", **training},
        "evaluation": {"episodes": 8, "seed": 3}})


def test_trainer_records_mse_keeps_the_lowest_validation_mse_and_writes_the_fit_history(monkeypatch):
    real_evaluate = FewShotRegression.evaluate
    planned = iter([3.0, 1.0, 2.0])  # validation MSEs at steps 2, 4, 6: the best is the lowest (step 4)

    def evaluate(self, algorithm, tasks, device="cpu", progress=None, split="test"):
        result = real_evaluate(self, algorithm, tasks, device, split=split)
        result.mse = next(planned)
        return result

    monkeypatch.setattr(FewShotRegression, "evaluate", evaluate)
    trainer = Trainer(tiny_config())
    final = trainer.run_all()
    assert final.event == "finished" and final.metric == "mse"
    assert (trainer.best_step, trainer.best_val_score) == (4, 1.0)
    assert trainer.run.load_checkpoint("best")["step"] == 4
    metrics = trainer.run.read_metrics()
    steps = [m for m in metrics if m["event"] == "step"]
    assert len(steps) == 6 and all("mse" in m and "accuracy" not in m for m in steps)
    assert [m["val_mse"] for m in metrics if m["event"] == "validation"] == [3.0, 1.0, 2.0]
    assert trainer.run.record().best_val_mse == 1.0

    with np.load(trainer.run.path / FIT_FILE) as fit:
        arrays = {key: fit[key] for key in fit.files}
    assert arrays["steps"].tolist() == [2, 4, 6] and arrays["steps"].dtype == np.int64
    assert arrays["x_grid"].shape == arrays["true_y"].shape == (200,)
    assert arrays["support_x"].shape == arrays["support_y"].shape == (10,)
    assert arrays["inner_steps"].tolist() == list(range(11))
    assert arrays["predictions"].shape == (3, 11, 200) and arrays["predictions"].dtype == np.float32
    assert arrays["probe_mse"].shape == (3, 11)
    truth = float(arrays["amplitude"]) * np.sin(arrays["x_grid"] - float(arrays["phase"]))
    assert np.allclose(arrays["true_y"], truth, atol=1e-4) and str(arrays["algorithm"]) == "maml"
    errors = ((arrays["predictions"] - arrays["true_y"]) ** 2).mean(-1)
    assert np.allclose(errors, arrays["probe_mse"], rtol=1e-4)


def test_checkpoint_round_trip_evaluates_identically_and_eval_prints_mse(capsys):
    from workbench.cli import main

    store = RunStore()
    trainer = Trainer(tiny_config(steps=4), store)
    trainer.run_all()
    tasks = KIND.fixed_tasks(DATASET, trainer.config, "test", 6, 3)
    live = KIND.evaluate(trainer.algorithm, tasks)
    loaded = load_model(trainer.run, kind="last").algorithm
    assert KIND.evaluate(loaded, tasks).mse_by_steps == live.mse_by_steps

    assert main(["eval", trainer.run.id, "--json", "--episodes", "6", "--checkpoint", "last", "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "regression" and data["mse_by_steps"] == pytest.approx(live.mse_by_steps)
    assert (data["episodes"], data["shots"], data["queries"], data["steps"]) == (6, 10, 100, 10)
    assert store.get(trainer.run.id).record().test_mse == pytest.approx(live.mse)
    saved = trainer.run.load_evaluation("k10-6tasks-seed3-last")
    assert saved.mse == pytest.approx(live.mse) and saved.per_task_mse.shape == (6, 3)

    assert main(["eval", trainer.run.id, "--episodes", "6", "--checkpoint", "last", "--quiet", "--no-save"]) == 0
    out = capsys.readouterr().out
    assert f"MSE {live.mse:.3f} ± {live.ci95:.3f} after 10 steps (0 steps: {live.mse_by_steps['0']:.3f}, " \
           f"1 step: {live.mse_by_steps['1']:.3f})" in out
    assert evaluate_run(trainer.run, store, episodes=6, checkpoint="last", save=False).mse == pytest.approx(live.mse)


def test_a_diverged_evaluation_saves_as_json_with_none_and_reads_back_as_nan():
    import json as json_module
    import math

    from workbench.core.kinds.regression import RegressionResult

    result = RegressionResult(mse=float("nan"), ci95=float("inf"), episodes=3, shots=10, queries=100, seed=1,
                              steps=10, mse_by_steps={"0": 2.0, "10": float("nan")},
                              ci95_by_steps={"0": 0.1, "10": float("nan")})
    text = json_module.dumps(result.to_dict(), allow_nan=False)  # the run store writes with allow_nan=False
    data = json_module.loads(text)
    assert data["mse"] is None and data["mse_by_steps"] == {"0": 2.0, "10": None}
    back = RegressionResult.from_dict(data)
    assert math.isnan(back.mse) and back.mse_by_steps["0"] == 2.0 and math.isnan(back.mse_by_steps["10"])
