"""Few-shot GNN (Garcia & Bruna, 2018, "Few-Shot Learning with Graph Neural Networks", ICLR): classify a query by
message passing on a graph whose nodes are the support images and the query.

Each node starts as the Conv-4 embedding of its image concatenated with its label: the one-hot label for a support
image, the uniform distribution 1/ways for the query (the paper, section 4; the authors' code feeds zeros). A layer
learns the graph's edges from its nodes and then updates the nodes:

    A_ij = softmax_{j ≠ i}( MLP(|x_i − x_j|) )            (the learned metric; no self-edges)
    x ← [x, leaky_relu(Linear([x, A·x]) + batch norm)]      (graph convolution with the operators {I, A})

so features are concatenated across layers (dense). After ``gnn_layers`` such layers a last edge MLP and graph
convolution give one logit per class at every node; the query node's logits are its prediction. Architecture from
the authors' code (github.com/vgsatorras/few-shot-gnn, models/gnn_iclr.py, ``GNN_nl``): the edge MLP is four 1x1
layers of widths 2h, 2h, h, h (h = 96) with batch norm and leaky ReLU, then a linear map to one score; the self-edge
is masked before the row softmax; each graph convolution adds 48 features (nf/2 with nf = 96); two layers before the
last one. Their Omniglot variant (``GNN_nl_omniglot``) scales the edge MLP's widths with the node features
(2x, 1.5x, 1x, 1x), uses dropout 0.3 in the last edge MLP and batch norm on the final layer; here one form serves
every dataset (``edge_hidden``). The encoder is the project's Conv-4 sized to the dataset (64 features at 28x28;
the authors' Omniglot encoder ends in a 64-unit linear layer instead).

As in the paper, each query gets its own graph (the support nodes and that query, the few-shot setting t = 1): a
query's prediction never depends on the other queries of the episode, so tasks with one query (try a task) are
classified as tasks with many, and evaluation is not transductive. The graphs of an episode share the support
embeddings and run as one batch [queries, 1 + support, features]; evaluation runs them in chunks (batch norm then
uses its running statistics, so chunking changes nothing). Training is episodic: cross-entropy of every query
node's logits over the episode's classes, each graph standing for one of the paper's tasks.

The label one-hot and the final layer have ``label_slots`` entries (by default the training ways, as the paper's
network is built for its training ways); a task with fewer ways leaves the extra slots at zero and ignores their
logits, a task with more ways is refused.

Paper numbers (Garcia & Bruna 2018, Table 1, Omniglot, 1,200 training characters with rotation classes): 99.2%
(5-way 1-shot), 99.7% (5-way 5-shot), 97.4% (20-way 1-shot), 99.0% (20-way 5-shot); Table 2, mini-ImageNet 5-way:
50.33 ± 0.36% (1-shot), 66.41 ± 0.63% (5-shot).

Embeddings (the ``embeddings`` capability) are the Conv-4 node embeddings: the features the learned metric compares,
for queries and supports alike (the GNN's final node features exist only inside one query's graph). The Mechanism
view shows the learned adjacency from probe queries to the support nodes in the first and last layers, and each
layer's share of a query's edge weight on its own class (the layer acting as the learned similarity varies between
runs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Algorithm, Family
from workbench.core.errors import ConfigError
from workbench.core.hparams import hparam
from workbench.core.inspection import InspectionSpec, image_thumbnails as thumbnails
from workbench.core.models.conv4 import Conv4
from workbench.core.recipes import Recipe

GRAPH_CHUNK = 128  # query graphs per forward pass when predicting (bounds memory for 20-way tasks)
PROBE_ROWS, PROBE_COLUMNS = 10, 20  # the adjacency heatmap: at most this many queries and support nodes


# --- the graph network ----------------------------------------------------------------------------------------
class EdgeMLP(nn.Module):
    """The learned metric: an MLP on |x_i − x_j| gives each pair a score; a softmax over each node's neighbours
    (itself excluded) gives the adjacency, so every row sums to 1."""

    def __init__(self, features: int, hidden: int):
        super().__init__()
        widths = [features, 2 * hidden, 2 * hidden, hidden, hidden]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths, widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.BatchNorm1d(width_out), nn.LeakyReLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[graphs, nodes, features] -> adjacency [graphs, nodes, nodes]."""
        graphs, nodes, features = x.shape
        # |x_i − x_j| is symmetric and self-edges are masked: the MLP scores each pair i < j once (half the cost;
        # its batch norm then sees each pair once, where the authors' code also counts the masked diagonal).
        first, second = torch.triu_indices(nodes, nodes, 1, device=x.device)
        pair_scores = self.mlp((x[:, first] - x[:, second]).abs().reshape(-1, features)).view(graphs, -1)
        scores = x.new_full((graphs, nodes, nodes), float("-inf"))
        scores[:, first, second] = pair_scores
        scores[:, second, first] = pair_scores
        return scores.softmax(dim=-1)


