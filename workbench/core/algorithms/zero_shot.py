"""Zero-shot classification from class descriptors: Prototypical Networks' zero-shot form (Snell, Swersky & Zemel
2017, section 2.7; CUB-200 in section 3.3).

Each class comes with a descriptor, a vector of attributes (the glyphs' are measured from their generator's strokes,
an image folder's come from its descriptors.csv; see workbench.core.data.descriptors). A descriptor encoder g maps
a class's descriptor into the image encoder's embedding space, where it is the class's prototype; a query image x is
classified by a softmax over -||f(x) - g(v_k)||^2, as ProtoNet does with image prototypes. Training episodes build
their prototypes from the descriptors of the episode's classes only (their support images are not used), so the
model can name classes it has never seen an image of. As in the paper, prototypes are scaled to unit length (the
descriptor and the image come from different domains) and image embeddings are not.

The descriptor encoder: the paper's is linear (CUB's 312 attributes onto fixed GoogLeNet features). Here it is an
MLP with one hidden layer by default: the glyphs' 16 attributes are few and interact (the same loop count means a
different shape with or without symmetry), and a linear map of 16 numbers could only reach a 16-dimensional slice of
the 64-dimensional space; ``descriptor_hidden = 0`` gives the paper's linear map. The image encoder is Conv-4 trained
from scratch with the descriptor encoder (the paper kept GoogLeNet fixed).

Evaluation (and validation) is zero-shot: the kind passes each episode's class descriptors to
:meth:`ZeroShot.adapt_from_descriptors` (capability "descriptors"). Each evaluation also reports, on the same
episodes, ``chance`` (1 / n-way) and ``protonet_one_shot``: this model's own image encoder used as a one-shot
ProtoNet (the prototype of a class is the embedding of its first support image). That costs nothing and compares
one labelled image with one description in the same space; a ProtoNet trained for images does better (the
catalogue's ProtoNet on glyphs 5-way 1-shot). Given support images, :meth:`adapt` does exactly that (class means of
the image embeddings), so "try a task" also works with images.

Paper number (Snell et al. 2017, Table 3): 54.6% top-1 zero-shot accuracy on CUB-200's 50 unseen classes
(50-way, 312 attributes, 1,024-d embedding of GoogLeNet features, Adam 1e-4 with weight decay 1e-5, 50-way
training episodes with 10 queries per class). No Omniglot zero-shot number exists (Omniglot has no descriptors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Algorithm, Family, accuracy
from workbench.core.algorithms.protonet import class_means
from workbench.core.data.descriptors import DescriptorSpace, descriptor_space, scale
from workbench.core.errors import ConfigError
from workbench.core.hparams import hparam
from workbench.core.inspection import InspectionSpec, image_thumbnails as thumbnails
from workbench.core.models.conv4 import Conv4
from workbench.core.recipes import Recipe
from workbench.core.stats import mean_ci95

PAPER = "Snell et al. 2017, section 2.7"
SPACE_KEY = "descriptor_space"  # the checkpoint entry beside the networks' weights
PROBE_ROWS, PROBE_COLUMNS = 10, 20


@dataclass
class ZeroShotHParams:
    hidden: int = hparam(64, "Filters per Conv-4 block of the image encoder.", low=8, high=256)
    descriptor_hidden: int = hparam(
        256, f"Hidden units of the descriptor encoder, an MLP with one hidden layer; 0: a linear map, as in {PAPER} "
        "(the glyphs' few attributes interact, which a linear map cannot use).", low=0, high=4096)
    unit_prototypes: bool = hparam(True, f"Scale each prototype (an encoded descriptor) to unit length, as {PAPER} "
                                   "does because descriptors and images come from different domains; image "
                                   "embeddings stay unconstrained.")


class DescriptorEncoder(nn.Module):
    """g: raw descriptors [N, D] -> embeddings [N, E]; inputs scaled to [-1, 1] by the fields' declared ranges."""

    def __init__(self, space: DescriptorSpace, hidden: int, out_dim: int):
        super().__init__()
        self.fields = space.fields
        dim = len(space.fields)
        self.net = (nn.Linear(dim, out_dim) if hidden == 0 else
                    nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim)))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.net(2 * scale(raw, self.fields) - 1)


