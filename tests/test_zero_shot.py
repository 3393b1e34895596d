"""Zero-shot prototypes from descriptors (Snell et al. 2017, 2.7): training prototypes come from the episode's
class descriptors only (support images change nothing), probabilities match an independent computation, evaluation
is zero-shot with chance and a one-shot ProtoNet beside it, a tiny Trainer run with the inspection record and a
checkpoint round trip, and clear errors for data and models without descriptors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import synthetic_dataset, tiny_dataset_config
from workbench.core import data
from workbench.core.algorithms import ModelSpec, get_algorithm
from workbench.core.data.descriptors import DescriptorField, episode_descriptors
from workbench.core.data.episodes import EpisodeSampler, FixedEpisodes
from workbench.core.errors import ConfigError
from workbench.core.kinds import get_kind
from workbench.core.runs import load_model
from workbench.core.snapshots import INSPECTION_FILE, read_inspections
from workbench.core.stats import mean_ci95
from workbench.core.training import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
WAYS = 3
TINY = {"hidden": 8, "descriptor_hidden": 16}
CELLS = 4  # the synthetic classes are noisy copies of a random 4x4 pattern: its cells describe a class


def described(dataset):
    """The synthetic dataset with a descriptor per class: its mean image pooled to 4x4 (the class's pattern)."""
    fields = tuple(DescriptorField(f"cell_{r}{c}", f"Cell {r},{c}", 0.0, 255.0, "Mean brightness of a cell.")
                   for r in range(CELLS) for c in range(CELLS))
    for split in dataset.splits.values():
        means = torch.stack([split.images[split.labels == k].float().mean(0) for k in range(split.num_classes)])
        split.descriptor_fields = fields
        split.descriptors = F.adaptive_avg_pool2d(means, CELLS).flatten(1)
    return dataset


@pytest.fixture
def dataset(monkeypatch):
    """load_dataset() returns the described synthetic dataset whatever the config names."""
    found = described(synthetic_dataset())
    monkeypatch.setattr(data, "load_dataset", lambda config, progress=data.no_progress, use_cache=True: found)
    return found


def make_model(dataset, **hparams):
    cls = get_algorithm("zero-shot")
    algorithm = cls(cls.build_hparams({**TINY, **hparams}), ModelSpec(1, 16, WAYS, 12))
    algorithm.attach_training_data(dataset, tiny_dataset_config())
    algorithm.configure_optimizers(1e-2, 10)
    return algorithm


def train_episode(dataset, seed: int = 0):
    return EpisodeSampler(dataset.split("train"), dataset.spec, WAYS, 2, 3, seed=seed).sample()


def test_training_prototypes_come_from_descriptors_not_support_images(dataset):
    algorithm = make_model(dataset)
    episode = train_episode(dataset)
    algorithm.train()
    logits = algorithm.episode_logits(episode)
    episode.support_x = torch.randn_like(episode.support_x) * 5  # other images: nothing changes
    torch.testing.assert_close(algorithm.episode_logits(episode), logits)
    episode.support_x.requires_grad_(True)
    F.cross_entropy(algorithm.episode_logits(episode), episode.query_y).backward()
    assert episode.support_x.grad is None  # the loss does not depend on them at all
    assert algorithm.describer.net[0].weight.grad is not None  # it trains the descriptor encoder
    shuffled = episode.class_names[::-1]  # other classes' descriptors: other logits
    episode.class_names = shuffled
    assert not torch.allclose(algorithm.episode_logits(episode), logits)


def test_probabilities_are_a_softmax_over_squared_distances_to_unit_prototypes(dataset):
    algorithm = make_model(dataset)
    episode = FixedEpisodes(dataset.split("test"), dataset.spec, WAYS, 1, 2, count=1, seed=3)[0]
    descriptors = episode_descriptors(dataset.split("test"), episode.class_ids)
    probs = algorithm.predict(algorithm.adapt_from_descriptors(descriptors), episode.query_x)
    with torch.no_grad():  # by hand: scale to [-1, 1], the MLP, unit length, -||f(x) - g(v)||^2
        x = 2 * descriptors / 255.0 - 1
        layer1, layer2 = algorithm.describer.net[0], algorithm.describer.net[2]
        g = torch.relu(x @ layer1.weight.T + layer1.bias) @ layer2.weight.T + layer2.bias
        g = g / g.norm(dim=1, keepdim=True)
        f = algorithm.encoder(episode.query_x)
        expected = (-((f[:, None] - g[None]) ** 2).sum(-1)).softmax(1)
    torch.testing.assert_close(probs, expected, rtol=1e-4, atol=1e-5)
    assert algorithm.adapt_from_descriptors(descriptors)["prototypes"].norm(dim=1).tolist() == pytest.approx([1] * 3)
    linear = make_model(dataset, descriptor_hidden=0, unit_prototypes=False)
    assert isinstance(linear.describer.net, torch.nn.Linear)  # the paper's linear map
    assert linear.adapt_from_descriptors(descriptors)["prototypes"].norm(dim=1).sub(1).abs().max() > 1e-3


def test_evaluation_is_zero_shot_with_chance_and_a_one_shot_protonet_beside_it(dataset):
    algorithm = make_model(dataset)
    for seed in range(15):
        algorithm.meta_train_step([train_episode(dataset, seed)])
    tasks = FixedEpisodes(dataset.split("test"), dataset.spec, WAYS, 2, 3, count=8, seed=5)
    result = get_kind("classification").evaluate(algorithm, tasks)
    zero_shot, one_shot = [], []
    for index in range(len(tasks)):  # by hand: prototypes from descriptors; then from one image per class
        episode = tasks[index]
        adapted = algorithm.adapt_from_descriptors(episode_descriptors(tasks.split, episode.class_ids))
        zero_shot.append(float((algorithm.predict(adapted, episode.query_x).argmax(1) == episode.query_y)
                               .float().mean()))
        first = episode.support_x[[0, 2, 4]]  # 2 shots, laid out class by class
        image = algorithm.predict({"prototypes": algorithm.embed(first)}, episode.query_x)
        one_shot.append(float((image.argmax(1) == episode.query_y).float().mean()))
    assert result.accuracy == pytest.approx(mean_ci95(zero_shot)[0])
    extras = result.extras
    assert extras["chance"] == pytest.approx(1 / WAYS)
    assert extras["protonet_one_shot"]["accuracy"] == pytest.approx(mean_ci95(one_shot)[0])
    assert extras["protonet_one_shot"]["episodes"] == 8 and extras["protonet_one_shot"]["ci95"] >= 0


def test_trains_through_the_trainer_records_its_heatmap_and_reloads_identically(dataset):
    config = tiny_dataset_config(algorithm={"name": "zero-shot", "hparams": TINY},
                                 training={"steps": 6, "val_interval": 3, "checkpoint_interval": 3, "lr": 1e-2})
    trainer = Trainer(config)
    records = []
    assert trainer.run_all(records.append).event == "finished"
    losses = [r.loss for r in records if r.event == "step"]
    assert len(losses) == 6 and all(np.isfinite(losses))
    history = read_inspections(trainer.run.path / INSPECTION_FILE)
    assert history.steps == [3, 6]
    record = history.records[-1]["descriptor_prototypes"]
    rows, columns = record["values"].shape
    assert columns == WAYS and rows <= 10
    np.testing.assert_allclose(record["values"].sum(1), 1, atol=1e-5)
    assert record["row_images"].shape == (rows, 16, 16) and record["column_images"].shape == (columns, 16, 16)
    assert len(record["rows"]) == rows and set(record["rows"]) <= set(record["columns"])

    live = trainer.algorithm
    loaded = load_model(trainer.run, kind="last").algorithm
    assert loaded.descriptor_space.fields == live.descriptor_space.fields
    assert loaded.descriptor_space.presets.keys() == live.descriptor_space.presets.keys()
    tasks = FixedEpisodes(dataset.split("test"), dataset.spec, WAYS, 1, 2, count=3, seed=4)
    for index in range(len(tasks)):
        episode = tasks[index]
        descriptors = episode_descriptors(tasks.split, episode.class_ids)
        expected = live.predict(live.adapt_from_descriptors(descriptors), episode.query_x)
        torch.testing.assert_close(loaded.predict(loaded.adapt_from_descriptors(descriptors), episode.query_x),
                                   expected)


def test_data_and_models_without_descriptors_say_what_to_do(use_synthetic_data):
    config = tiny_dataset_config(algorithm={"name": "zero-shot", "hparams": TINY})
    with pytest.raises(ConfigError, match="'synthetic' has no class descriptors.*descriptors.csv"):
        Trainer(config)
    cls = get_algorithm("zero-shot")
    fresh = cls(cls.build_hparams(TINY), ModelSpec(1, 16, WAYS, 12))
    with pytest.raises(ConfigError, match="met no class descriptors"):
        fresh.adapt_from_descriptors(torch.zeros(WAYS, 16))
    episode = train_episode(use_synthetic_data)
    adapted = fresh.adapt(episode.support_x, episode.support_y, WAYS)  # images: the encoder as a ProtoNet
    assert fresh.predict(adapted, episode.query_x).shape == (len(episode.query_x), WAYS)
    assert fresh.inspect() == {} and "descriptor_space" not in fresh.state_dict()


def test_try_a_task_classifies_queries_against_described_classes(dataset, tmp_path):
    from workbench.core.checkpoints import LoadedModel
    from workbench.core.tryatask import (Task, TaskError, TaskImage, classify, descriptor_space_of, preprocess,
                                         to_model_input)

    algorithm = make_model(dataset)
    model = LoadedModel(algorithm.eval(), dataset.spec, None, {})
    space = descriptor_space_of(model)
    names = [f.name for f in space.fields]
    test = dataset.split("test")
    task = Task()
    for index in (0, 3):
        task.add_class(f"c{index}")
        task.describe(f"c{index}", dict(zip(names, test.class_descriptors[index].tolist())))
    pixels = test.images[test.labels == 3][:2]
    task.add_queries([TaskImage.from_array(image[0].numpy(), f"q{k}.png") for k, image in enumerate(pixels)])
    result = classify(model, task, embeddings=True)
    queries = to_model_input(preprocess(task.queries, dataset.spec)[0], dataset.spec)  # as try-a-task reads images
    expected = algorithm.predict(algorithm.adapt_from_descriptors(test.class_descriptors[[0, 3]]), queries)
    for prediction, row in zip(result.predictions, expected):
        assert [prediction.probabilities[c] for c in ("c0", "c3")] == pytest.approx(row.tolist(), abs=1e-5)
    assert result.prototype_embeddings.shape == (2, algorithm.encoder.out_dim) and len(result.support_embeddings) == 0
    again = Task.load(task.save(tmp_path / "task"))
    assert [c.descriptor for c in again.classes] == [c.descriptor for c in task.classes]

    task.describe("c3", {n: 1.0 for n in names[1:]})
    with pytest.raises(TaskError, match=f"missing {names[0]}"):
        classify(model, task)
    task.describe("c3", None)
    with pytest.raises(TaskError, match="at least two classes"):
        classify(model, task)
    image_model = LoadedModel(get_algorithm("protonet")(get_algorithm("protonet").build_hparams({"hidden": 8}),
                                                        ModelSpec(1, 16, WAYS, 12)), dataset.spec, None, {})
    with pytest.raises(TaskError, match="does not classify from descriptors"):
        classify(image_model, task)
