"""SNAIL (Mishra et al. 2018): causality (changing a later step of a sequence leaves every earlier output unchanged, for
the TC blocks, the attention blocks and the whole network), the shared-prefix last step against the full sequence,
each query classified by its own sequence, a short training through the Trainer with its attention records, and a
checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import train_with_inspections
from workbench.core.algorithms import ModelSpec, get_algorithm
from workbench.core.algorithms.snail import AttentionBlock, DenseBlock, SnailNetwork, TCBlock, default_tc_layers
from workbench.core.data.episodes import Episode, FixedEpisodes
from workbench.core.runs import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WAYS, SHOTS, QUERIES, SIZE, CHANNELS, STEPS = 4, 2, 3, 16, 6, 9


def blocks() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {"dense": DenseBlock(CHANNELS, 2, 5).double(), "tc": TCBlock(CHANNELS, 4, 5).double(),
            "attention": AttentionBlock(CHANNELS, 8, 4).double(),
            "network": SnailNetwork(CHANNELS, 3, default_tc_layers(STEPS - 1), 5).double()}


def make(seed: int = 0, ways: int = WAYS, **hparams):
    torch.manual_seed(seed)
    cls = get_algorithm("snail")
    return cls(cls.build_hparams({"hidden": 8, "tc_filters": 16, **hparams}), ModelSpec(1, SIZE, ways, 10)).eval()


def episode(seed: int = 1, ways: int = WAYS, shots: int = SHOTS, queries: int = QUERIES) -> Episode:
    gen = torch.Generator().manual_seed(seed)
    return Episode(support_x=torch.randn(ways * shots, 1, SIZE, SIZE, generator=gen),
                   support_y=torch.arange(ways).repeat_interleave(shots),
                   query_x=torch.randn(ways * queries, 1, SIZE, SIZE, generator=gen),
                   query_y=torch.arange(ways).repeat_interleave(queries), class_ids=list(range(ways)),
                   class_names=[f"k{c}" for c in range(ways)])


# --- what defines it: no step sees the future ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dense", "tc", "attention", "network"])
def test_changing_a_later_step_leaves_every_earlier_output_unchanged(name):
    module = blocks()[name]
    x = torch.randn(2, STEPS, CHANNELS, dtype=torch.float64)
    before = module(x)
    for t in range(STEPS):
        changed = x.clone()
        changed[:, t] += torch.randn(2, CHANNELS, dtype=torch.float64) * 3
        after = module(changed)
        assert torch.equal(after[:, :t], before[:, :t]), f"{name}: a step before {t} saw step {t}"
        assert not torch.allclose(after[:, t], before[:, t]), f"{name}: step {t} ignores its own input"


@pytest.mark.parametrize("name", ["tc", "network"])
def test_every_earlier_step_reaches_the_last_one(name):
    """Causal, but not blind: the last step's output depends on each step before it (the attention sees them all)."""
    module = blocks()[name]
    x = torch.randn(1, STEPS, CHANNELS, dtype=torch.float64, requires_grad=True)
    module(x)[0, -1].sum().backward()
    reached = x.grad[0].abs().sum(-1) > 0
    if name == "network":
        assert reached.all()
    else:  # dilations 2, 4, 8, 16 (the paper's 2^i, i >= 1) reach only even distances back
        assert reached.tolist() == [(STEPS - 1 - t) % 2 == 0 for t in range(STEPS)]


def test_attention_rows_sum_to_one_and_put_no_weight_on_the_future():
    block = blocks()["attention"]
    weights = block.weights(torch.randn(3, STEPS, CHANNELS, dtype=torch.float64))
    assert torch.allclose(weights.sum(-1), torch.ones(3, STEPS, dtype=torch.float64))
    past = torch.ones(STEPS, STEPS, dtype=torch.bool).tril()
    assert torch.all(weights[:, ~past] == 0) and torch.all(weights[:, past] > 0)


@pytest.mark.parametrize("name", ["dense", "tc", "attention", "network"])
def test_the_shared_prefix_last_step_is_the_full_sequences_last_step(name):
    module = blocks()[name]
    prefix = torch.randn(STEPS - 1, CHANNELS, dtype=torch.float64)
    last = torch.randn(4, CHANNELS, dtype=torch.float64)
    full = module(torch.cat([prefix.expand(4, -1, -1), last[:, None]], dim=1))
    if name == "network":
        assert torch.allclose(module.last_step(prefix, last), full[:, -1], atol=1e-12)
    else:
        out_prefix, out_last = module.extend(prefix, last)
        assert torch.allclose(out_prefix, full[0, :-1], atol=1e-12)
        assert torch.allclose(out_last, full[:, -1], atol=1e-12)


