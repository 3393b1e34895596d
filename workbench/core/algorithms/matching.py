"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, 2016, "Matching Networks for One Shot
Learning", NeurIPS): a differentiable nearest-neighbour classifier over the support set, trained episodically.

A query x̂ attends to every support example x_i with a softmax over cosine similarities of their embeddings,

    a(x̂, x_i) = exp(s · cos(f(x̂), g(x_i))) / Σ_j exp(s · cos(f(x̂), g(x_j))),

and its class probabilities are the attention-weighted sum of the support one-hot labels, P(y = c | x̂, S) =
Σ_{i: y_i = c} a(x̂, x_i) (the paper's equation 1). Training minimizes −log P(y | x̂, S) of the queries of each
episode (computed as a log-sum-exp, so no probability underflows). The paper has no scale: s = 1
(``cosine_scale``). Embeddings f' = g' are a Conv-4 (64 filters, batch norm, ReLU, 2x2 max-pool; 64-d on 28x28).

Full context embeddings (FCE, ``full_context``, the paper's appendix A) make both embeddings depend on the whole
support set S:

- g(x_i, S) = h→_i + h←_i + g'(x_i): a bidirectional LSTM over the support embeddings g'(x_1..n) (as a sequence, in
  the episode's order), with a skip connection (appendix A.2);
- f(x̂, S) = attLSTM(f'(x̂), g(S), K): K "processing" steps of an LSTM whose input is always f'(x̂) and which reads
  the embedded support with a dot-product softmax attention (appendix A.1):
  ĥ_k, c_k = LSTM(f'(x̂), [h_{k−1}, r_{k−1}], c_{k−1}); h_k = ĥ_k + f'(x̂); r_{k−1} = Σ_i softmax_i(h_{k−1}ᵀ g(x_i))
  g(x_i); f = h_K. The LSTM's gates are linear in its input and [h, r] together, so this is an LSTM cell with input
  [f'(x̂), r_{k−1}] and hidden state h_{k−1}. The paper leaves the start open; here h_0 = f'(x̂) (ĥ_0 = 0 with the
  skip connection) and c_0 = 0, as the FAIR re-implementation (facebookresearch/low-shot-shrink-hallucinate) does.
  The paper does not give K; 5 as there.

What is and is not order-invariant (tests/test_matching.py checks each): without FCE, permuting the support set
permutes every query's attention the same way and leaves its class probabilities unchanged (the classifier is a
function of the support *set*). With FCE, g is a bidirectional LSTM over the support *sequence*, so g(x_i, S), and
with it the probabilities, depend on the support's order: the paper's FCE is not permutation-invariant. What holds is
that everything after g is: given the embedded support g(S), f's read attention sums over it, so permuting the rows
of g(S) (with their labels) permutes the attention the same way and leaves f(x̂, S) and the probabilities unchanged.
The attention over the support sums to one for every query, with or without FCE.

Paper numbers (Vinyals et al. 2016, Table 1, Omniglot, Conv-4 embeddings, cosine attention, no FCE, no fine-tuning;
1,200 training characters with 90-degree rotations): 98.1% (5-way 1-shot), 98.9% (5-way 5-shot), 93.8% (20-way
1-shot), 98.5% (20-way 5-shot). With FCE the paper reports mini-ImageNet only (Table 2: 5-way 1-shot 44.2%,
5-shot 57.0%), so ``full_context`` is off by default: the default reproduces the setting of the Omniglot numbers.
The recommended recipe turns it on and scales the cosines by 20: better here under a 3 CPU-minute budget (see its
help).

The Mechanism view shows the attention of a fixed probe episode's queries (rows) over its support images (columns)
at each validation: the first training episode this instance met, at most 20 support images (the first classes) and
10 queries (round-robin over the classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Algorithm, Family
from workbench.core.hparams import hparam
from workbench.core.inspection import InspectionSpec, image_thumbnails as thumbnails
from workbench.core.models.conv4 import Conv4
from workbench.core.recipes import Recipe

PAPER = "Vinyals et al. 2016"
PROBE_COLUMNS, PROBE_ROWS = 20, 10  # the similarity view's probe: support images and queries shown


# --- the classifier -------------------------------------------------------------------------------------------
def attention_logits(queries: torch.Tensor, support: torch.Tensor, scale: float) -> torch.Tensor:
    """s · cos(query, support) for every pair: [Q, N]."""
    return scale * (F.normalize(queries, dim=-1) @ F.normalize(support, dim=-1).T)


def class_log_probabilities(logits: torch.Tensor, support_y: torch.Tensor, ways: int) -> torch.Tensor:
    """log Σ_{i: y_i = c} softmax_i(logits): the log of the attention-weighted one-hot labels (equation 1), [Q, ways],
    as a log-sum-exp per class so that a small probability does not underflow to log 0."""
    in_class = F.one_hot(support_y, ways).T.bool()  # [ways, N]
    masked = logits[:, None, :].masked_fill(~in_class[None], float("-inf"))  # [Q, ways, N]
    return torch.logsumexp(masked, dim=-1) - torch.logsumexp(logits, dim=-1, keepdim=True)


class FullContextEmbedding(nn.Module):
    """The paper's FCE (appendix A): g, a bidirectional LSTM over the support embeddings with a skip connection, and
    f, an LSTM over the query embedding that reads the embedded support for ``read_steps`` steps."""

    def __init__(self, dim: int, read_steps: int):
        super().__init__()
        self.read_steps = read_steps
        self.support_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.query_cell = nn.LSTMCell(2 * dim, dim)  # input [f'(x̂), r_{k-1}], hidden h_{k-1}

    def embed_support(self, support: torch.Tensor) -> torch.Tensor:
        """g(x_i, S) = h→_i + h←_i + g'(x_i) over the support sequence [N, D]."""
        out, _ = self.support_lstm(support.unsqueeze(0))
        forward, backward = out[0].chunk(2, dim=-1)
        return forward + backward + support

    def embed_queries(self, queries: torch.Tensor, support_g: torch.Tensor) -> torch.Tensor:
        """f(x̂, S) = h_K of the read-attention LSTM, for each query independently [Q, D]."""
        h, c = queries, torch.zeros_like(queries)
        for _ in range(self.read_steps):
            read = (h @ support_g.T).softmax(dim=-1) @ support_g
            h, c = self.query_cell(torch.cat([queries, read], dim=-1), (h, c))
            h = h + queries
        return h


# --- declarations ---------------------------------------------------------------------------------------------
@dataclass
class MatchingHParams:
    hidden: int = hparam(64, f"Filters per Conv-4 block of the embedding f' = g' (64 in {PAPER}).", low=8, high=256)
    full_context: bool = hparam(
        False, f"Full context embeddings (FCE, {PAPER}, appendix A): the support is embedded by a bidirectional LSTM "
        "over it, each query by an LSTM that reads the support for fce_read_steps steps. The paper's Omniglot "
        "numbers (98.1% 5-way 1-shot, 93.8% 20-way 1-shot, Table 1) are without FCE, its mini-ImageNet ones with, so "
        "off by default. With FCE the support's order matters (the LSTM reads it as a sequence).")
    fce_read_steps: int = hparam(
        5, f"Processing steps K of the query's read-attention LSTM under FCE ({PAPER} do not give K; 5 as in the "
        "FAIR re-implementation). Ignored without FCE.", low=1, high=50)
    cosine_scale: float = hparam(
        1.0, f"Multiplies the cosine similarities before the attention's softmax. {PAPER} use none (1); cosines of "
        "ReLU features lie in [0, 1], so at 1 the attention stays soft and its probabilities far from 0 and 1; a "
        "larger scale sharpens it.", low=0.01, high=100.0, log_scale=True)


ATTENTION = InspectionSpec(
    "attention", "Attention over the support",
    "heatmap", f"The attention a(x̂, x_i) of each probe query (rows) over every support image (columns), each row "
    f"summing to one ({PAPER}, equation 1): a query's class probability is the attention on that class's support "
    "images. A fixed probe episode (the first training episode met) at each validation; early on the rows are flat, "
    "trained they concentrate on the query's own class.", x_label="support image", y_label="query")

CLASSIFICATION_DEFAULT = Recipe(
    "default", "Tuned here for 3 CPU-minutes on one thread: the paper's network with FCE, cosine attention scaled by "
    "20 (at the paper's 1 the softmax over cosines of ReLU features, all in [0, 1], stays soft: 78.5% vs 91.1% at 10 "
    "after one CPU-minute on glyphs), 15-way training episodes with 5 queries per class, Adam 3e-3, cosine schedule "
    "over the time budget or 2,000 steps. After 3 CPU-minutes, 5-way 1-shot on 1,000 test episodes: 96.5% on glyphs "
    "and 96.9% on Omniglot (Lake split; 89.9% on 20-way 1-shot tasks), vs 96.3% and 96.1% without FCE. The paper "
    f"reports 98.1% (Omniglot 5-way 1-shot) and 93.8% (20-way 1-shot), {PAPER}, Table 1, after far longer "
    "training.", kind="classification", recommended=True,
    training={"train_ways": 15, "train_queries": 5, "lr": 3e-3},
    hparams={"cosine_scale": 20.0, "full_context": True})
OMNIGLOT_PAPER = Recipe(
    "paper", f"The paper's Omniglot setting ({PAPER}, section 4.1.1): its split (1,200 training characters, here "
    "1,028 for training and 172 for validation) with 90-degree rotation classes, Conv-4 with 64 filters, cosine "
    "attention without scale or FCE, training episodes like the test ones. The paper does not give its optimizer or "
    "training length: Adam 1e-3 over 20,000 episodes here. It reports 98.1% (5-way 1-shot), 98.9% (5-way 5-shot), "
    "93.8% (20-way 1-shot) and 98.5% (20-way 5-shot), Table 1. Hours on a CPU.", datasets=("omniglot",),
    dataset={"rotations": True, "split": "vinyals"},
    training={"steps": 20_000, "lr": 1e-3, "lr_schedule": "cosine", "val_interval": 1000, "val_episodes": 200},
    hparams={"hidden": 64, "full_context": False, "cosine_scale": 1.0})


@register
class MatchingNetworks(Algorithm):
    name = "matching-net"
    title = "Matching Networks"
    family = Family.METRIC
    summary = "Soft nearest neighbour: attention over the support images by cosine similarity."
    description = ("Matching Networks (Vinyals et al., 2016) classify a query by attending to every support image: "
                   "a softmax over the cosine similarities of their embeddings gives weights that sum to one, and "
                   "the query's class probabilities are the weighted sum of the support labels, a differentiable "
                   "nearest neighbour. Training is episodic, with the log of those probabilities, so the embedding "
                   "is learned for exactly this test. Optional full context embeddings (FCE) embed the support with "
                   "a bidirectional LSTM over it and each query with an LSTM that reads the support several times. "
                   "The Mechanism view shows the attention of probe queries over the support images.")
    HParams = MatchingHParams
    kinds = ("classification",)
    recipes = (CLASSIFICATION_DEFAULT, OMNIGLOT_PAPER)
    capabilities = frozenset({"embeddings", "inspection"})
    inspections = (ATTENTION,)

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        self.support_dependent_embeddings = bool(hparams.full_context)  # FCE embeds in the context of the support
        self.encoder = Conv4(model_spec.in_channels, hparams.hidden, model_spec.image_size).to(self.device)
        self.context = (FullContextEmbedding(self.encoder.out_dim, hparams.fce_read_steps).to(self.device)
                        if hparams.full_context else None)
        self._probe = None  # the similarity view's fixed episode (cpu copies)

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder} | ({"context": self.context} if self.context is not None else {})

    # --- the classifier on embeddings ----------------------------------------------------------------------
    def embed_support(self, support: torch.Tensor) -> torch.Tensor:
        """g(S): the encoder's features, through the bidirectional LSTM under FCE."""
        return support if self.context is None else self.context.embed_support(support)

    def embed_queries(self, queries: torch.Tensor, support_g: torch.Tensor) -> torch.Tensor:
        """f(x̂, S): the encoder's features, through the read-attention LSTM under FCE."""
        return queries if self.context is None else self.context.embed_queries(queries, support_g)

    def log_probabilities(self, queries_f: torch.Tensor, support_g: torch.Tensor, support_y: torch.Tensor,
                          ways: int) -> torch.Tensor:
        logits = attention_logits(queries_f, support_g, self.hparams.cosine_scale)
        return class_log_probabilities(logits, support_y, ways)

    def attention(self, queries_f: torch.Tensor, support_g: torch.Tensor) -> torch.Tensor:
        """a(x̂, x_i): [Q, N], each row summing to one."""
        return attention_logits(queries_f, support_g, self.hparams.cosine_scale).softmax(dim=-1)

    # --- learning ------------------------------------------------------------------------------------------
    def meta_train_step(self, episodes) -> dict[str, float]:
        self.train()
        optimizer = self.optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        if self._probe is None:
            self._probe = episodes[0].to("cpu")
        total_loss, correct, count = 0.0, 0, 0
        for episode in episodes:
            episode = episode.to(self.device)
            n = len(episode.support_x)
            features = self.encoder(torch.cat([episode.support_x, episode.query_x]))  # one batch-norm batch
            support_g = self.embed_support(features[:n])
            log_probs = self.log_probabilities(self.embed_queries(features[n:], support_g), support_g,
                                               episode.support_y, episode.ways)
            loss = F.nll_loss(log_probs, episode.query_y) / len(episodes)
            loss.backward()
            total_loss += loss.item()
            correct += int((log_probs.argmax(dim=-1) == episode.query_y).sum())
            count += len(episode.query_y)
        optimizer.step()
        self.step_schedulers()
        return {"loss": total_loss, "accuracy": correct / max(count, 1)}

    @torch.no_grad()
    def adapt(self, support_x, support_y, ways):
        self.eval()
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        return {"support_g": self.embed_support(self.encoder(support_x)), "support_y": support_y, "ways": ways,
                "support_x": support_x}

    @torch.no_grad()
    def predict(self, adapted, query_x):
        self.eval()
        support_g = adapted["support_g"]
        queries_f = self.embed_queries(self.encoder(query_x.to(self.device)), support_g)
        return self.log_probabilities(queries_f, support_g, adapted["support_y"], adapted["ways"]).exp()

    @torch.no_grad()
    def embed(self, x, adapted=None):
        """The space the attention compares in, unit-length (cosine similarity is then a dot product). Without an
        adapted support, or without FCE: the encoder's features. With FCE and an adapted support: g(S) when ``x``
        is that support, else f(x, S), the queries as they read it."""
        self.eval()
        x = x.to(self.device)
        if self.context is None or adapted is None:
            return F.normalize(self.encoder(x), dim=-1)
        support_x = adapted["support_x"]
        if x.shape == support_x.shape and torch.equal(x, support_x):
            return F.normalize(adapted["support_g"], dim=-1)
        return F.normalize(self.embed_queries(self.encoder(x), adapted["support_g"]), dim=-1)

    # --- inspection ----------------------------------------------------------------------------------------
    def inspect(self) -> dict[str, dict]:
        """The probe queries' attention over the probe support images; nothing before training."""
        if self._probe is None:
            return {}
        support_x, support_y, query_x, query_y = probe_subset(self._probe)
        adapted = self.adapt(support_x, support_y, int(support_y.max()) + 1)
        with torch.no_grad():
            support_g = adapted["support_g"]
            weights = self.attention(self.embed_queries(self.encoder(query_x.to(self.device)), support_g), support_g)
        return {"attention": {
            "values": weights.cpu().numpy(), "rows": np.array([f"q{i} c{int(y)}" for i, y in enumerate(query_y)]),
            "columns": np.array([f"c{int(y)}" for y in support_y]),
            "row_images": thumbnails(query_x), "column_images": thumbnails(support_x)}}


def probe_subset(episode) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The probe's first classes with at most PROBE_COLUMNS support images in all (a smaller episode, so each row
    is still an attention over the whole support it classifies with) and up to PROBE_ROWS of their queries taken
    round-robin over the classes."""
    shots = max(1, len(episode.support_y) // max(episode.ways, 1))
    ways = max(1, min(episode.ways, PROBE_COLUMNS // shots))
    keep = episode.support_y < ways
    rank = torch.zeros_like(episode.query_y)  # the index of each query within its class
    for c in range(ways):
        where = episode.query_y == c
        rank[where] = torch.arange(int(where.sum()))
    candidates = torch.nonzero(episode.query_y < ways).flatten().tolist()
    order = sorted(candidates, key=lambda i: (int(rank[i]), int(episode.query_y[i])))[:PROBE_ROWS]
    return episode.support_x[keep], episode.support_y[keep], episode.query_x[order], episode.query_y[order]




__all__ = ["MatchingNetworks", "FullContextEmbedding", "attention_logits", "class_log_probabilities",
           "probe_subset", "thumbnails"]
