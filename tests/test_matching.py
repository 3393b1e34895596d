"""Matching Networks: the attention over the support (sums to one, permutation-equivariant where the paper's model
is), the class probabilities of equation 1, the full context embeddings against their equations computed by hand,
a short training through the Trainer with its similarity record, and a checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import train_with_inspections
from workbench.core.algorithms import ModelSpec, get_algorithm
from workbench.core.algorithms.matching import FullContextEmbedding, class_log_probabilities, probe_subset
from workbench.core.data.episodes import Episode, FixedEpisodes
from workbench.core.runs import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WAYS, SHOTS, QUERIES, SIZE = 4, 2, 3, 16


def make(full_context: bool, seed: int = 0, **hparams):
    torch.manual_seed(seed)
    cls = get_algorithm("matching-net")
    values = {"hidden": 8, "full_context": full_context, "fce_read_steps": 3, "cosine_scale": 5.0, **hparams}
    return cls(cls.build_hparams(values), ModelSpec(1, SIZE, WAYS, 10)).eval()


def episode(seed: int = 1, ways: int = WAYS, shots: int = SHOTS, queries: int = QUERIES) -> Episode:
    gen = torch.Generator().manual_seed(seed)
    return Episode(support_x=torch.randn(ways * shots, 1, SIZE, SIZE, generator=gen),
                   support_y=torch.arange(ways).repeat_interleave(shots),
                   query_x=torch.randn(ways * queries, 1, SIZE, SIZE, generator=gen),
                   query_y=torch.arange(ways).repeat_interleave(queries), class_ids=list(range(ways)),
                   class_names=[f"k{c}" for c in range(ways)], support_index=torch.arange(ways * shots),
                   query_index=torch.arange(ways * queries))


def attention_and_probabilities(algorithm, support_x, support_y, query_x):
    adapted = algorithm.adapt(support_x, support_y, WAYS)
    with torch.no_grad():
        queries_f = algorithm.embed_queries(algorithm.encoder(query_x), adapted["support_g"])
        attention = algorithm.attention(queries_f, adapted["support_g"])
    return attention, algorithm.predict(adapted, query_x)


# --- the classifier ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("full_context", [False, True])
def test_attention_sums_to_one_and_the_probabilities_are_its_sum_over_each_class(full_context):
    algorithm, e = make(full_context), episode()
    attention, probs = attention_and_probabilities(algorithm, e.support_x, e.support_y, e.query_x)
    assert attention.shape == (len(e.query_x), len(e.support_x)) and (attention > 0).all()
    assert torch.allclose(attention.sum(dim=1), torch.ones(len(e.query_x)), atol=1e-6)
    # Equation 1: y_hat = sum_i a(x_hat, x_i) y_i, with one-hot y_i.
    assert torch.allclose(probs, attention @ F.one_hot(e.support_y, WAYS).float(), atol=1e-6)
    assert not torch.allclose(attention, torch.full_like(attention, 1 / len(e.support_x)), atol=1e-3)


def test_without_fce_permuting_the_support_permutes_the_attention_and_keeps_the_probabilities():
    algorithm, e = make(False), episode()
    attention, probs = attention_and_probabilities(algorithm, e.support_x, e.support_y, e.query_x)
    perm = torch.randperm(len(e.support_x), generator=torch.Generator().manual_seed(3))
    assert not torch.equal(perm, torch.arange(len(perm)))
    permuted, permuted_probs = attention_and_probabilities(algorithm, e.support_x[perm], e.support_y[perm],
                                                           e.query_x)
    assert torch.allclose(permuted, attention[:, perm], atol=1e-6)
    assert torch.allclose(permuted_probs, probs, atol=1e-6)


def test_with_fce_everything_after_the_support_lstm_is_permutation_equivariant_but_the_lstm_is_not():
    """The paper's g is a bidirectional LSTM over the support sequence, so the model depends on the support's order;
    given the embedded support g(S), the query's read-attention LSTM and the attention are equivariant."""
    algorithm, e = make(True), episode()
    perm = torch.randperm(len(e.support_x), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        support_g = algorithm.embed_support(algorithm.encoder(e.support_x))
        queries = algorithm.encoder(e.query_x)
        queries_f = algorithm.embed_queries(queries, support_g)
        permuted_f = algorithm.embed_queries(queries, support_g[perm])
        attention = algorithm.attention(queries_f, support_g)
        permuted = algorithm.attention(permuted_f, support_g[perm])
        log_probs = algorithm.log_probabilities(queries_f, support_g, e.support_y, WAYS)
        permuted_log_probs = algorithm.log_probabilities(permuted_f, support_g[perm], e.support_y[perm], WAYS)
        reordered_g = algorithm.embed_support(algorithm.encoder(e.support_x[perm]))
    assert torch.allclose(permuted_f, queries_f, atol=1e-5)
    assert torch.allclose(permuted, attention[:, perm], atol=1e-6)
    assert torch.allclose(permuted_log_probs, log_probs, atol=1e-5)
    # Feeding the support in another order changes g itself (not just its row order).
    assert not torch.allclose(reordered_g, support_g[perm], atol=1e-4)


def test_class_log_probabilities_match_the_log_of_the_summed_attention_and_do_not_underflow():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    naive = (logits.softmax(dim=1) @ F.one_hot(labels, 3).double()).log()
    assert torch.allclose(class_log_probabilities(logits, labels, 3), naive, atol=1e-12)
    far = torch.tensor([[0.0, -2000.0]])  # the naive softmax gives class 1 exactly 0
    log_probs = class_log_probabilities(far, torch.tensor([0, 1]), 2)
    assert torch.isfinite(log_probs).all() and float(log_probs[0, 1]) == pytest.approx(-2000.0)


# --- the full context embeddings against the paper's equations --------------------------------------------------
def lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """An LSTM cell by hand (gates i, f, g, o in torch's order)."""
    i, f, g, o = (x @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def test_fce_follows_the_papers_equations_computed_by_hand():
    torch.manual_seed(0)
    dim, steps = 3, 4
    fce = FullContextEmbedding(dim, steps).double()
    gen = torch.Generator().manual_seed(1)
    support, queries = torch.randn(5, dim, generator=gen).double(), torch.randn(2, dim, generator=gen).double()
    lstm = {name: value.detach() for name, value in fce.support_lstm.named_parameters()}

    def direction(sequence, suffix):
        h = c = torch.zeros(dim, dtype=torch.float64)
        out = []
        for x in sequence:
            h, c = lstm_step(x, h, c, *(lstm[f"{k}_l0{suffix}"] for k in ("weight_ih", "weight_hh", "bias_ih",
                                                                            "bias_hh")))
            out.append(h)
        return torch.stack(out)

    # g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i)  (appendix A.2)
    expected_g = direction(support, "") + direction(support.flip(0), "_reverse").flip(0) + support
    with torch.no_grad():
        support_g = fce.embed_support(support)
        queries_f = fce.embed_queries(queries, support_g)
    assert torch.allclose(support_g, expected_g, atol=1e-12)
    # f(x_hat, S) = h_K with h_k = LSTM(f'(x), [h_{k-1}, r_{k-1}], c_{k-1}) + f'(x), r read by softmax(h g^T)
    cell = {name: value.detach() for name, value in fce.query_cell.named_parameters()}
    for query, got in zip(queries, queries_f):
        h, c = query, torch.zeros(dim, dtype=torch.float64)
        for _ in range(steps):
            read = (support_g @ h).softmax(0) @ support_g
            # The paper's hidden state is [h, r]; its weights act on f'(x), h and r, split as torch's cell splits them.
            w_x, w_r = cell["weight_ih"][:, :dim], cell["weight_ih"][:, dim:]
            gates = query @ w_x.T + read @ w_r.T + h @ cell["weight_hh"].T + cell["bias_ih"] + cell["bias_hh"]
            i, f, g, o = gates.chunk(4)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c) + query
        assert torch.allclose(got, h, atol=1e-12)


# --- embeddings and the probe ---------------------------------------------------------------------------------------
def test_embed_gives_the_unit_length_space_the_attention_compares_in():
    algorithm, e = make(True), episode()
    adapted = algorithm.adapt(e.support_x, e.support_y, WAYS)
    support, queries = algorithm.embed(e.support_x, adapted), algorithm.embed(e.query_x, adapted)
    assert torch.allclose(support.norm(dim=1), torch.ones(len(support)), atol=1e-5)
    logits = algorithm.hparams.cosine_scale * queries @ support.T
    assert torch.allclose(logits.softmax(dim=1), attention_and_probabilities(algorithm, e.support_x, e.support_y,
                                                                             e.query_x)[0], atol=1e-5)
    # Without an adapted support (or without FCE) it is the encoder's features.
    plain = F.normalize(algorithm.encoder(e.query_x), dim=1)
    assert torch.allclose(algorithm.embed(e.query_x), plain, atol=1e-6)
    assert not torch.allclose(queries, plain, atol=1e-3)


def test_probe_keeps_at_most_twenty_support_images_of_whole_classes_and_ten_queries_round_robin():
    e = episode(ways=20, shots=5, queries=3)
    support_x, support_y, query_x, query_y = probe_subset(e)
    assert support_y.tolist() == [c for c in range(4) for _ in range(5)]
    assert query_y.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert torch.equal(query_x[4], e.query_x[1]) and torch.equal(support_x, e.support_x[:20])


# --- training, the similarity record and a checkpoint ----------------------------------------------------------------
@pytest.mark.usefixtures("use_synthetic_data")
@pytest.mark.parametrize("full_context", [False, True])
def test_trains_with_an_attention_record_and_a_checkpoint_that_predicts_identically(full_context):
    trainer, history = train_with_inspections({"name": "matching-net", "hparams": {
        "hidden": 8, "full_context": full_context, "fce_read_steps": 2}})
    assert [s.name for s in history.specs] == ["attention"]
    record = history.records[-1]["attention"]
    ways, shots, queries = 3, 1, 2  # the tiny config's episodes
    assert record["values"].shape == (ways * queries, ways * shots)
    assert np.allclose(record["values"].sum(axis=1), 1.0, atol=1e-5)
    assert record["row_images"].shape == (ways * queries, 16, 16)
    assert record["column_images"].shape == (ways * shots, 16, 16)
    assert record["row_images"].min() == 0.0 and record["row_images"].max() == 1.0
    assert len(record["rows"]) == ways * queries and len(record["columns"]) == ways * shots
    assert not np.array_equal(history.records[0]["attention"]["values"], record["values"])  # it learned between

    live = trainer.algorithm
    e = FixedEpisodes(trainer.dataset.split("test"), trainer.dataset.spec, 3, 1, 2, count=1, seed=3)[0]
    probs = live.predict(live.adapt(e.support_x, e.support_y, 3), e.query_x)
    loaded = load_model(trainer.run, kind="last").algorithm
    assert set(loaded.modules()) == ({"encoder", "context"} if full_context else {"encoder"})
    assert torch.equal(loaded.predict(loaded.adapt(e.support_x, e.support_y, 3), e.query_x), probs)


@pytest.mark.parametrize("full_context", [False, True])
def test_the_projector_also_shows_the_fce_space_of_the_support(full_context):
    from workbench.core.probes import embedding_snapshot

    algorithm = make(full_context)
    snapshot = embedding_snapshot(algorithm, episode())
    assert ("adapted_support" in snapshot) == full_context  # FCE: the space conditioned on the support set
    if full_context:
        assert not np.allclose(snapshot["adapted_query"], snapshot["query"], atol=1e-3)
