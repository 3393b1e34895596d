"""Meta-Weight-Net (Shu et al., NeurIPS 2019): a small MLP maps a sample's training loss to its weight, and is
meta-learned so that a classifier step on the weighted loss lowers the loss on a small clean meta set.

Two settings (hparam ``setting``):

- ``classification``: ordinary classification with corrupted labels (or class imbalance). The trainer hands the
  algorithm its meta-train split once (``attach_training_data``); the algorithm carves a fixed problem out of it
  (see :mod:`workbench.core.noise`) and draws its own batches, because it must know which samples are noisy; the
  trainer's batches are ignored. The classifier trains with SGD at ``classifier_lr`` by default (not
  training.lr): on glyphs with 40% noise that beat the unweighted classifier on every seed, Adam did not.
- ``episodic``: MAML on the trainer's episodes whose support labels are corrupted; the inner loop weights the
  support samples with the net and the clean query loss meta-learns both (see
  :mod:`workbench.core.algorithms.meta_weight_net_episodic`, which also says how evaluation treats noise).

History for the "Sample weights" view: every ``history_interval`` steps a snapshot (the curve weight(loss)
on a fixed loss grid, loss histograms of clean and noisy training samples, mean weights, clean test accuracy,
weights of a few thumbnails) is appended. In the episodic setting the samples are the support samples of fixed
meta-train probe tasks with corrupted labels, and the accuracy is their query accuracy after adapting. It lives
in the checkpoint state (so resuming and evaluation see it) and is mirrored to ``weight_history.npz`` in the run
folder after each snapshot, which the view reads live and after a restart.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Algorithm, Family, accuracy, make_scheduler
from workbench.core.algorithms.meta_weight_net_episodic import EpisodicLearner, normalized
from workbench.core.algorithms.protonet import class_means, pairwise_logits
from workbench.core.data.base import PreprocessSpec
from workbench.core.errors import WorkbenchError
from workbench.core.fileio import atomic_write_bytes
from workbench.core.hparams import hparam
from workbench.core.models.conv4 import Conv4
from workbench.core.noise import NOISE_KINDS, NoisyProblem, problem_from_hparams
from workbench.core.recipes import Recipe

HISTORY_FILE = "weight_history.npz"
LOSS_GRID = np.linspace(0.0, 10.0, 101, dtype=np.float32)  # where the curve weight(loss) is sampled
HISTOGRAM_BINS = 40  # over the grid's range; larger losses fall into the last bin
MAX_SNAPSHOTS = 200  # beyond this every other snapshot is dropped: the file stays small for any run length
PROBE_SIZE = 1024  # training samples whose losses and weights a snapshot measures
THUMBNAILS = 48
THUMBNAIL_SIZE = 32


@dataclass
class MetaWeightNetHParams:
    hidden: int = hparam(64, "Filters per Conv-4 block of the classifier.", low=8, high=256)
    num_classes: int = hparam(40, "Classification: meta-train classes (fixed by the seed) that form the problem.",
                              low=2, high=1000)
    label_noise: float = hparam(0.4, "Fraction of training labels corrupted (classification: fixed by the seed; "
                                "episodic: of each training episode's support set).", low=0.0, high=0.9)
    noise_kind: str = hparam("uniform", "uniform: a corrupted label is any other class (of the episode); flip: "
                             "each class is flipped to one fixed other class.", choices=NOISE_KINDS)
    imbalance: float = hparam(1.0, "Classification: ratio of training images of the most to the least frequent "
                              "class (long-tailed); 1 keeps classes balanced.", low=1.0, high=200.0)
    meta_per_class: int = hparam(2, "Classification: clean images per class held out as the meta set.", low=1,
                                 high=100)
    test_per_class: int = hparam(4, "Classification: clean images per class held out to measure test accuracy.",
                                 low=1, high=1000)
    val_per_class: int = hparam(0, "Classification: clean images per class held out for validation: the weights "
                                "and accuracies at the best validation accuracy are reported beside the final ones.",
                                low=0, high=1000)
    images_per_class: int = hparam(0, "Classification: training images per class (0: all the split has). Glyphs "
                                   "draw new instances up to this number, so the classifier cannot memorise the "
                                   "noisy labels within the run; datasets of files use at most the images they have.",
                                   low=0, high=20000)
    batch_size: int = hparam(64, "Classification: training images per step.", low=2, high=1024)
    meta_batch_size: int = hparam(100, "Classification: meta-set images per meta-step (the whole meta set if "
                                  "smaller).", low=1, high=4096)
    weighting: bool = hparam(True, "Learn the weighting. Off: the same classifier trained on the plain mean "
                             "loss (the baseline to compare with).")
    virtual_lr: float = hparam(0.1, "Classification: learning rate of the virtual SGD step the meta-gradient "
                               "flows through.", low=1e-4, high=10.0, log_scale=True)
    weight_net_lr: float = hparam(1e-3, "Adam learning rate of the weighting MLP.", low=1e-6, high=1.0,
                                  log_scale=True)
    normalize_weights: bool = hparam(True, "Divide the weights by their sum (as in the authors' code): only "
                                     "relative weights matter, so the step keeps its size as weights shrink. "
                                     "Classification: over the batch. Episodic: within each labelled class of the "
                                     "support set, so every class keeps its share of the inner step and the "
                                     "weights only shift it between samples of the same label (over the whole "
                                     "support, the net learned to favour high losses instead).")
    weight_net_hidden: int = hparam(100, "Hidden units of the weighting MLP (1 -> hidden -> 1).", low=1, high=1000)
    optimizer: str = hparam("sgd", "Classification: optimizer of the classifier (sgd uses momentum 0.9). On "
                            "glyphs with 40% noise, sgd at lr 0.05 (as in the paper) reached 48.6% clean test "
                            "accuracy vs 44.2% unweighted, better on every seed; adam at 1e-3 35.1% vs 32.9%, "
                            "worse on one seed of three.", choices=("sgd", "adam"))
    classifier_lr: float = hparam(0.05, "Classification: learning rate of the classifier; 0 uses training.lr "
                                  "(which the episodic setting uses for MAML's initialization).", low=0.0,
                                  high=10.0)
    train_inner_steps: int = hparam(3, "Episodic: inner SGD steps on the weighted support loss in meta-training. "
                                    "The weights act from the second step on (the first sees the losses of the "
                                    "task-agnostic start), so use at least 2.", low=1, high=20)
    train_inner_lr: float = hparam(0.1, "Episodic: inner learning rate in meta-training (MAML's 0.4 for one "
                                   "step overshoots with several steps on 5-shot supports).", low=1e-4, high=10.0,
                                   log_scale=True)
    head: str = hparam("zero", "Episodic: start of the classifier head in each task (as MAML's head). zero: "
                       "every support loss of the first inner step is log(ways), so the weights act on the losses "
                       "after it; on glyphs with 40% noise it separated noisy supports far better than learned.",
                       choices=("zero", "learned"))
    test_inner_steps: int = hparam(10, "Episodic: inner steps when adapting to a test task.", low=1, high=200)
    test_inner_lr: float = hparam(0.1, "Episodic: inner learning rate when adapting to a test task.", low=1e-4,
                                  high=10.0, log_scale=True)
    history_interval: int = hparam(25, "Steps between snapshots of the weight curve for the Sample weights view.",
                                   low=1, high=100000)


class WeightNet(nn.Module):
    """loss -> weight in (0, 1)."""

    def __init__(self, hidden: int = 100):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(losses.reshape(-1, 1))).reshape(losses.shape)


class Classifier(nn.Module):
    def __init__(self, in_channels: int, hidden: int, image_size: int, classes: int):
        super().__init__()
        self.features = Conv4(in_channels, hidden, image_size)
        self.head = nn.Linear(self.features.out_dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register
class MetaWeightNet(Algorithm):
    name = "meta-weight-net"
    title = "Meta-Weight-Net"
    family = Family.OPTIMIZATION
    summary = "Learns to weight training samples by their loss, against noisy labels or imbalance."
    description = ("Meta-Weight-Net (Shu et al., NeurIPS 2019) learns to weight: a small MLP maps each training "
                   "sample's loss to a weight between 0 and 1. After a virtual SGD step of the classifier on the "
                   "weighted loss, the loss on a small clean meta set is differentiated through that step to "
                   "update the MLP; then the classifier takes its real step with the new weights. Here the "
                   "classifier (Conv-4 + linear head) learns a fixed subset of the meta-train classes whose "
                   "labels are corrupted; noisy samples end up with high losses and learn low weights. Few-shot "
                   "evaluation uses nearest class means of its features. In the episodic setting it is MAML on "
                   "episodes with corrupted support labels: each inner step weights the support samples by "
                   "their loss, and the clean query loss, differentiated through the inner steps, meta-learns "
                   "both the initialization and the MLP. See the Sample weights view.")
    HParams = MetaWeightNetHParams
    # noisy-labels: the classification setting; classification: the episodic setting (few-shot episodes with
    # corrupted support labels).
    kinds = ("noisy-labels", "classification")
    capabilities = frozenset({"sample_weights", "training_data", "run_folder", "evaluation_extras", "embeddings",
                              "adaptation", "own_validation"})
    recipes = (
        Recipe("noisy-glyphs", "The paper's setting on glyphs (README, setting a): a classifier over 40 glyph "
               "classes with 200 newly drawn training images each, more than it can memorise in the run, and 40% "
               "uniform label noise; SGD with momentum 0.9 at 0.05 and a cosine decay, the weighting net's Adam at "
               "1e-3 as in the paper; 1,500 steps; 10 clean images per class pick the checkpoint, 25 per class "
               "measure it. 97.1% clean test accuracy weighted vs 87.5% with weighting=false at the best checkpoint "
               "(80.6% at the end), noisy samples weighted 0.005-0.045 of clean ones (3 seeds, about 7 CPU minutes "
               "a run on the reference machine).", kind="noisy-labels",
               datasets=("glyphs",), recommended=True, training={"steps": 1500, "val_interval": 100},
               hparams={"label_noise": 0.4, "images_per_class": 200, "val_per_class": 10, "test_per_class": 25}),
        Recipe("noisy-40", "The README's earlier setting (a): 40 classes with the images the dataset has (glyphs: "
               "14 training images each, which the classifier memorises, noisy labels included), 40% uniform "
               "label noise, SGD with momentum at 0.05, 600 steps. On glyphs 55.2% clean test accuracy weighted "
               "vs 50.0% unweighted (mean of 3 seeds), with mean weights of noisy and clean samples close.",
               kind="noisy-labels", recommended=True, training={"steps": 600}, hparams={"label_noise": 0.4}),
        Recipe("episodic-noisy-supports", "The README's setting (b): 5-way 5-shot MAML episodes whose support "
               "labels are 40% corrupted, 300 meta-steps of one episode (about 3 CPU minutes). 80.8% on corrupted "
               "test supports weighted vs 62.8% for plain MAML on glyphs (3 seeds).", kind="classification",
               recommended=True, dataset={"shots": 5}, training={"train_queries": 5, "steps": 300},
               hparams={"label_noise": 0.4}),
    )
    adaptation_steps_hparam = "test_inner_steps"
    training_input = "episodes"  # the episodic setting's; the noisy-labels kind feeds batches
    gradient_based = True  # per instance below: only the episodic setting has an inner loop

    @classmethod
    def legacy_kind(cls, hparams: dict) -> str | None:
        # Before kinds, hparam "setting" chose: "classification" (the default) is now the noisy-labels kind.
        return "classification" if hparams.get("setting") == "episodic" else "noisy-labels"

    @classmethod
    def upgrade_hparams(cls, values: dict) -> dict:
        return {key: value for key, value in values.items() if key != "setting"}

    @property
    def setting(self) -> str:
        return "episodic" if self.model_spec.kind == "classification" else "classification"

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        self.weight_net = WeightNet(hparams.weight_net_hidden).to(self.device)
        self.episodic: EpisodicLearner | None = None
        self.classifier: Classifier | None = None
        if self.setting == "episodic":
            self.episodic = EpisodicLearner(hparams, model_spec, self.device, self.weight_net)
        else:
            self.classifier = Classifier(model_spec.in_channels, hparams.hidden, model_spec.image_size,
                                         hparams.num_classes).to(self.device)
        self.gradient_based = self.episodic is not None
        self.problem: NoisyProblem | None = None
        self.spec: PreprocessSpec | None = None
        self.run_folder: Path | None = None
        self.generator = torch.Generator().manual_seed(0)
        self.history: dict[str, Any] = _empty_history()
        self.steps_done = 0

    def modules(self) -> dict[str, nn.Module]:
        if self.episodic is not None:
            return {"model": self.episodic.model, "weight_net": self.weight_net}
        return {"classifier": self.classifier, "weight_net": self.weight_net}

    def configure_optimizers(self, lr: float, total_steps: int, schedule: str = "cosine") -> None:
        if self.episodic is not None:
            self.optimizers = self.episodic.configure_optimizers(lr)
            self.schedulers = [make_scheduler(self.optimizers[0], total_steps, schedule, self.schedule_clock), None]
            return
        lr = self.hparams.classifier_lr or lr
        if self.hparams.optimizer == "sgd":
            classifier_opt = torch.optim.SGD(self.classifier.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        else:
            classifier_opt = torch.optim.Adam(self.classifier.parameters(), lr=lr)
        # Weight decay as in the paper keeps the MLP smooth.
        weight_opt = torch.optim.Adam(self.weight_net.parameters(), lr=self.hparams.weight_net_lr, weight_decay=1e-4)
        self.optimizers = [classifier_opt, weight_opt]
        self.schedulers = [make_scheduler(classifier_opt, total_steps, schedule, self.schedule_clock), None]

    # --- data -----------------------------------------------------------------------------------
    def attach_training_data(self, dataset, config) -> None:
        """Called by the trainer before training: carve the noisy problem out of the meta-train split (episodic:
        keep the split for the probe tasks of the history)."""
        split, spec, seed = dataset.split("train"), dataset.spec, config.training.seed
        hp = self.hparams
        self.spec = spec
        self.generator = torch.Generator().manual_seed(seed + 2)
        if self.episodic is not None:
            self.episodic.attach(split, spec, seed)
            return
        self.problem = problem_from_hparams(split, hp, seed)
        probe_generator = torch.Generator().manual_seed(seed + 3)
        count = len(self.problem.train_labels)
        self.probe_rows = torch.randperm(count, generator=probe_generator)[:PROBE_SIZE]
        # Thumbnails: as many noisy as clean ones where possible, so the strip shows both.
        noisy = self.problem.train_noisy[self.probe_rows]
        half = THUMBNAILS // 2
        picked = torch.cat([self.probe_rows[noisy][:half], self.probe_rows[~noisy][:THUMBNAILS - min(half,
                            int(noisy.sum()))]])[:THUMBNAILS]
        self.thumb_rows = picked
        if not self.history["thumbnails"].size:
            self.history.update(_thumbnail_fields(self.problem, picked))

    def set_run_folder(self, folder: str | Path) -> None:
        """Called by the trainer once the run exists: the history mirror goes there."""
        self.run_folder = Path(folder)
        if self.history["steps"].size:
            self.write_history()

    def validation_correct(self) -> np.ndarray | None:
        """Classification: per clean validation image of the problem, whether the classifier gets it right."""
        if self.classifier is None or self.problem is None:
            return None
        return validation_correct_of(self.classifier, self._images, self.problem)

    def _require_problem(self) -> NoisyProblem:
        if (self.problem is None and self.episodic is None) or self.spec is None:
            raise WorkbenchError("meta-weight-net trains on its own noisy problem: call attach_training_data(split, "
                                 "spec, seed) first (the trainer does this)")
        return self.problem

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        return self.spec.normalize(images).to(self.device)

    # --- learning --------------------------------------------------------------------------------
    def weight_function(self, losses: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.weight_net(losses.to(self.device).float()).cpu()

    def _batch_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """Per-sample factors of the batch loss (a sum): normalized weights, or weights / batch size."""
        return normalized(weights, self.hparams.normalize_weights)

    def meta_train_step(self, batch) -> dict[str, float]:
        """One Meta-Weight-Net step. Episodic: ``batch`` is the trainer's list of episodes. Classification:
        ``batch`` is ignored; batches come from the noisy problem, whose corrupted labels only this algorithm
        knows."""
        if self.episodic is not None:
            return self._episodic_step(batch)
        problem = self._require_problem()
        hp = self.hparams
        self.classifier.train()
        rows = torch.randint(len(problem.train_labels), (hp.batch_size,), generator=self.generator)
        x = self._images(problem.train_images[rows])
        y = problem.train_labels[rows].to(self.device)
        noisy = problem.train_noisy[rows]
        classifier_opt = self.optimizers[0]
        out: dict[str, float] = {}

        if hp.weighting:
            out.update(self._update_weight_net(problem, x, y))

        # 4. The real classifier step, with weights from the updated MLP (constants here).
        logits = self.classifier(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        if hp.weighting:
            with torch.no_grad():
                raw_weights = self.weight_net(losses.detach())
                weights = self._batch_weights(raw_weights)
        else:
            raw_weights = torch.ones_like(losses)
            weights = raw_weights / len(raw_weights)
        loss = (losses * weights).sum()
        classifier_opt.zero_grad(set_to_none=True)
        loss.backward()
        classifier_opt.step()
        self.step_schedulers()
        self.steps_done += 1

        weights = raw_weights.detach().cpu()
        out.update({"loss": float(losses.detach().mean()), "accuracy": accuracy(logits.detach(), y),
                    "weighted_loss": float(loss.detach()), "weight_mean": float(weights.mean())})
        if noisy.any():
            out["weight_noisy"] = float(weights[noisy].mean())
        if (~noisy).any():
            out["weight_clean"] = float(weights[~noisy].mean())
        if self.steps_done % hp.history_interval == 0 or self.steps_done == 1:
            self.snapshot()
        return out

    def _update_weight_net(self, problem: NoisyProblem, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Steps 1-3 of the paper's update: a virtual classifier step on the weighted loss, the clean meta loss
        at the virtual weights, and its gradient applied to the weighting MLP."""
        hp = self.hparams
        meta_rows = torch.randperm(len(problem.meta_labels), generator=self.generator)[:hp.meta_batch_size]
        meta_x = self._images(problem.meta_images[meta_rows])
        meta_y = problem.meta_labels[meta_rows].to(self.device)
        # 1. Virtual SGD step on the weighted loss, differentiable with respect to the MLP's weights.
        params = dict(self.classifier.named_parameters())
        losses = F.cross_entropy(functional_call(self.classifier, params, (x,)), y, reduction="none")
        weights = self._batch_weights(self.weight_net(losses.detach()))
        grads = torch.autograd.grad((losses * weights).sum(), list(params.values()), create_graph=True)
        virtual = {name: p - hp.virtual_lr * g for (name, p), g in zip(params.items(), grads)}
        # 2. Meta-loss on clean data with the virtual weights; 3. update the MLP.
        meta_loss = F.cross_entropy(functional_call(self.classifier, virtual, (meta_x,)), meta_y)
        weight_opt = self.optimizers[1]
        weight_opt.zero_grad(set_to_none=True)
        meta_grads = torch.autograd.grad(meta_loss, list(self.weight_net.parameters()))
        for p, g in zip(self.weight_net.parameters(), meta_grads):
            p.grad = g
        weight_opt.step()
        return {"meta_loss": float(meta_loss.detach()),
                "meta_grad_norm": float(torch.sqrt(sum((g * g).sum() for g in meta_grads)))}

    def _episodic_step(self, episodes) -> dict[str, float]:
        self._require_problem()
        self.episodic.ensure_probes(episodes[0])
        out = self.episodic.meta_train_step(episodes, self.generator)
        self.step_schedulers()
        self.steps_done += 1
        if self.steps_done % self.hparams.history_interval == 0 or self.steps_done == 1:
            self.snapshot()
        return out

    # --- history ---------------------------------------------------------------------------------
    def measure(self) -> dict[str, Any]:
        """Losses and weights of the probe training samples, clean test accuracy (eval mode), and the positions
        of the thumbnails among the probe samples. Episodic: support samples of the probe tasks, and their query
        accuracy after adapting."""
        if self.episodic is not None:
            if not self.history["thumbnails"].size:
                thumbs = self.episodic.thumbnails(THUMBNAILS)
                self.history.update(_thumbnail_arrays(thumbs["images"], thumbs["noisy"], thumbs["labels"],
                                                      thumbs["true_labels"]))
                self.thumb_positions = thumbs["positions"]
            elif getattr(self, "thumb_positions", None) is None:
                self.thumb_positions = self.episodic.thumbnails(THUMBNAILS)["positions"]
            was_training = self.episodic.model.training
            try:
                run = self.episodic.probe_run()
            finally:
                self.episodic.model.train(was_training)
            return {"losses": run["losses"], "weights": run["weights"], "noisy": run["noisy"],
                    "test_accuracy": float(run["accuracies"].mean()), "thumb_index": self.thumb_positions}
        return self._measure_classification()

    @torch.no_grad()
    def _measure_classification(self) -> dict[str, Any]:
        problem = self._require_problem()
        was_training = self.classifier.training
        self.classifier.eval()
        try:
            losses = torch.cat([F.cross_entropy(self.classifier(self._images(problem.train_images[chunk])),
                                                problem.train_labels[chunk].to(self.device), reduction="none")
                                for chunk in self.probe_rows.split(256)]).cpu()
            test_accuracy = clean_accuracy(self.classifier, self._images, problem.test_images, problem.test_labels)
            val_accuracy = clean_accuracy(self.classifier, self._images, problem.val_images, problem.val_labels)
        finally:
            self.classifier.train(was_training)
        weights = self.weight_function(losses) if self.hparams.weighting else torch.ones_like(losses)
        noisy = problem.train_noisy[self.probe_rows]
        position = {int(row): i for i, row in enumerate(self.probe_rows.tolist())}
        thumb_index = torch.tensor([position[int(r)] for r in self.thumb_rows.tolist()], dtype=torch.long)
        return {"losses": losses, "weights": weights, "noisy": noisy, "test_accuracy": test_accuracy,
                "val_accuracy": val_accuracy, "thumb_index": thumb_index}

    def snapshot(self) -> None:
        """Append one history entry and mirror the history to the run folder."""
        measured = self.measure()
        losses, weights, noisy = measured["losses"], measured["weights"], measured["noisy"]
        edges = np.linspace(LOSS_GRID[0], LOSS_GRID[-1], HISTOGRAM_BINS + 1)
        clipped = np.clip(losses.numpy(), edges[0], edges[-1])
        thumb_index = measured["thumb_index"]
        grid = torch.from_numpy(LOSS_GRID)
        curve = (self.weight_function(grid) if self.hparams.weighting else torch.ones_like(grid)).numpy()
        entry = {
            "steps": self.steps_done,
            "curves": curve.astype(np.float16),
            "hist_clean": np.histogram(clipped[~noisy.numpy()], edges)[0].astype(np.int32),
            "hist_noisy": np.histogram(clipped[noisy.numpy()], edges)[0].astype(np.int32),
            "clean_mean": float(weights[~noisy].mean()) if (~noisy).any() else np.nan,
            "noisy_mean": float(weights[noisy].mean()) if noisy.any() else np.nan,
            "test_accuracy": measured["test_accuracy"],
            "val_accuracy": measured.get("val_accuracy", np.nan),
            "thumb_weights": weights[thumb_index].numpy().astype(np.float16),
            "thumb_losses": losses[thumb_index].numpy().astype(np.float16),
        }
        history = self.history
        for key, value in entry.items():
            value = np.asarray(value)[None]
            history[key] = value if history[key].size == 0 else np.concatenate([history[key], value])
        if len(history["steps"]) > MAX_SNAPSHOTS:
            keep = np.r_[np.arange(0, len(history["steps"]) - 1, 2), len(history["steps"]) - 1]
            for key in SNAPSHOT_KEYS:
                history[key] = history[key][keep]
        self.write_history()

    def write_history(self) -> None:
        if self.run_folder is None or not self.run_folder.is_dir():
            return
        atomic_write_bytes(self.run_folder / HISTORY_FILE, history_bytes(self.history, self.hparams, self.setting))

    def evaluation_extras(self, episodes) -> dict[str, Any]:
        """Mean learned weight of clean and noisy training samples, and clean test accuracy, at the last
        snapshot (merged into `workbench eval --json`). Episodic with label noise: the evaluation episodes again
        with corrupted supports, their query accuracy and the mean weights of their support samples."""
        if self.episodic is not None and self.hparams.label_noise > 0 and episodes is not None and len(episodes):
            return self._episodic_extras(episodes)
        report = history_report(self.history, self.hparams.num_classes, self.episodic is None)
        if report:
            report["weights"].update(label_noise=self.hparams.label_noise, weighting=self.hparams.weighting)
        return report

    def _episodic_extras(self, episodes) -> dict[str, Any]:
        from workbench.core.stats import mean_ci95

        hp = self.hparams
        base_seed = int(getattr(episodes, "seed", 0))
        with torch.no_grad():
            run = self.episodic.noisy_support_run(episodes, lambda index: base_seed * 1_000_003 + 7919 * index + 1)
        accuracy_mean, ci95 = mean_ci95(run["accuracies"])
        weights, noisy = run["weights"], run["noisy"]

        def mean(values):
            return float(values.mean()) if len(values) else None

        return {"weights": {"clean_mean": mean(weights[~noisy]), "noisy_mean": mean(weights[noisy]),
                            "step": self.steps_done, "label_noise": hp.label_noise, "weighting": hp.weighting,
                            "setting": "episodic", "measured_on": "support samples of the evaluation episodes, "
                            "corrupted at label_noise"},
                "noisy_supports": {"accuracy": accuracy_mean, "ci95": ci95, "episodes": len(episodes),
                                   "label_noise": hp.label_noise, "noise_kind": hp.noise_kind}}

    # --- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["weight_history"] = {key: torch.from_numpy(np.ascontiguousarray(value))
                                   for key, value in self.history.items()}
        state["progress"] = {"steps_done": torch.tensor(self.steps_done), "sampler": self.generator.get_state()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        saved = state.get("weight_history")
        if saved:
            self.history = _empty_history()
            self.history.update({key: value.numpy() for key, value in saved.items()})
            complete_history(self.history)
        progress = state.get("progress")
        if progress:
            self.steps_done = int(progress["steps_done"])
            self.generator.set_state(progress["sampler"])
        # A resumed run may have snapshots past its checkpoint on disk: rewrite the mirror.
        self.write_history()

    # --- few-shot evaluation: weighted MAML adaptation (episodic), else nearest class mean of features ----
    @torch.no_grad()
    def embed(self, x, adapted=None):
        if self.episodic is not None:
            return self.episodic.embed(x, adapted)
        self.classifier.eval()
        return self.classifier.features(x.to(self.device))

    @torch.no_grad()
    def adapt(self, support_x, support_y, ways, steps: int | None = None):
        if self.episodic is not None:
            return self.episodic.adapt(support_x, support_y, ways, steps)
        support = self.embed(support_x)
        return {"prototypes": class_means(support, support_y.to(self.device), ways)}

    @torch.no_grad()
    def predict(self, adapted, query_x):
        if self.episodic is not None:
            return self.episodic.predict(adapted, query_x)
        return pairwise_logits(self.embed(query_x), adapted["prototypes"], "euclidean", 32.0).softmax(dim=-1)

    def adaptation_trace(self, support_x, support_y, query_x, query_y, ways, steps=None):
        if self.episodic is None:
            return []
        return self.episodic.adaptation_trace(support_x, support_y, query_x, query_y, ways, steps)


SNAPSHOT_KEYS = ("steps", "curves", "hist_clean", "hist_noisy", "clean_mean", "noisy_mean", "test_accuracy",
                 "val_accuracy", "thumb_weights", "thumb_losses")


@torch.no_grad()
def correct_on(classifier: nn.Module, to_input, images: torch.Tensor | None,
               labels: torch.Tensor | None) -> np.ndarray | None:
    """1.0 / 0.0 per clean held-out image as the classifier (as it is: call in eval mode) labels it; None without
    any images."""
    if images is None or labels is None or not len(labels):
        return None
    hits = [(classifier(to_input(images[start:start + 256])).argmax(-1).cpu() == labels[start:start + 256])
            for start in range(0, len(labels), 256)]
    return torch.cat(hits).float().numpy()


def validation_correct_of(classifier: nn.Module, to_input, problem: NoisyProblem) -> np.ndarray | None:
    """:func:`correct_on` the problem's validation images, in eval mode (the classifier's mode is restored)."""
    was_training = classifier.training
    classifier.eval()
    try:
        return correct_on(classifier, to_input, problem.val_images, problem.val_labels)
    finally:
        classifier.train(was_training)


def clean_accuracy(classifier: nn.Module, to_input, images: torch.Tensor | None,
                   labels: torch.Tensor | None) -> float:
    """Accuracy on clean held-out images (see :func:`correct_on`); NaN without any."""
    correct = correct_on(classifier, to_input, images, labels)
    return float("nan") if correct is None else float(correct.mean())


def complete_history(history: dict[str, Any]) -> dict[str, Any]:
    """A history saved before a snapshot key existed gets it as NaN per snapshot, so every key stays aligned."""
    count = len(history["steps"])
    for key in SNAPSHOT_KEYS:
        if len(history.get(key, ())) != count:
            history[key] = np.full(count, np.nan, np.float32)
    return history


def history_report(history: dict[str, Any], classes: int, classification: bool = True) -> dict[str, Any]:
    """What an evaluation adds from a weight history: the mean weights of clean and noisy samples (and their
    ratio) at the last snapshot, and, where the history has clean validation accuracies, at the snapshot with the
    best one; with ``classification`` the clean test accuracy at both. Empty for an empty history."""
    steps = history["steps"]
    if steps.size == 0:
        return {}

    def value(key, index):
        array = history.get(key)
        number = float(array[index]) if array is not None and len(array) > index else float("nan")
        return number if np.isfinite(number) else None

    def at(index) -> dict[str, Any]:
        clean, noisy = value("clean_mean", index), value("noisy_mean", index)
        return {"step": int(steps[index]), "clean_mean": clean, "noisy_mean": noisy,
                "noisy_to_clean": noisy / clean if clean and noisy is not None else None,
                **({"test_accuracy": value("test_accuracy", index), "val_accuracy": value("val_accuracy", index)}
                   if classification else {})}

    last = len(steps) - 1
    end = at(last)
    weights = {key: end[key] for key in ("clean_mean", "noisy_mean", "noisy_to_clean", "step")}
    report: dict[str, Any] = {"weights": weights}
    validation = np.asarray(history.get("val_accuracy", []), np.float64)
    best = int(np.nanargmax(validation)) if validation.size == len(steps) and np.isfinite(validation).any() else None
    if best is not None:
        weights["at_best_validation"] = at(best)
    if classification:
        report["classification"] = {"test_accuracy": value("test_accuracy", last), "classes": classes}
        if best is not None:
            report["classification"].update(best_validation_step=int(steps[best]),
                                            val_accuracy_at_best=value("val_accuracy", best),
                                            test_accuracy_at_best_validation=value("test_accuracy", best))
    return report


def _empty_history() -> dict[str, Any]:
    history: dict[str, Any] = {key: np.zeros(0) for key in SNAPSHOT_KEYS}
    history.update({"thumbnails": np.zeros((0,), dtype=np.uint8), "thumb_noisy": np.zeros(0, dtype=bool),
                    "thumb_labels": np.zeros(0, dtype=np.int64), "thumb_true_labels": np.zeros(0, dtype=np.int64)})
    return history


def _thumbnail_fields(problem: NoisyProblem, rows: torch.Tensor) -> dict[str, np.ndarray]:
    return _thumbnail_arrays(problem.train_images[rows], problem.train_noisy[rows].numpy(),
                             problem.train_labels[rows].numpy(), problem.train_true_labels[rows].numpy())


def _thumbnail_arrays(images: torch.Tensor, noisy, labels, true_labels) -> dict[str, np.ndarray]:
    if images.shape[-1] > THUMBNAIL_SIZE:
        images = F.interpolate(images.float(), size=(THUMBNAIL_SIZE, THUMBNAIL_SIZE), mode="area").round().to(
            torch.uint8)
    return {"thumbnails": images.numpy(), "thumb_noisy": np.asarray(noisy, bool),
            "thumb_labels": np.asarray(labels, np.int64), "thumb_true_labels": np.asarray(true_labels, np.int64)}


def _history_caption(hparams, setting: str) -> str:
    """One line saying what the weights were learned under (the Sample weights view's title)."""
    where = " on support sets" if setting == "episodic" else ""
    weighting = "learned weighting" if hparams.weighting else "no weighting (the baseline)"
    return f"{100 * hparams.label_noise:g}% {hparams.noise_kind} label noise{where}, {weighting}"


def history_bytes(history: dict[str, Any], hparams=None, setting: str = "classification") -> bytes:
    """The history as an .npz file (what the Sample weights view reads)."""
    buffer = io.BytesIO()
    extra = {"loss_grid": LOSS_GRID}
    if hparams is not None:
        extra.update(label_noise=np.float32(hparams.label_noise), weighting=np.bool_(hparams.weighting),
                     noise_kind=np.str_(hparams.noise_kind), setting=np.str_(setting),
                     caption=np.str_(_history_caption(hparams, setting)))
    np.savez_compressed(buffer, **{key: np.asarray(value) for key, value in history.items()}, **extra)
    return buffer.getvalue()