ZERO_SHOT_DEFAULT = Recipe(
    "default", "Zero-shot from the dataset's class descriptors (the glyphs' own, or an image folder's "
    "descriptors.csv): 20-way training episodes with 10 queries per class (the paper trains 50-way with 10 queries; "
    "glyph alphabets make 20 a better fit for a few CPU-minutes), Adam 1e-3 on a cosine schedule that follows the "
    "time budget when there is one (steps 0 = until max_minutes). Evaluation is 5-way on unseen test classes.",
    recommended=True, training={"train_ways": 20, "train_queries": 10, "lr": 1e-3, "lr_schedule": "cosine"})
PAPER_RECIPE = Recipe(
    "paper", f"The paper's zero-shot setup ({PAPER}; CUB in section 3.3): a linear descriptor encoder, unit-length "
    "prototypes, 50-way training episodes with 10 queries per class, Adam 1e-4 (the paper also uses weight decay "
    "1e-5, not set here). The paper reports 54.6% on CUB-200's 50 unseen classes (Table 3).",
    hparams={"descriptor_hidden": 0}, training={"train_ways": 50, "train_queries": 10, "lr": 1e-4,
                                                "lr_schedule": "constant"})
SIMILARITY = InspectionSpec(
    "descriptor_prototypes", "Queries vs prototypes from descriptors", "heatmap",
    "Probability of each query image of a fixed training episode (rows) for each class's prototype, which the model "
    f"makes from the class's descriptor alone ({PAPER}); the column thumbnails show one image of each class, which "
    "the model never sees. A bright diagonal block: the descriptions pick out the right images.",
    x_label="class (prototype from its descriptor)", y_label="query image")