class GraphConv(nn.Module):
    """One graph convolution with the two operators {I, A}: Linear([x, A·x]), then batch norm over the nodes."""

    def __init__(self, features: int, out_features: int, batch_norm: bool = True):
        super().__init__()
        self.linear = nn.Linear(2 * features, out_features)
        self.norm = nn.BatchNorm1d(out_features) if batch_norm else None

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        out = self.linear(torch.cat([x, adjacency @ x], dim=-1))
        if self.norm is not None:
            out = self.norm(out.reshape(-1, out.shape[-1])).view(out.shape)
        return out


class FewShotGNN(nn.Module):
    """``layers`` dense graph layers (edges, then convolution whose output is appended to the node features) and a
    final edge MLP and convolution giving ``classes`` logits per node (no batch norm, as in ``GNN_nl``)."""

    def __init__(self, in_features: int, classes: int, layers: int = 2, growth: int = 48, edge_hidden: int = 96):
        super().__init__()
        self.edges, self.convs = nn.ModuleList(), nn.ModuleList()
        features = in_features
        for _ in range(layers):
            self.edges.append(EdgeMLP(features, edge_hidden))
            self.convs.append(GraphConv(features, growth))
            features += growth
        self.last_edges = EdgeMLP(features, edge_hidden)
        self.last = GraphConv(features, classes, batch_norm=False)

    def forward(self, nodes: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Node logits [graphs, nodes, classes] and each layer's adjacency [graphs, nodes, nodes]."""
        x, adjacencies = nodes, []
        for edges, conv in zip(self.edges, self.convs):
            adjacencies.append(edges(x))
            x = torch.cat([x, F.leaky_relu(conv(x, adjacencies[-1]))], dim=-1)
        adjacencies.append(self.last_edges(x))
        return self.last(x, adjacencies[-1]), adjacencies


def query_graphs(support: torch.Tensor, support_labels: torch.Tensor, queries: torch.Tensor,
                 ways: int) -> torch.Tensor:
    """One graph per query: node 0 is the query (label part uniform over the task's ``ways``), nodes 1.. the support
    set (one-hot labels). ``support_labels`` is [support, slots]; returns [queries, 1 + support, features + slots]."""
    slots = support_labels.shape[1]
    uniform = torch.zeros(slots, dtype=queries.dtype, device=queries.device)
    uniform[:ways] = 1.0 / ways
    query_nodes = torch.cat([queries, uniform.expand(len(queries), slots)], dim=1)[:, None]
    support_nodes = torch.cat([support, support_labels.to(support.dtype)], dim=1)
    return torch.cat([query_nodes, support_nodes.expand(len(queries), *support_nodes.shape)], dim=1)


# --- declarations ---------------------------------------------------------------------------------------------
@dataclass
class GNNHParams:
    hidden: int = hparam(64, "Filters per Conv-4 block of the encoder (64 in Garcia & Bruna 2018).", low=4, high=256)
    gnn_layers: int = hparam(2, "Graph layers (learned edges, then a graph convolution) before the final one that "
                             "gives the logits; 2 in Garcia & Bruna's code for Omniglot and mini-ImageNet.",
                             low=0, high=8)
    gnn_layer_features: int = hparam(48, "Features each graph convolution appends to every node (dense, as in "
                                     "Garcia & Bruna 2018: nf/2 = 48).", low=1, high=512)
    edge_hidden: int = hparam(96, "Width h of the edge MLP on |x_i − x_j| (layers 2h, 2h, h, h, then one score; "
                              "h = nf = 96 in Garcia & Bruna's code).", low=1, high=512)
    label_slots: int = hparam(0, "Size of the label one-hot in the node features and of the final layer's output; "
                              "0 uses the training ways. Tasks with fewer ways leave the extra slots empty; tasks "
                              "with more ways cannot be classified.", low=0, high=200)


# Measured (5-way 1-shot, one CPU-minute each, 50 test tasks): the share of a query's edge weight on its own class's
# support was 74% and 11% in the first layer, 5% and 69% in the second on glyphs (two runs), 75% and 71% on Omniglot
# (one run), and 1-2% in the last layer of all three.
ADJACENCY = InspectionSpec(
    "learned_adjacency", "Learned adjacency (first layer)", "heatmap",
    "The edge weights of the first graph layer from each probe query (rows) to the support nodes (columns), on a "
    "fixed probe task (the first training task this run met): each query's softmax over its neighbours, learned from "
    "|x_i − x_j| of the CNN embeddings and labels (Garcia & Bruna 2018). Weight on the supports of the query's own "
    "class carries the right label into the query's node; which layer learns to do that varies between runs (see "
    "'Own-class weight by layer'). At most 10 queries and 20 support nodes.",
    x_label="support node", y_label="query")
LAST_ADJACENCY = InspectionSpec(
    "last_layer_adjacency", "Learned adjacency (last layer)", "heatmap",
    "The edge weights of the last graph layer, whose graph convolution gives the class scores, from each probe query "
    "(rows) to the support nodes (columns) on the same probe task. By then the query's node holds what the earlier "
    "layers gathered; in the runs measured here (glyphs, Omniglot) this layer learned to look away from the query's "
    "own class (1-2% of the weight).",
    x_label="support node", y_label="query")
OWN_CLASS = InspectionSpec(
    "own_class_weight", "Own-class weight by layer", "curves",
    "For each graph layer, the share of a probe query's edge weight that goes to the supports of its own class "
    "(mean over the probe task's queries), beside chance (1 / ways, uniform edges): the layer well above chance is "
    "the one acting as the learned similarity (Garcia & Bruna 2018).",
    x_label="graph layer", y_label="share of the query's edge weight", x_key="layer")

DEFAULT = Recipe(
    "default", "Tuned here for a few CPU minutes: one episode per meta-step whose queries (2 per class) each make "
    "a graph with the support set, an edge MLP half the paper's width (h = 48 against 96: 85% against 82% on "
    "glyphs 5-way 1-shot after one CPU-minute, one run each), Adam 1e-3 on a cosine schedule, 2,000 steps or the time "
    "budget. After 1,400 steps (about one CPU-minute, one thread): glyphs 5-way 1-shot 84.3% ± 0.6 (1,000 test "
    "episodes), Omniglot 5-way 1-shot (Lake split) 87.0% ± 1.0 (300 test episodes). "
    "Garcia & Bruna (2018, Table 1) report 99.2% (Omniglot 5-way 1-shot) and 97.4% (20-way 1-shot) after 100,000 "
    "steps of 300 graphs.", recommended=True,
    training={"train_queries": 2, "meta_batch": 1, "lr": 1e-3, "lr_schedule": "cosine"},
    hparams={"edge_hidden": 48})
OMNIGLOT_PAPER = Recipe(
    "paper", "Garcia & Bruna's Omniglot 5-way 1-shot setup (their code): 1,200 training characters with rotation "
    "classes, 300 graphs of one query per step (here 60 episodes of one query per class), Adam 1e-3 halved at each "
    "quarter (the paper: every 10,000 of 100,000 iterations). The paper reports 99.2% (Table 1); days on a CPU.",
    datasets=("omniglot",), dataset={"split": "vinyals", "rotations": True, "ways": 5, "shots": 1},
    training={"train_queries": 1, "meta_batch": 60, "lr": 1e-3, "lr_schedule": "step", "steps": 100_000,
              "val_interval": 2000, "val_episodes": 200})
OMNIGLOT_PAPER_20WAY = Recipe(
    "paper-20way", "Garcia & Bruna's Omniglot 20-way 1-shot setup (their code): rotation classes, 100 graphs of one "
    "query per step (here 5 episodes of one query per class), Adam 1e-3 halved at each quarter (the paper: every "
    "10,000 of 80,000 iterations). The paper reports 97.4% (Table 1).",
    datasets=("omniglot",), dataset={"split": "vinyals", "rotations": True, "ways": 20, "shots": 1},
    training={"train_queries": 1, "meta_batch": 5, "lr": 1e-3, "lr_schedule": "step", "steps": 80_000,
              "val_interval": 2000, "val_episodes": 200})


@register
class GNN(Algorithm):
    name = "gnn"
    title = "Few-shot GNN"
    family = Family.METRIC
    summary = "Message passing on a graph of the support images and the query, with learned edges."
    description = ("The few-shot GNN (Garcia & Bruna, 2018) puts the support images and a query on a fully connected "
                   "graph. Each node holds the image's CNN embedding and its label (one-hot for the support, "
                   "uniform for the query). A small network on |x_i − x_j| learns how strongly each pair of nodes is "
                   "linked; graph convolutions then mix every node with its weighted neighbours, so label information "
                   "flows from the support images to the query. After a few such layers the query's node gives the "
                   "class scores. The whole model, CNN included, is trained on episodes; it needs no inner loop. "
                   "The Mechanism view shows the learned edge weights from queries to the support images.")
    HParams = GNNHParams
    recipes = (DEFAULT, OMNIGLOT_PAPER, OMNIGLOT_PAPER_20WAY)
    capabilities = frozenset({"embeddings", "inspection"})
    inspections = (ADJACENCY, LAST_ADJACENCY, OWN_CLASS)

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        self.slots = hparams.label_slots or model_spec.ways
        self.encoder = Conv4(model_spec.in_channels, hparams.hidden, model_spec.image_size).to(self.device)
        self.gnn = FewShotGNN(self.encoder.out_dim + self.slots, self.slots, hparams.gnn_layers,
                              hparams.gnn_layer_features, hparams.edge_hidden).to(self.device)
        self._probe = None  # the inspection's fixed task: the first training episode met, on the CPU

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "gnn": self.gnn}

    def _one_hot(self, labels: torch.Tensor, ways: int) -> torch.Tensor:
        if ways > self.slots:
            raise ConfigError("algorithm.hparams.label_slots", f"this GNN was built for at most {self.slots} ways "
                              f"(its label one-hot and output), but the task has {ways}; train with "
                              f"{ways}-way episodes or set label_slots to at least {ways}")
        return F.one_hot(labels, self.slots).float()

    def _logits(self, support: torch.Tensor, support_labels: torch.Tensor, queries: torch.Tensor, ways: int,
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Each query's logits over the task's ways [queries, ways], from its own graph; and the adjacencies."""
        out, adjacencies = self.gnn(query_graphs(support, support_labels, queries, ways))
        return out[:, 0, :ways], adjacencies

    # --- learning ------------------------------------------------------------------------------------------------
    def meta_train_step(self, episodes) -> dict[str, float]:
        self.train()
        if self._probe is None:
            first = episodes[0]
            self._probe = (first.support_x.cpu(), first.support_y.cpu(), first.query_x.cpu(), first.query_y.cpu(),
                           first.ways)
        return self.cross_entropy_step(episodes, self._episode_logits)

    def _episode_logits(self, episode) -> torch.Tensor:
        embeddings = self.encoder(torch.cat([episode.support_x, episode.query_x]))
        support, queries = embeddings[: len(episode.support_x)], embeddings[len(episode.support_x):]
        return self._logits(support, self._one_hot(episode.support_y, episode.ways), queries, episode.ways)[0]

    @torch.no_grad()
    def adapt(self, support_x, support_y, ways):
        """The support set's node features: embeddings and one-hot labels (the GNN runs per query in predict)."""
        self.eval()
        support_y = support_y.to(self.device)
        return {"support": self.encoder(support_x.to(self.device)), "labels": self._one_hot(support_y, ways),
                "ways": ways}

    @torch.no_grad()
    def predict(self, adapted, query_x):
        self.eval()
        queries = self.encoder(query_x.to(self.device))
        logits = [self._logits(adapted["support"], adapted["labels"], chunk, adapted["ways"])[0]
                  for chunk in queries.split(GRAPH_CHUNK)]
        return torch.cat(logits).softmax(dim=-1)

    @torch.no_grad()
    def embed(self, x, adapted=None):
        """The Conv-4 node embeddings (what the learned metric compares); ``adapted`` changes nothing."""
        self.eval()
        return self.encoder(x.to(self.device))

    # --- inspection ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def inspect(self) -> dict[str, dict]:
        """The probe queries' edges to the support nodes (first and last layers) and each layer's own-class weight;
        nothing before training."""
        if self._probe is None:
            return {}
        self.eval()
        support_x, support_y, query_x, query_y, ways = self._probe
        support = self.encoder(support_x.to(self.device))
        _, adjacencies = self._logits(support, self._one_hot(support_y.to(self.device), ways),
                                      self.encoder(query_x.to(self.device)), ways)
        to_support = [a[:, 0, 1:].cpu() for a in adjacencies]  # node 0 of each graph is its query
        own = (query_y[:, None] == support_y[None]).float()
        rows, columns = probe_rows(query_y, ways), torch.arange(min(len(support_x), PROBE_COLUMNS))
        # Short labels fit the cells; the thumbnails show the classes themselves.
        shared = {"rows": np.array([f"class {int(y) + 1}" for y in query_y[rows]]),
                  "columns": np.array([f"class {int(y) + 1}" for y in support_y[columns]]),
                  "row_images": thumbnails(query_x[rows]), "column_images": thumbnails(support_x[columns])}
        layers = np.arange(1, len(adjacencies) + 1)
        return {ADJACENCY.name: {"values": to_support[0][rows][:, columns].numpy(), **shared},
                LAST_ADJACENCY.name: {"values": to_support[-1][rows][:, columns].numpy(), **shared},
                OWN_CLASS.name: {"layer": layers, "own class": np.array([float((a * own).sum(1).mean())
                                                                         for a in to_support]),
                                 "chance (1 / ways)": np.full(len(layers), 1.0 / ways)}}


def probe_rows(query_y: torch.Tensor, ways: int) -> torch.Tensor:
    """At most PROBE_ROWS queries spread over the classes (the first of each class, then the second, ...), in the
    episode's order."""
    rank = torch.zeros_like(query_y)
    for label in range(ways):
        where = query_y == label
        rank[where] = torch.arange(int(where.sum()))
    order = sorted(range(len(query_y)), key=lambda i: (int(rank[i]), i))[:PROBE_ROWS]
    return torch.tensor(sorted(order), dtype=torch.long)




__all__ = ["GNN", "FewShotGNN", "EdgeMLP", "GraphConv", "query_graphs"]
