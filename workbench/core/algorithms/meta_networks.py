"""Meta Networks (Munkhdalai & Yu, 2017, "Meta Networks", ICML): a meta learner turns the loss gradients of a support
set into fast weights, which a base learner adds to its slow weights by layer augmentation.

MetaNet has two learners, each with slow weights (trained by the outer loop across tasks) and fast weights
(generated within a task, never trained):

- the base learner b (slow weights W), whose loss gradients on the support examples are its meta information;
- the meta learner: a dynamic representation learning function u (slow Q, task-level fast Q*) that embeds images for
  the memory's keys, and two fast-weight generators, m (weights Z) for Q* and d (weights G) for b's fast weights.

Algorithm 1 of the paper, per task (support x'_i, y'_i; queries x_i, y_i), as implemented here:

1. Q*: for T pairs of support examples, L_t = loss_emb(u(Q, x'_a), u(Q, x'_b), l_t), a contrastive loss with
   l_t = 1 for a pair of the same class; ∇_t = ∇_Q L_t; Q* = m(Z, {∇_t}).
2. Memory: for each support example, L_i = loss_task(b(W, x'_i), y'_i); ∇_i = ∇_W L_i; W*_i = d(G, ∇_i) stored in
   the memory M; its key r'_i = u(Q, Q*, x'_i) in the index memory R.
3. Queries: r = u(Q, Q*, x); a = softmax(cos(R, r)); W* = aᵀ M (the query's own fast weights, read from memory);
   prediction softmax(b(W, W*, x)) over the task's N classes; the query cross-entropy trains W, Q, Z and G together.

Gradients are taken with ``torch.autograd.grad`` (per example or pair at once: the slow weights are repeated once per
example, so example i's loss reaches only copy i); in meta-training ``create_graph=True``, so the outer loss reaches
W, Q and the trunks also through the gradients (second order). m and d work per coordinate (the same small MLP for
every weight, as the paper's generators): each gradient coordinate g is preprocessed as in Andrychowicz et al.
(2016), g -> (log|g| / p, sign g) when |g| ≥ e^−p, else (−1, e^p g), and mapped to one fast weight; m averages its
outputs over the T pairs.

Layer augmentation (section 3.3, figure 2): an augmented layer sends its input through the slow and the fast weights,
each branch through ReLU, and sums them: y = ReLU(W x + b) + ReLU(W* x).

Deviations from the paper, for a budget of minutes on a CPU (the paper's Omniglot model is a 5-layer CNN trained for
long; see its appendix):

- b and u each are a Conv-4 (``workbench.core.models.conv4``) with slow weights only, followed by the augmented
  layers: b by an augmented hidden layer and an augmented output layer, u by one augmented layer whose output is the
  representation. Fast weights exist only for these fully connected layers, not for the convolutions. With
  ``shared_trunk`` (the recommended recipes) u reads b's Conv-4 features instead of having its own Conv-4.
- b's output layer sums its slow and fast logits without ReLU (a ReLU before the softmax would clip every negative
  logit to zero); hidden layers and u's layer use the paper's ReLU-then-sum. Fast branches have no bias.
- Labels are permuted in every episode, so b's slow output rows are interchangeable: a task of another number of ways
  than training uses the first rows (cycling through them when it has more ways).
- m and d are MLPs over each coordinate's two preprocessed numbers with ``generator_units`` hidden units in two ReLU
  layers; m averages over the T pairs rather than reading them with a recurrent net. p defaults to 7.
  Each is made odd in the gradient, f(g) − f(−g), so a zero gradient gives no fast weight and the fast weights' signs
  follow the gradients': a plain fresh MLP gives nearly the same fast weight to every coordinate (the preprocessed
  gradients are alike), and behind a ReLU a constant negative one silences the fast branch, and with it every
  gradient to its generator, for good (2 of 4 seeds on Omniglot-sized inputs here).
- The contrastive loss (Hadsell, Chopra & LeCun 2006, margin 1) is on unit-length representations; its T pairs are
  fixed, not sampled: pairs (i, i + k mod N) for k = 1, 2, ... until ``representation_pairs`` (the same support
  always gives the same fast weights). In 1-shot tasks every pair is of two classes.
- ``attention_scale`` multiplies the cosines before the attention's softmax (the paper: 1). Batch norm in the trunks
  uses the statistics of the episode (support and queries together) in training, running statistics in evaluation.

Paper numbers (Munkhdalai & Yu 2017, Table 1, one-shot accuracy on Omniglot with the earlier split of Santoro et al.
and Vinyals et al., 1,200 training characters, not Lake's background/evaluation split): 98.95% (5-way 1-shot) and
97.00% (20-way 1-shot).

The Mechanism view shows, on a fixed probe task (the first training episode met), the norms of the slow and fast
weights of every augmented layer, over training and for the task, the values of those weights by layer, and each
probe query's attention over the support memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Algorithm, Family
from workbench.core.algorithms.matching import probe_subset, thumbnails
from workbench.core.algorithms.meta_lstm import preprocess
from workbench.core.hparams import hparam
from workbench.core.inspection import InspectionSpec
from workbench.core.models.conv4 import Conv4
from workbench.core.recipes import Recipe

PAPER = "Munkhdalai & Yu (2017)"
CONTRASTIVE_MARGIN = 1.0
MAX_HISTORY = 200  # points of the norms-over-training curves kept (every other one thinned beyond)
Weights = dict[str, torch.Tensor]


# --- layer augmentation and per-example gradients ------------------------------------------------------------
def batched_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [B, in] through ``weight`` [out, in] (shared by the rows) or [B, out, in] (one per row)."""
    if weight.dim() == 2:
        return x @ weight.T
    return torch.einsum("boi,bi->bo", weight, x)