# --- the classifier on episodes -------------------------------------------------------------------------------------
def test_each_query_is_classified_by_its_own_sequence_and_fewer_ways_use_the_first_outputs():
    algorithm, e = make(), episode()
    adapted = algorithm.adapt(e.support_x, e.support_y, WAYS)
    assert adapted["prefix"].shape == (WAYS * SHOTS, algorithm.encoder.out_dim + WAYS)
    probs = algorithm.predict(adapted, e.query_x)
    assert probs.shape == (WAYS * QUERIES, WAYS) and torch.allclose(probs.sum(1), torch.ones(len(probs)))
    one_by_one = torch.cat([algorithm.predict(adapted, e.query_x[i:i + 1]) for i in range(len(e.query_x))])
    assert torch.allclose(one_by_one, probs, atol=1e-6)
    with torch.no_grad():  # the whole sequence of query 0: support steps, then that query with its label slot zero
        sequence = torch.cat([adapted["prefix"], algorithm.query_steps(algorithm.encoder(e.query_x[:1]))])
        logits = algorithm.snail(sequence[None])[0, -1]
    assert torch.allclose(logits.softmax(-1), probs[0], atol=1e-6)
    small = episode(ways=2)
    two = algorithm.predict(algorithm.adapt(small.support_x, small.support_y, 2), small.query_x)
    assert two.shape == (2 * QUERIES, 2) and torch.allclose(two.sum(1), torch.ones(len(two)))
    five = episode(ways=5)
    with pytest.raises(ValueError, match="training ways, 4"):
        algorithm.adapt(five.support_x, five.support_y, 5)


def test_the_support_labels_change_the_prediction():
    """The network reads the label slot: swapping two classes' labels in the support changes the probabilities."""
    algorithm, e = make(), episode(shots=1)
    swap = torch.tensor([1, 0, 2, 3])
    probs = algorithm.predict(algorithm.adapt(e.support_x, e.support_y, WAYS), e.query_x)
    swapped = algorithm.predict(algorithm.adapt(e.support_x, swap[e.support_y], WAYS), e.query_x)
    assert not torch.allclose(probs, swapped, atol=1e-6)


# --- training, the attention records and a checkpoint ----------------------------------------------------------------
@pytest.mark.usefixtures("use_synthetic_data")
def test_trains_with_attention_records_and_a_checkpoint_that_predicts_identically():
    trainer, history = train_with_inspections({"name": "snail", "hparams": {"hidden": 8, "tc_filters": 8}},
                                              meta_batch=2)
    assert [s.name for s in history.specs] == ["attention-1", "attention-2", "attention-3"]
    ways, shots, queries = 3, 1, 2  # the tiny config's episodes
    for name in ("attention-1", "attention-2", "attention-3"):
        record = history.records[-1][name]
        assert record["values"].shape == (ways * queries, ways * shots + 1)  # the support steps, then itself
        assert np.allclose(record["values"].sum(axis=1), 1.0, atol=1e-5)
        assert record["row_images"].shape == (ways * queries, 16, 16)
        assert record["column_images"].shape == (ways * shots + 1, 16, 16)
        assert record["row_images"].min() == 0.0 and record["row_images"].max() == 1.0
        assert len(record["rows"]) == ways * queries and list(record["columns"])[-1] == "the query itself"
    assert not np.array_equal(history.records[0]["attention-3"]["values"], history.records[-1]["attention-3"]["values"])

    live = trainer.algorithm
    e = FixedEpisodes(trainer.dataset.split("test"), trainer.dataset.spec, 3, 1, 2, count=1, seed=3)[0]
    probs = live.predict(live.adapt(e.support_x, e.support_y, 3), e.query_x)
    loaded = load_model(trainer.run, kind="last").algorithm
    assert set(loaded.modules()) == {"encoder", "snail"}
    assert torch.equal(loaded.predict(loaded.adapt(e.support_x, e.support_y, 3), e.query_x), probs)


def test_training_lowers_the_loss_on_a_fixed_episode():
    algorithm = make(ways=3).train()
    algorithm.configure_optimizers(3e-3, 40, "constant")
    e = episode(ways=3, shots=1)
    losses = [algorithm.meta_train_step([e])["loss"] for _ in range(25)]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
