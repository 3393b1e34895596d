"""LEO (Rusu et al. 2019): the latent and fine-tuning steps against closed forms, the meta-gradient against finite
differences (float64, deterministic: means instead of samples, no dropout), a frozen backbone during
meta-training, a tiny training through the Trainer with its pre-training phase, a checkpoint round trip and the
prototype-classifier comparison every evaluation carries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import synthetic_dataset, tiny_dataset_config
from workbench.core.algorithms import ModelSpec, get_algorithm
from workbench.core.algorithms.leo import (LEONet, Noise, finetune_weights, latent_codes, latent_steps, leo_task_loss,
                                           orthogonality, regularization)
from workbench.core.data.episodes import EpisodeSampler, FixedEpisodes
from workbench.core.errors import ConfigError
from workbench.core.inspection import layer_histograms
from workbench.core.kinds import get_kind
from workbench.core.runs import load_model
from workbench.core.snapshots import INSPECTION_FILE, read_inspections
from workbench.core.training import Trainer

FEATURES, LATENT, WAYS, SHOTS, QUERIES = 6, 3, 3, 2, 2
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks: more threads only contend

TINY = {"hidden": 8, "latent_dim": 8, "pretrain_steps": 3, "pretrain_batch_size": 16}


def tiny_problem(seed: int = 0):
    """A float64 LEO net and one task's support and query features."""
    torch.manual_seed(seed)
    net = LEONet(FEATURES, LATENT, inner_lr=0.5, finetune_lr=0.1).double()
    with torch.no_grad():  # distinct per-dimension rates, so a mixed-up dimension would show
        net.inner_lr.copy_(torch.tensor([0.3, 0.7, 1.1], dtype=torch.float64))
        net.finetune_lr.copy_(torch.linspace(0.05, 0.3, FEATURES, dtype=torch.float64))
    support = torch.randn(WAYS * SHOTS, FEATURES, dtype=torch.float64)
    support_y = torch.arange(WAYS).repeat_interleave(SHOTS)
    query = torch.randn(WAYS * QUERIES, FEATURES, dtype=torch.float64)
    query_y = torch.arange(WAYS).repeat_interleave(QUERIES)
    return net, support, support_y, query, query_y


def deterministic_hparams(**values):
    return get_algorithm("leo").build_hparams({"stochastic": False, "dropout": 0.0, "kl_weight": 0.5,
                                               "encoder_penalty": 0.3, "l2_penalty": 1e-2,
                                               "orthogonality_penalty": 0.2, **values})