@register
class ZeroShot(Algorithm):
    name = "zero-shot"
    title = "Zero-shot prototypes from descriptors"
    family = Family.METRIC
    summary = "Classes described by attributes, not images: descriptors map to prototypes."
    description = ("Prototypical Networks' zero-shot form (Snell, Swersky & Zemel, 2017): each class is described by "
                   "a vector of attributes (for the built-in glyphs: strokes, loops, crossings, symmetry, "
                   "curviness ...; for an image folder: a descriptors.csv). A descriptor encoder maps a description "
                   "to a unit-length prototype in the image encoder's space, and a query image goes to the nearest "
                   "prototype. It trains on episodes whose prototypes come from the classes' descriptions only, so "
                   "at test time it classifies images of classes it has never seen an image of. Each evaluation also "
                   "reports chance and its image encoder used as a one-shot ProtoNet on the same episodes.")
    HParams = ZeroShotHParams
    recipes = (ZERO_SHOT_DEFAULT, PAPER_RECIPE)
    capabilities = frozenset({"embeddings", "training_data", "evaluation_extras", "descriptors", "inspection"})
    inspections = (SIMILARITY,)

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        self.encoder = Conv4(model_spec.in_channels, hparams.hidden, model_spec.image_size).to(self.device)
        self.descriptor_space = DescriptorSpace()
        self.describer: DescriptorEncoder | None = None  # built once the descriptors' size is known
        self._known: dict[str, torch.Tensor] = {}  # class name -> descriptor, for training episodes
        self._probe = None  # the inspection's fixed episode

    def modules(self) -> dict[str, nn.Module]:
        found = {"encoder": self.encoder}
        if self.describer is not None:
            found["descriptor_encoder"] = self.describer
        return found

    def _use_space(self, space: DescriptorSpace) -> None:
        if self.describer is not None and space.fields == self.descriptor_space.fields:
            return
        self.descriptor_space = space
        self.describer = DescriptorEncoder(space, self.hparams.descriptor_hidden, self.encoder.out_dim).to(self.device)

    def attach_training_data(self, dataset, config) -> None:
        """The descriptor space (fields, defaults, examples) and the meta-train classes' descriptors by name, for
        training episodes; ConfigError naming the dataset when its meta-train or meta-validation classes have none
        (validation and evaluation read each episode's descriptors from its split)."""
        self._use_space(descriptor_space(dataset))
        train = dataset.splits["train"]
        self._known = dict(zip(train.class_names, train.class_descriptors.to(self.device)))

    # --- prototypes and logits ---------------------------------------------------------------------------
    def prototypes(self, descriptors: torch.Tensor) -> torch.Tensor:
        if self.describer is None:
            raise ConfigError("algorithm.name", f"this {self.name} model has met no class descriptors (train it on a "
                              "dataset that has them: glyphs, or an image folder with a descriptors.csv)")
        embedded = self.describer(descriptors.to(self.device, torch.float32))
        return F.normalize(embedded, dim=-1) if self.hparams.unit_prototypes else embedded

    def _episode_descriptors(self, episode) -> torch.Tensor:
        missing = [name for name in episode.class_names if name not in self._known]
        if missing:
            raise ConfigError("dataset.name", f"no descriptors for the episode's classes {missing[:3]}; the trainer "
                              "gives them through attach_training_data(dataset, config)")
        return torch.stack([self._known[name] for name in episode.class_names])

    @staticmethod
    def logits(queries: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(queries, prototypes).pow(2)

    def episode_logits(self, episode) -> torch.Tensor:
        """Query logits of a training episode: prototypes from its classes' descriptors, never its support images."""
        return self.logits(self.encoder(episode.query_x), self.prototypes(self._episode_descriptors(episode)))

    # --- learning ----------------------------------------------------------------------------------------
    def meta_train_step(self, episodes) -> dict[str, float]:
        self.train()
        if self._probe is None:
            self._probe = _probe_of(episodes[0], self._episode_descriptors(episodes[0]))
        return self.cross_entropy_step(episodes, self.episode_logits)

    @torch.no_grad()
    def adapt_from_descriptors(self, descriptors):
        self.eval()
        return {"prototypes": self.prototypes(descriptors)}

    @torch.no_grad()
    def adapt(self, support_x, support_y, ways):
        """Given images instead: the image encoder as a ProtoNet (class means of the support embeddings)."""
        self.eval()
        support = self.encoder(support_x.to(self.device))
        return {"prototypes": class_means(support, support_y.to(self.device), ways), "support_embeddings": support}

    @torch.no_grad()
    def predict(self, adapted, query_x):
        self.eval()
        return self.logits(self.encoder(query_x.to(self.device)), adapted["prototypes"]).softmax(dim=-1)

    @torch.no_grad()
    def embed(self, x, adapted=None):
        self.eval()
        return self.encoder(x.to(self.device))

    # --- reports -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluation_extras(self, tasks) -> dict[str, Any]:
        """Chance and this image encoder as a one-shot ProtoNet (first support image per class), same episodes."""
        self.eval()
        scores = []
        for index in range(len(tasks)):
            episode = tasks[index].to(self.device)
            prototypes = self.encoder(episode.support_x[first_of_each(episode.support_y, episode.ways)])
            scores.append(accuracy(self.logits(self.encoder(episode.query_x), prototypes), episode.query_y))
        one_shot, ci95 = mean_ci95(scores)
        return {"chance": 1.0 / tasks.ways,
                "protonet_one_shot": {"accuracy": one_shot, "ci95": ci95, "episodes": len(scores),
                                      "how": "this model's image encoder, prototype = one support image per class"}}

    @torch.no_grad()
    def inspect(self) -> dict[str, dict[str, Any]]:
        if self._probe is None or self.describer is None:
            return {}
        self.eval()
        names, descriptors, query_x, query_y, columns = self._probe
        probabilities = self.logits(self.encoder(query_x.to(self.device)),
                                    self.prototypes(descriptors)).softmax(dim=-1)
        return {SIMILARITY.name: {"values": probabilities.cpu().numpy(), "columns": np.array(names),
                                  "rows": np.array([names[int(y)] for y in query_y]),
                                  "row_images": thumbnails(query_x), "column_images": thumbnails(columns)}}

    # --- checkpoints -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.descriptor_space:
            state[SPACE_KEY] = self.descriptor_space.to_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if SPACE_KEY in state:  # the encoder's input size follows from the saved fields
            self._use_space(DescriptorSpace.from_state(state[SPACE_KEY]))
        super().load_state_dict(state)


def first_of_each(labels: torch.Tensor, ways: int) -> torch.Tensor:
    """The index of each class's first example (classes 0..ways-1)."""
    return torch.stack([(labels == c).nonzero()[0, 0] for c in range(ways)])


def _probe_of(episode, descriptors: torch.Tensor):
    """The inspection's fixed episode (cpu copies): its classes (at most 20) and their descriptors, at most 10
    queries spread over them, and one support image per class for the column thumbnails."""
    ways = min(episode.ways, PROBE_COLUMNS)
    per_class = max(1, PROBE_ROWS // ways)
    rows = torch.cat([(episode.query_y == c).nonzero()[:per_class, 0] for c in range(ways)])[:PROBE_ROWS]
    return (list(episode.class_names[:ways]), descriptors[:ways].cpu(), episode.query_x[rows].cpu(),
            episode.query_y[rows].cpu(), episode.support_x[first_of_each(episode.support_y, ways)].cpu())




__all__ = ["ZeroShot", "ZeroShotHParams", "DescriptorEncoder", "thumbnails"]