def augmented(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, fast: torch.Tensor | None) -> torch.Tensor:
    """Layer augmentation (figure 2): ReLU(W x + b) + ReLU(W* x); the slow branch alone without fast weights."""
    out = F.relu(batched_linear(x, weight) + bias)
    return out if fast is None else out + F.relu(batched_linear(x, fast))


def per_example_gradients(losses_of: Callable[[Weights], torch.Tensor], weights: Weights, count: int,
                          create_graph: bool) -> Weights:
    """∇_W L_i for each of ``count`` losses, [count, *W.shape] per weight: the weights are repeated once per example
    (a view), so the i-th loss of ``losses_of(copies)`` reaches only copy i and one backward gives them all."""
    copies = {name: value.unsqueeze(0).expand(count, *value.shape) for name, value in weights.items()}
    losses = losses_of(copies)
    grads = torch.autograd.grad(losses.sum(), list(copies.values()), create_graph=create_graph)
    return dict(zip(copies, grads))


def support_pairs(count: int, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """T fixed pairs of support indices: (i, i + k mod count) for k = 1, 2, ..., each unordered pair once, the
    first ``limit`` (0: ``count``)."""
    limit = limit or count
    seen, pairs = set(), []
    for offset in range(1, count):
        for i in range(count):
            key = frozenset((i, (i + offset) % count))
            if key not in seen and len(pairs) < limit:
                seen.add(key)
                pairs.append((i, (i + offset) % count))
    first, second = zip(*pairs) if pairs else ((), ())
    return torch.tensor(first, dtype=torch.long), torch.tensor(second, dtype=torch.long)


def contrastive_losses(first: torch.Tensor, second: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Hadsell et al. (2006) per pair on unit-length vectors: d² for a pair of one class, max(0, margin − d)² else."""
    squared = (F.normalize(first, dim=-1) - F.normalize(second, dim=-1)).pow(2).sum(dim=-1)
    distance = (squared + 1e-12).sqrt()  # a finite second derivative where two representations coincide
    return same * squared + (1 - same) * F.relu(CONTRASTIVE_MARGIN - distance) ** 2


# --- the networks ------------------------------------------------------------------------------------------------
class BaseLearner(nn.Module):
    """b: a Conv-4 (slow), an augmented hidden layer and an augmented output layer (slow W, fast W*)."""

    def __init__(self, in_channels: int, filters: int, image_size: int, units: int, ways: int):
        super().__init__()
        self.trunk = Conv4(in_channels, filters, image_size)
        self.hidden = nn.Linear(self.trunk.out_dim, units)
        self.output = nn.Linear(units, ways)

    def rows(self, ways: int) -> torch.Tensor:
        return torch.arange(ways, device=self.output.weight.device) % self.output.out_features

    def slow_weights(self, ways: int) -> Weights:
        """The slow weights the task's gradients are taken of (the output rows of a ``ways``-way task)."""
        return {"hidden": self.hidden.weight, "output": self.output.weight[self.rows(ways)]}

    def head(self, features: torch.Tensor, ways: int, slow: Weights, fast: Weights | None = None) -> torch.Tensor:
        """Logits of the augmented layers; ``slow`` and ``fast`` weights shared by the rows or one per row."""
        hidden = augmented(features, slow["hidden"], self.hidden.bias, None if fast is None else fast["hidden"])
        logits = batched_linear(hidden, slow["output"]) + self.output.bias[self.rows(ways)]
        return logits if fast is None else logits + batched_linear(hidden, fast["output"])


class RepresentationLearner(nn.Module):
    """u: a Conv-4 (slow) and one augmented layer (slow Q, task-level fast Q*) giving the representation r. Without
    a trunk of its own (``own_trunk=False``) it reads the base learner's features."""

    def __init__(self, in_channels: int, filters: int, image_size: int, units: int, own_trunk: bool = True):
        super().__init__()
        trunk = Conv4(in_channels, filters, image_size)
        self.trunk = trunk if own_trunk else None
        self.representation = nn.Linear(trunk.out_dim, units)

    def slow_weights(self) -> Weights:
        return {"representation": self.representation.weight}

    def represent(self, features: torch.Tensor, slow: Weights, fast: Weights | None = None) -> torch.Tensor:
        return augmented(features, slow["representation"], self.representation.bias,
                         None if fast is None else fast["representation"])


class FastWeightGenerator(nn.Module):
    """m or d: the same small MLP f for every coordinate, from its preprocessed gradient to one fast weight, made odd
    in the gradient: f(log|g| / p, sign g) − f(log|g| / p, −sign g) (for |g| ≥ e^−p; likewise below)."""

    def __init__(self, units: int, p: float):
        super().__init__()
        self.p = p
        self.net = nn.Sequential(nn.Linear(2, units), nn.ReLU(), nn.Linear(units, units), nn.ReLU(),
                                 nn.Linear(units, 1))

    def forward(self, grad: torch.Tensor) -> torch.Tensor:
        inputs = preprocess(grad, self.p)
        flipped = inputs * inputs.new_tensor([1.0, -1.0])  # the preprocessed −g
        return (self.net(inputs) - self.net(flipped)).squeeze(-1)


class MetaLearner(nn.Module):
    """The fast-weight generators m (for u) and d (for b), and the count of meta-steps (the view's x axis, kept in
    the checkpoint so a resumed run goes on counting)."""

    def __init__(self, units: int, p: float):
        super().__init__()
        self.m = FastWeightGenerator(units, p)
        self.d = FastWeightGenerator(units, p)
        self.register_buffer("meta_steps", torch.zeros((), dtype=torch.long))


# --- declarations ----------------------------------------------------------------------------------------------
@dataclass
class MetaNetworksHParams:
    hidden: int = hparam(64, f"Filters per Conv-4 block of the base learner and of u ({PAPER} use 64 filters in a "
                         "5-layer CNN on Omniglot).", low=4, high=256)
    augmented_units: int = hparam(64, "Units of the base learner's augmented hidden layer and of u's augmented "
                                  "representation layer (slow and fast weights, summed after ReLU).", low=4, high=1024)
    generator_units: int = hparam(20, f"Hidden units of the coordinate-wise fast-weight generators m and d (two ReLU "
                                  f"layers; {PAPER} use small MLPs of 20 units).", low=2, high=256)
    gradient_p: float = hparam(7.0, "p of the gradient preprocessing (Andrychowicz et al. 2016): g -> (log|g| / p, "
                               "sign g) when |g| ≥ e^−p, else (−1, e^p g). 7 as in the MetaNet authors' code (10 in "
                               "Andrychowicz et al.).", low=1.0, high=20.0)
    attention_scale: float = hparam(1.0, f"Multiplies the cosine similarities of a query's representation to the "
                                    f"memory's keys before the attention's softmax; {PAPER} use none (1). Cosines of "
                                    "ReLU representations lie in [0, 1], so a larger scale sharpens the read.",
                                    low=0.01, high=100.0, log_scale=True)
    representation_pairs: int = hparam(0, f"T: support pairs whose contrastive-loss gradients m turns into u's "
                                       f"task-level fast weights Q* ({PAPER}, algorithm 1); 0: one pair per support "
                                       "example.", low=0, high=10_000)
    shared_trunk: bool = hparam(False, f"u reads the base learner's Conv-4 features instead of a Conv-4 of its own "
                                f"({PAPER}: two networks). Halves the convolutions, so twice the episodes in a time "
                                "budget.")


NORMS_OVER_TRAINING = InspectionSpec(
    "norms_over_training", "Weight norms over training", "curves",
    f"The Frobenius norm of each augmented layer's slow weights and of its fast weights on the probe task (the first "
    f"training episode met), from the first meta-step and at every validation: u's representation layer Q (fast: "
    f"the task-level Q*) and the base learner's hidden layer W1 and output layer W2 (fast: the queries' W1*, W2* "
    f"read from memory, mean over the queries). How much of each layer the support's gradients rewrite as training "
    f"goes ({PAPER}, section 3.3).",
    x_label="meta-step", y_label="norm", x_key="step")
NORMS_BY_LAYER = InspectionSpec(
    "norms_by_layer", "Slow and fast norms per layer", "heatmap",
    f"For the probe task now: the norm of the slow and of the fast weights of every augmented layer ({PAPER}, layer "
    "augmentation): u's representation layer Q and the base learner's hidden layer W1 and output layer W2 (fast: "
    "the mean over the probe queries of the weights each reads from memory). Fast weights are built from this "
    "support's loss gradients alone.",
    x_label="weights", y_label="layer")
WEIGHTS_BY_LAYER = InspectionSpec(
    "weights_by_layer", "Slow and fast weight values", "layer_histograms",
    f"The values of each augmented layer's slow weights and of its fast weights on the probe task ({PAPER}): fast "
    "weights are the generators' outputs for this support's gradients, one per slow weight.")
MEMORY_ATTENTION = InspectionSpec(
    "memory_attention", "Memory read", "heatmap",
    f"The attention softmax(cos(R, r)) of each probe query (rows) over the support memory (columns, one slot of fast "
    f"weights per support image): a query's fast weights are this mix of the slots ({PAPER}, algorithm 1).",
    x_label="memory slot (support image)", y_label="query")

TUNED = {"shared_trunk": True, "augmented_units": 32, "representation_pairs": 5, "attention_scale": 10.0}
CLASSIFICATION_DEFAULT = Recipe(
    "default", "Tuned here for 3 CPU-minutes on one thread: u shares the base learner's Conv-4, 32 augmented units, "
    "5 support pairs for u's fast weights (about 2.3 times the paper-like network's episodes per second), the "
    "attention's cosines scaled by 10, 15-way training episodes with 5 queries per class, Adam 1e-3, cosine schedule "
    "over the time budget or 2,000 steps.", kind="classification", recommended=True,
    training={"train_ways": 15, "train_queries": 5, "lr": 1e-3}, hparams=TUNED)
OMNIGLOT = Recipe(
    "omniglot", "Tuned here for 3 CPU-minutes on one thread on Omniglot: as the default, with rotation classes. "
    f"{PAPER} report 98.95% (5-way 1-shot) and 97.00% (20-way 1-shot), Table 1 (the earlier 1,200-character split), "
    "after far longer training.", datasets=("omniglot",), recommended=True, dataset={"rotations": True},
    training={"train_ways": 15, "train_queries": 5, "lr": 1e-3}, hparams=TUNED)


@register
class MetaNetworks(Algorithm):
    name = "meta-networks"
    title = "Meta Networks"
    family = Family.MODEL
    summary = "A meta learner turns support-set loss gradients into fast weights that augment a base learner."
    description = ("Meta Networks (Munkhdalai & Yu, 2017) learn to learn in one pass. For each support image the "
                   "base learner's loss gradient is handed to a meta learner, a small network applied to every "
                   "weight, which turns it into fast weights stored in a memory beside a key, the image's "
                   "representation. A query reads its own fast weights from the memory by attention over the keys; "
                   "the base learner adds them to its slow weights (layer augmentation: both branches through ReLU, "
                   "summed) and classifies. The representation function has task-level fast weights of its own, "
                   "made the same way from a contrastive loss on support pairs. Slow weights and the meta learner "
                   "are trained end to end on the query loss. The Mechanism view shows slow and fast weight norms "
                   "per layer and the memory read.")
    HParams = MetaNetworksHParams
    kinds = ("classification",)
    recipes = (CLASSIFICATION_DEFAULT, OMNIGLOT)
    capabilities = frozenset({"embeddings", "inspection"})
    inspections = (NORMS_OVER_TRAINING, NORMS_BY_LAYER, WEIGHTS_BY_LAYER, MEMORY_ATTENTION)
    support_dependent_embeddings = True  # u has the task's fast weights Q*

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        channels, size, units = model_spec.in_channels, model_spec.image_size, hparams.augmented_units
        self.base = BaseLearner(channels, hparams.hidden, size, units, model_spec.ways).to(self.device)
        self.representation = RepresentationLearner(channels, hparams.hidden, size, units,
                                                    own_trunk=not hparams.shared_trunk).to(self.device)
        self.meta = MetaLearner(hparams.generator_units, hparams.gradient_p).to(self.device)
        self._probe = None  # the Mechanism view's fixed episode (cpu copies)
        self._history: list[tuple[int, dict[str, tuple[float, float]]]] = []  # (meta-step, norms by layer)

    def modules(self) -> dict[str, nn.Module]:
        return {"base": self.base, "representation": self.representation, "meta_learner": self.meta}

    # --- the mechanism -------------------------------------------------------------------------------------
    def task_fast_weights(self, features: torch.Tensor, support_y: torch.Tensor, create_graph: bool) -> Weights:
        """Q* = m(Z, {∇_Q L_t}) over the T support pairs' contrastive losses (zero without a pair)."""
        first, second = (index.to(features.device) for index in support_pairs(len(support_y),
                                                                             self.hparams.representation_pairs))
        slow = self.representation.slow_weights()
        if len(first) == 0:
            return {name: torch.zeros_like(value) for name, value in slow.items()}
        same = (support_y[first] == support_y[second]).to(features.dtype)

        def pair_losses(copies: Weights) -> torch.Tensor:
            return contrastive_losses(self.representation.represent(features[first], copies),
                                      self.representation.represent(features[second], copies), same)

        grads = per_example_gradients(pair_losses, slow, len(first), create_graph)
        return {name: self.meta.m(grad).mean(0) for name, grad in grads.items()}

    def example_fast_weights(self, features: torch.Tensor, support_y: torch.Tensor, ways: int,
                             create_graph: bool) -> Weights:
        """The memory M: W*_i = d(G, ∇_W L_i) for each support example, [N, *W.shape] per augmented layer."""
        def example_losses(copies: Weights) -> torch.Tensor:
            return F.cross_entropy(self.base.head(features, ways, copies), support_y, reduction="none")

        grads = per_example_gradients(example_losses, self.base.slow_weights(ways), len(support_y), create_graph)
        return {name: self.meta.d(grad) for name, grad in grads.items()}

    def task_state(self, base_features: torch.Tensor, representation_features: torch.Tensor,
                   support_y: torch.Tensor, ways: int, create_graph: bool) -> dict:
        """What a task's support gives: u's fast weights Q*, the memory of fast weights W*_i and its keys r'_i."""
        task_fast = self.task_fast_weights(representation_features, support_y, create_graph)
        keys = self.representation.represent(representation_features, self.representation.slow_weights(), task_fast)
        memory = self.example_fast_weights(base_features, support_y, ways, create_graph)
        return {"task_fast": task_fast, "keys": keys, "memory": memory, "ways": ways}

    def read(self, state: dict, representation_features: torch.Tensor) -> tuple[torch.Tensor, Weights]:
        """Each query's attention over the memory's keys [Q, N] and its fast weights W* = aᵀ M."""
        queries = self.representation.represent(representation_features, self.representation.slow_weights(),
                                                state["task_fast"])
        cosines = F.normalize(queries, dim=-1) @ F.normalize(state["keys"], dim=-1).T
        attention = (self.hparams.attention_scale * cosines).softmax(dim=-1)
        fast = {name: (attention @ slots.flatten(1)).view(len(queries), *slots.shape[1:])
                for name, slots in state["memory"].items()}
        return attention, fast

    def query_logits(self, state: dict, base_features: torch.Tensor,
                     representation_features: torch.Tensor) -> torch.Tensor:
        _, fast = self.read(state, representation_features)
        ways = state["ways"]
        return self.base.head(base_features, ways, self.base.slow_weights(ways), fast)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The trunks' features of b and of u (the same with a shared trunk)."""
        base = self.base.trunk(x)
        return base, base if self.representation.trunk is None else self.representation.trunk(x)

    # --- learning ------------------------------------------------------------------------------------------
    def episode_logits(self, episode, create_graph: bool = True) -> torch.Tensor:
        """Query logits of an episode (support and queries share the trunks' batch-norm batch)."""
        count = len(episode.support_x)
        base, representation = self.features(torch.cat([episode.support_x, episode.query_x]))
        state = self.task_state(base[:count], representation[:count], episode.support_y, episode.ways, create_graph)
        return self.query_logits(state, base[count:], representation[count:])

    def meta_train_step(self, episodes) -> dict[str, float]:
        if self._probe is None:  # the view's probe; its norms before any update start the curves
            self._probe = episodes[0].to("cpu")
            self._remember(int(self.meta.meta_steps), self._probe_weights()["norms"])
        self.train()
        result = self.cross_entropy_step(episodes, self.episode_logits)
        self.meta.meta_steps += 1
        return result

    def adapt(self, support_x, support_y, ways):
        """The task's state from its support: Q*, the memory of fast weights and its keys (detached)."""
        self.eval()
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        with torch.no_grad():
            base, representation = self.features(support_x)
        with torch.enable_grad():  # the meta information is a gradient, even when called under no_grad
            state = self.task_state(base, representation, support_y, ways, create_graph=False)
        detach = lambda weights: {name: value.detach() for name, value in weights.items()}  # noqa: E731
        return {"task_fast": detach(state["task_fast"]), "keys": state["keys"].detach(),
                "memory": detach(state["memory"]), "ways": ways, "support_x": support_x}

    @torch.no_grad()
    def predict(self, adapted, query_x):
        self.eval()
        base, representation = self.features(query_x.to(self.device))
        return self.query_logits(adapted, base, representation).softmax(dim=-1)

    @torch.no_grad()
    def embed(self, x, adapted=None):
        """u's representation, unit-length (the attention compares cosines): with the task's fast weights Q* when
        ``adapted`` is given, else with the slow weights alone."""
        self.eval()
        _, features = self.features(x.to(self.device))
        fast = None if adapted is None else adapted["task_fast"]
        return F.normalize(self.representation.represent(features, self.representation.slow_weights(), fast), dim=-1)

    # --- inspection ----------------------------------------------------------------------------------------
    def layer_weights(self, adapted: dict, fast: Weights, ways: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per augmented layer: (slow weights, fast weights used: Q*, or the queries' W* [Q, ...])."""
        slow = self.base.slow_weights(ways)
        return {"u: Q": (self.representation.representation.weight, adapted["task_fast"]["representation"]),
                "b: W1": (slow["hidden"], fast["hidden"]), "b: W2": (slow["output"], fast["output"])}

    def _probe_weights(self) -> dict:
        """On the probe episode's subset: the augmented layers' (slow, fast) weights, their norms (fast weights read
        per query: the mean of their norms) and the queries' attention over the memory."""
        support_x, support_y, query_x, query_y = probe_subset(self._probe)
        ways = int(support_y.max()) + 1
        adapted = self.adapt(support_x, support_y, ways)
        with torch.no_grad():
            attention, fast = self.read(adapted, self.features(query_x.to(self.device))[1])
            layers = {layer: (slow.detach(), fast_w) for layer, (slow, fast_w)
                      in self.layer_weights(adapted, fast, ways).items()}
        norms = {}
        for layer, (slow_w, fast_w) in layers.items():
            per_query = fast_w.dim() > slow_w.dim()
            fast_norm = fast_w.flatten(1).norm(dim=1).mean() if per_query else fast_w.norm()
            norms[layer] = (float(slow_w.norm()), float(fast_norm))
        return {"layers": layers, "norms": norms, "attention": attention,
                "probe": (support_x, support_y, query_x, query_y)}

    def inspect(self) -> dict[str, dict]:
        """The probe task's slow and fast weights and memory read; nothing before training."""
        if self._probe is None:
            return {}
        view = self._probe_weights()
        norms, layers, (support_x, support_y, query_x, query_y) = view["norms"], view["layers"], view["probe"]
        self._remember(int(self.meta.meta_steps), norms)
        return {"norms_over_training": self._curves(),
                "norms_by_layer": {"values": np.array(list(norms.values())), "rows": np.array(list(norms)),
                                   "columns": np.array(["slow", "fast"])},
                "weights_by_layer": {f"{layer} {which}": weights.cpu().numpy()
                                     for layer, pair in layers.items() for which, weights in zip(("slow", "fast"), pair)},
                "memory_attention": {"values": view["attention"].cpu().numpy(),
                                     "rows": np.array([f"q{i} c{int(y)}" for i, y in enumerate(query_y)]),
                                     "columns": np.array([f"c{int(y)}" for y in support_y]),
                                     "row_images": thumbnails(query_x), "column_images": thumbnails(support_x)}}

    def _remember(self, step: int, norms: dict[str, tuple[float, float]]) -> None:
        """Adds a point to the norms' history (replacing one of the same or a later step: a resumed run)."""
        self._history = [point for point in self._history if point[0] < step] + [(step, norms)]
        while len(self._history) > MAX_HISTORY:
            keep = sorted(set(range(0, len(self._history) - 1, 2)) | {len(self._history) - 1})
            self._history = [self._history[i] for i in keep]

    def _curves(self) -> dict[str, np.ndarray]:
        curves = {"step": np.array([step for step, _ in self._history], dtype=np.float64)}
        for layer in self._history[-1][1]:
            for column, which in enumerate(("slow", "fast")):
                curves[f"{layer} {which}"] = np.array([norms[layer][column] for _, norms in self._history])
        return curves


__all__ = ["MetaNetworks", "BaseLearner", "RepresentationLearner", "FastWeightGenerator", "MetaLearner",
           "augmented", "batched_linear", "per_example_gradients", "support_pairs", "contrastive_losses"]