def test_latent_and_finetuning_steps_match_their_closed_forms():
    net, support, labels, _, _ = tiny_problem()
    start, kl = latent_codes(net, support, labels, WAYS, 1, Noise())
    assert start.shape == (WAYS, 1, LATENT) and float(kl) == 0.0
    z0 = start.detach().requires_grad_(True)
    latents, loss, weights = latent_steps(net, z0, support, labels, 1, Noise(), create_graph=False)

    # Independently, in numpy: mean weights W = z Dμᵀ; the summed cross-entropy's gradient is (P - Y)ᵀ X for the
    # weights and that times Dμ for the codes; the step is scaled per latent dimension.
    x, y = support.numpy(), np.eye(WAYS)[labels.numpy()]
    decoder_means = net.decoder.weight.detach().numpy()[:FEATURES]  # [features, latent]
    z = z0.detach().numpy()[:, 0]

    def softmax_grad(w):
        scores = x @ w.T
        p = np.exp(scores - scores.max(1, keepdims=True))
        return (p / p.sum(1, keepdims=True) - y).T @ x  # [ways, features]

    expected_z = z - net.inner_lr.detach().numpy() * (softmax_grad(z @ decoder_means.T) @ decoder_means)
    np.testing.assert_allclose(latents.detach().numpy()[:, 0], expected_z, rtol=1e-10, atol=1e-12)
    w1 = expected_z @ decoder_means.T
    np.testing.assert_allclose(weights.detach().numpy()[:, 0], w1, rtol=1e-10, atol=1e-12)

    tuned = finetune_weights(net, weights, loss, support, labels, 1, Noise(), create_graph=False)
    expected_w = w1 - net.finetune_lr.detach().numpy() * softmax_grad(w1)
    np.testing.assert_allclose(tuned.detach().numpy()[:, 0], expected_w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("parameter, index", [("encoder.weight", (1, 2)), ("relation.2.weight", (0, 3)),
                                              ("decoder.weight", (4, 1)), ("inner_lr", (2,))])
def test_meta_gradient_matches_finite_differences(parameter, index):
    net, support, support_y, query, query_y = tiny_problem(seed=1)
    # The encoder penalty's target (the adapted codes) is a stop-gradient by design, which finite differences
    # would differentiate through; it is off here.
    hp = deterministic_hparams(latent_steps=2, finetune_steps=2, encoder_penalty=0.0)

    def outer_loss() -> torch.Tensor:
        loss, _, _ = leo_task_loss(net, hp, support, support_y, query, query_y, WAYS, Noise())
        return loss + regularization(net, hp)

    weight = dict(net.named_parameters())[parameter]
    analytic = torch.autograd.grad(outer_loss(), weight)[0][index].item()
    eps, numeric = 1e-6, []
    with torch.no_grad():
        original = weight[index].item()
        for sign in (1, -1):
            weight[index] = original + sign * eps
            with torch.enable_grad():
                numeric.append(outer_loss().item())
        weight[index] = original
    finite_difference = (numeric[0] - numeric[1]) / (2 * eps)
    assert analytic == pytest.approx(finite_difference, rel=1e-5, abs=1e-9)
    assert abs(analytic) > 1e-6  # the entry does affect the loss


def test_orthogonality_is_zero_for_orthogonal_latent_directions_and_positive_otherwise():
    orthogonal = torch.linalg.qr(torch.randn(10, 4, dtype=torch.float64))[0] * 3.0  # [2 * features, latent]
    assert float(orthogonality(orthogonal)) == pytest.approx(0.0, abs=1e-12)
    assert float(orthogonality(orthogonal + 0.5)) > 1e-3


def make_leo(**values):
    torch.manual_seed(0)
    cls = get_algorithm("leo")
    algorithm = cls(cls.build_hparams({**TINY, **values}), ModelSpec(1, 16, WAYS, 12))
    algorithm.configure_optimizers(1e-2, 20, "constant")
    return algorithm


def episodes(count: int, seed: int = 0):
    dataset = synthetic_dataset()
    sampler = EpisodeSampler(dataset.split("train"), dataset.spec, WAYS, 1, 2, seed=seed)
    return [[sampler.sample(), sampler.sample()] for _ in range(count)]


def test_the_backbone_stays_frozen_while_leo_meta_trains():
    algorithm = make_leo()
    batches = episodes(6)
    before = {k: v.clone() for k, v in algorithm.backbone.encoder.state_dict().items()}
    for batch in batches[:3]:  # pre-training (no data attached: the episodes' images with their class ids)
        assert algorithm.meta_train_step(batch)["pretraining"] == 1.0
    pretrained = {k: v.clone() for k, v in algorithm.backbone.encoder.state_dict().items()}
    assert any(not torch.equal(before[k], pretrained[k]) for k in before), "pre-training changed nothing"
    assert not algorithm.pretraining
    leo_before = [p.detach().clone() for p in algorithm.net.parameters()]
    for batch in batches[3:]:
        out = algorithm.meta_train_step(batch)
        assert out["pretraining"] == 0.0 and np.isfinite(out["loss"]) and out["kl"] > 0
    after = algorithm.backbone.encoder.state_dict()
    assert all(torch.equal(pretrained[k], after[k]) for k in pretrained)  # weights and batch-norm statistics
    assert all(p.grad is None for p in algorithm.backbone.encoder.parameters())
    assert not any(torch.equal(a, b) for a, b in zip(leo_before, algorithm.net.parameters()))


def test_a_backbone_can_come_from_a_trained_fine_tune_model():
    cls = get_algorithm("finetune")
    source = cls(cls.build_hparams({"hidden": 8}), ModelSpec(1, 16, WAYS, 12))
    algorithm = make_leo()
    algorithm.use_backbone(source)
    assert not algorithm.pretraining
    assert all(torch.equal(a, b) for a, b in zip(algorithm.backbone.encoder.state_dict().values(),
                                                 source.encoder.state_dict().values()))
    wide = cls(cls.build_hparams({"hidden": 16}), ModelSpec(1, 16, WAYS, 12))
    with pytest.raises(ConfigError) as caught:
        make_leo().use_backbone(wide)
    assert caught.value.field == "algorithm.hparams.hidden"
    with pytest.raises(ConfigError, match="no network named 'encoder'"):
        make_leo().use_backbone(get_algorithm("maml")(get_algorithm("maml").build_hparams({"hidden": 8}),
                                                      ModelSpec(1, 16, WAYS, 12)))


def test_adapts_with_probabilities_and_traces_the_latent_steps():
    algorithm = make_leo(pretrain_steps=0)
    episode = FixedEpisodes(synthetic_dataset().split("test"), synthetic_dataset().spec, WAYS, 2, 3, 1, seed=2)[0]
    with torch.no_grad():  # evaluation may run under no_grad; the latent steps still need gradients
        adapted = algorithm.adapt(episode.support_x, episode.support_y, WAYS)
        probs = algorithm.predict(adapted, episode.query_x)
    assert probs.shape == (9, WAYS) and torch.allclose(probs.sum(1), torch.ones(9))
    assert adapted["latents"].shape == (WAYS, 8)
    trace = algorithm.adaptation_trace(episode.support_x, episode.support_y, episode.query_x, episode.query_y,
                                       WAYS, steps=4)
    assert [t["step"] for t in trace] == [0, 1, 2, 3, 4]
    assert {"support_loss", "query_loss", "query_accuracy"} <= set(trace[0])
    assert trace[-1]["support_loss"] < trace[0]["support_loss"]


def test_too_few_training_steps_for_the_pretraining_name_the_field(use_synthetic_data):
    config = tiny_dataset_config(algorithm={"name": "leo", "hparams": TINY}, training={"steps": 3})
    with pytest.raises(ConfigError) as caught:
        Trainer(config)
    assert caught.value.field == "training.steps"


@pytest.mark.usefixtures("use_synthetic_data")
def test_trainer_pretrains_then_meta_trains_and_the_checkpoint_reproduces_predictions():
    config = tiny_dataset_config(algorithm={"name": "leo", "hparams": TINY},
                                 training={"steps": 6, "val_interval": 3, "checkpoint_interval": 3, "lr": 1e-2})
    trainer = Trainer(config)
    records = []
    assert trainer.run_all(records.append).event == "finished"
    phases = [r.extras["pretraining"] for r in records if r.event == "step"]
    assert phases == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    live = trainer.algorithm
    assert int(live.phase.pretrain_done) == 3
    history = read_inspections(trainer.run.path / INSPECTION_FILE)
    assert history.steps == [3, 6] and [s.name for s in history.specs] == ["rates", "decoder_correlation"]
    rates = [layer_histograms(record["rates"]) for record in history.records]
    assert rates[0]["latent inner rate"]["size"] == 8
    assert rates[0]["latent inner rate"]["mean"] != rates[1]["latent inner rate"]["mean"]  # the rates learn
    assert history.records[-1]["decoder_correlation"]["values"].shape == (8, 8)

    dataset = synthetic_dataset()
    tasks = FixedEpisodes(dataset.split("test"), dataset.spec, WAYS, 1, 2, count=4, seed=4)
    loaded = load_model(trainer.run, kind="last").algorithm
    for index in range(len(tasks)):
        episode = tasks[index]
        expected = live.predict(live.adapt(episode.support_x, episode.support_y, WAYS), episode.query_x)
        again = loaded.predict(loaded.adapt(episode.support_x, episode.support_y, WAYS), episode.query_x)
        assert torch.allclose(again, expected, atol=1e-6)
    assert int(loaded.phase.pretrain_done) == 3


@pytest.mark.usefixtures("use_synthetic_data")
def test_every_evaluation_reports_a_prototype_classifier_on_the_same_features():
    config = tiny_dataset_config(algorithm={"name": "leo", "hparams": TINY}, training={"steps": 4, "val_interval": 0})
    trainer = Trainer(config)
    trainer.run_all()
    algorithm = trainer.algorithm
    dataset = synthetic_dataset()
    tasks = FixedEpisodes(dataset.split("test"), dataset.spec, WAYS, 1, 3, count=6, seed=5)
    result = get_kind("classification").evaluate(algorithm, tasks)
    reported = result.extras["protonet_same_features"]
    assert reported["episodes"] == 6

    correct = []  # nearest class mean by hand, on the backbone's features
    for index in range(len(tasks)):
        episode = tasks[index]
        support = algorithm.embed(episode.support_x).numpy()
        query = algorithm.embed(episode.query_x).numpy()
        means = np.stack([support[episode.support_y.numpy() == c].mean(0) for c in range(WAYS)])
        nearest = ((query[:, None] - means[None]) ** 2).sum(-1).argmin(1)
        correct.append(float((nearest == episode.query_y.numpy()).mean()))
    assert reported["accuracy"] == pytest.approx(np.mean(correct), abs=1e-6)  # float32 scores
    assert 0.0 <= result.accuracy <= 1.0
