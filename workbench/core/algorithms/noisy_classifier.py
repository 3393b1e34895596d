"""What the sample-weighting baselines beside Meta-Weight-Net share on the noisy-labels kind (focal loss, L2RW).

Not an algorithm itself: a base class that carves the same noisy problem as Meta-Weight-Net out of the meta-train
split (same seeds, so the same classes, corrupted labels, meta and test sets, probe samples and batch order),
trains the same classifier (Conv-4 + linear head) with the same optimizer, and keeps the Sample weights view's
history (``weight_history.npz``, Meta-Weight-Net's format). A subclass implements the step and says what weight a
sample gets (:meth:`NoisyClassifier.snapshot_weights`). Few-shot evaluation uses nearest class means of the
classifier's features, as Meta-Weight-Net's.
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

from workbench.core.algorithms.base import Algorithm, accuracy, make_scheduler
from workbench.core.algorithms.meta_weight_net import (HISTOGRAM_BINS, HISTORY_FILE, LOSS_GRID, MAX_SNAPSHOTS,
                                                       PROBE_SIZE, SNAPSHOT_KEYS, THUMBNAILS, Classifier,
                                                       _empty_history, _thumbnail_fields, clean_accuracy,
                                                       complete_history, history_report,
                                                       validation_correct_of)
from workbench.core.algorithms.protonet import class_means, pairwise_logits
from workbench.core.data.base import PreprocessSpec
from workbench.core.errors import WorkbenchError
from workbench.core.fileio import atomic_write_bytes
from workbench.core.hparams import hparam
from workbench.core.noise import NOISE_KINDS, NoisyProblem, problem_from_hparams

HISTOGRAM_EDGES = np.linspace(LOSS_GRID[0], LOSS_GRID[-1], HISTOGRAM_BINS + 1)


@dataclass
class NoisyClassifierHParams:
    """The problem and the classifier's training, as Meta-Weight-Net's defaults, so a table compares weightings."""

    hidden: int = hparam(64, "Filters per Conv-4 block of the classifier.", low=8, high=256)
    num_classes: int = hparam(40, "Meta-train classes (fixed by the seed) that form the problem.", low=2, high=1000)
    label_noise: float = hparam(0.4, "Fraction of training labels corrupted (fixed by the seed).", low=0.0, high=0.9)
    noise_kind: str = hparam("uniform", "uniform: a corrupted label is any other class; flip: each class is "
                             "flipped to one fixed other class.", choices=NOISE_KINDS)
    imbalance: float = hparam(1.0, "Ratio of training images of the most to the least frequent class "
                              "(long-tailed); 1 keeps classes balanced.", low=1.0, high=200.0)
    meta_per_class: int = hparam(2, "Clean images per class held out as the meta set.", low=1, high=100)
    test_per_class: int = hparam(4, "Clean images per class held out to measure test accuracy.", low=1, high=1000)
    val_per_class: int = hparam(0, "Clean images per class held out for validation (weights and accuracies at the "
                                "best validation accuracy are reported beside the final ones).", low=0, high=1000)
    images_per_class: int = hparam(0, "Training images per class (0: all the split has); glyphs draw new instances "
                                   "up to this number, datasets of files use at most the images they have.", low=0,
                                   high=20000)
    batch_size: int = hparam(64, "Training images per step (Meta-Weight-Net's default, so the methods compare).",
                             low=2, high=1024)
    optimizer: str = hparam("sgd", "Optimizer of the classifier (sgd: momentum 0.9, weight decay 5e-4), as "
                            "Meta-Weight-Net's.", choices=("sgd", "adam"))
    classifier_lr: float = hparam(0.05, "Learning rate of the classifier (Meta-Weight-Net's default); 0 uses "
                                  "training.lr.", low=0.0, high=10.0)
    history_interval: int = hparam(25, "Steps between snapshots of the weights for the Sample weights view.",
                                   low=1, high=100000)


class NoisyClassifier(Algorithm):
    """Base of the weighting baselines on the noisy-labels kind (registered only through subclasses)."""

    kinds = ("noisy-labels",)
    capabilities = frozenset({"sample_weights", "training_data", "run_folder", "evaluation_extras", "embeddings",
                              "own_validation"})
    training_input = "episodes"  # ignored: the kind feeds small batches, the problem's own batches are drawn here
    extra_snapshot_keys: tuple[str, ...] = ()  # a subclass's own per-snapshot arrays (thinned with the rest)

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        self.classifier = Classifier(model_spec.in_channels, hparams.hidden, model_spec.image_size,
                                     hparams.num_classes).to(self.device)
        self.problem: NoisyProblem | None = None
        self.spec: PreprocessSpec | None = None
        self.run_folder: Path | None = None
        self.generator = torch.Generator().manual_seed(0)
        self.history: dict[str, Any] = self.empty_history()
        self.steps_done = 0

    def empty_history(self) -> dict[str, Any]:
        history = _empty_history()
        history.update({key: np.zeros(0) for key in self.extra_snapshot_keys})
        return history

    def modules(self) -> dict[str, nn.Module]:
        return {"classifier": self.classifier}

    def configure_optimizers(self, lr: float, total_steps: int, schedule: str = "cosine") -> None:
        lr = self.hparams.classifier_lr or lr
        if self.hparams.optimizer == "sgd":
            optimizer = torch.optim.SGD(self.classifier.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        else:
            optimizer = torch.optim.Adam(self.classifier.parameters(), lr=lr)
        self.optimizers = [optimizer]
        self.schedulers = [make_scheduler(optimizer, total_steps, schedule, self.schedule_clock)]

    # --- data (Meta-Weight-Net's seeds: the same problem, probes, thumbnails and batches) ---------------
    def attach_training_data(self, dataset, config) -> None:
        """Called by the trainer before training: carve the noisy problem out of the meta-train split."""
        hp, seed = self.hparams, config.training.seed
        self.spec = dataset.spec
        self.generator = torch.Generator().manual_seed(seed + 2)
        self.problem = problem_from_hparams(dataset.split("train"), hp, seed)
        count = len(self.problem.train_labels)
        self.probe_rows = torch.randperm(count, generator=torch.Generator().manual_seed(seed + 3))[:PROBE_SIZE]
        # As many noisy as clean thumbnails where possible, so the strip shows both.
        noisy = self.problem.train_noisy[self.probe_rows]
        half = THUMBNAILS // 2
        self.thumb_rows = torch.cat([self.probe_rows[noisy][:half], self.probe_rows[~noisy][:THUMBNAILS - min(
            half, int(noisy.sum()))]])[:THUMBNAILS]
        if not self.history["thumbnails"].size:
            self.history.update(_thumbnail_fields(self.problem, self.thumb_rows))

    def set_run_folder(self, folder: str | Path) -> None:
        """Called by the trainer once the run exists: the history mirror goes there."""
        self.run_folder = Path(folder)
        if self.history["steps"].size:
            self.write_history()

    def validation_correct(self) -> np.ndarray | None:
        """Per clean validation image of the problem, whether the classifier gets it right."""
        return None if self.problem is None else validation_correct_of(self.classifier, self.images, self.problem)

    def require_problem(self) -> NoisyProblem:
        if self.problem is None or self.spec is None:
            raise WorkbenchError(f"{self.name} trains on its own noisy problem: call attach_training_data(dataset, "
                                 "config) first (the trainer does this)")
        return self.problem

    def images(self, images: torch.Tensor) -> torch.Tensor:
        return self.spec.normalize(images).to(self.device)

    def draw_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A training batch (images, labels as trained on, noisy mask on the CPU), drawn as Meta-Weight-Net does."""
        problem = self.require_problem()
        rows = torch.randint(len(problem.train_labels), (self.hparams.batch_size,), generator=self.generator)
        return (self.images(problem.train_images[rows]), problem.train_labels[rows].to(self.device),
                problem.train_noisy[rows])

    def draw_meta_batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        problem = self.require_problem()
        rows = torch.randperm(len(problem.meta_labels), generator=self.generator)[:size]
        return self.images(problem.meta_images[rows]), problem.meta_labels[rows].to(self.device)

    def finish_step(self, out: dict[str, float], logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Scheduler, step count, the batch accuracy and a history snapshot when one is due."""
        self.step_schedulers()
        self.steps_done += 1
        out["accuracy"] = accuracy(logits.detach(), y)
        if self.steps_done % self.hparams.history_interval == 0 or self.steps_done == 1:
            self.snapshot()
        return out

    # --- history (Meta-Weight-Net's format) ---------------------------------------------------------------
    @torch.no_grad()
    def measure(self) -> dict[str, Any]:
        """Losses of the probe training samples and clean test accuracy (eval mode), and where the thumbnails
        sit among the probes."""
        problem = self.require_problem()
        was_training = self.classifier.training
        self.classifier.eval()
        try:
            losses = torch.cat([F.cross_entropy(self.classifier(self.images(problem.train_images[chunk])),
                                                problem.train_labels[chunk].to(self.device), reduction="none")
                                for chunk in self.probe_rows.split(256)]).cpu()
            test_accuracy = clean_accuracy(self.classifier, self.images, problem.test_images, problem.test_labels)
            val_accuracy = clean_accuracy(self.classifier, self.images, problem.val_images, problem.val_labels)
        finally:
            self.classifier.train(was_training)
        position = {int(row): i for i, row in enumerate(self.probe_rows.tolist())}
        return {"losses": losses, "labels": problem.train_labels[self.probe_rows],
                "noisy": problem.train_noisy[self.probe_rows],
                "test_accuracy": test_accuracy, "val_accuracy": val_accuracy,
                "thumb_index": torch.tensor([position[int(r)] for r in self.thumb_rows.tolist()], dtype=torch.long)}

    def snapshot_weights(self, measured: dict[str, Any]) -> dict[str, Any]:
        """The weights part of a snapshot: ``curves`` (on LOSS_GRID), ``clean_mean``, ``noisy_mean``,
        ``thumb_weights`` and any ``extra_snapshot_keys``."""
        raise NotImplementedError

    def caption(self) -> str:
        """One line for the Sample weights view's title: the setting and what the weights are."""
        return f"{100 * self.hparams.label_noise:g}% {self.hparams.noise_kind} label noise, {self.title}"

    def weight_label(self) -> str:
        """What the weight axis shows (written as ``weight_label``; the view's axis says "learned weight")."""
        return "weight"

    def snapshot(self) -> None:
        """Append one history entry and mirror the history to the run folder."""
        measured = self.measure()
        noisy = measured["noisy"].numpy()
        clipped = np.clip(measured["losses"].numpy(), HISTOGRAM_EDGES[0], HISTOGRAM_EDGES[-1])
        entry = {"steps": self.steps_done,
                 "hist_clean": np.histogram(clipped[~noisy], HISTOGRAM_EDGES)[0].astype(np.int32),
                 "hist_noisy": np.histogram(clipped[noisy], HISTOGRAM_EDGES)[0].astype(np.int32),
                 "test_accuracy": measured["test_accuracy"], "val_accuracy": measured["val_accuracy"],
                 "thumb_losses": measured["losses"][measured["thumb_index"]].numpy().astype(np.float16)}
        entry.update(self.snapshot_weights(measured))
        entry["curves"] = np.asarray(entry["curves"], np.float16)
        entry["thumb_weights"] = np.asarray(entry["thumb_weights"], np.float16)
        history = self.history
        for key, value in entry.items():
            value = np.asarray(value)[None]
            history[key] = value if history[key].size == 0 else np.concatenate([history[key], value])
        if len(history["steps"]) > MAX_SNAPSHOTS:
            keep = np.r_[np.arange(0, len(history["steps"]) - 1, 2), len(history["steps"]) - 1]
            for key in SNAPSHOT_KEYS + self.extra_snapshot_keys:
                history[key] = history[key][keep]
        self.write_history()

    def history_bytes(self) -> bytes:
        """The history as an .npz file (what the Sample weights view reads)."""
        buffer = io.BytesIO()
        hp = self.hparams
        np.savez_compressed(buffer, **{key: np.asarray(value) for key, value in self.history.items()},
                            loss_grid=LOSS_GRID, label_noise=np.float32(hp.label_noise),
                            noise_kind=np.str_(hp.noise_kind), setting=np.str_("classification"),
                            algorithm=np.str_(self.name), caption=np.str_(self.caption()),
                            weight_label=np.str_(self.weight_label()))
        return buffer.getvalue()

    def write_history(self) -> None:
        if self.run_folder is not None and self.run_folder.is_dir():
            atomic_write_bytes(self.run_folder / HISTORY_FILE, self.history_bytes())

    def evaluation_extras(self, episodes) -> dict[str, Any]:
        """Mean weight of clean and noisy training samples and clean test accuracy at the last snapshot (merged
        into `workbench eval --json`), as Meta-Weight-Net reports them."""
        report = history_report(self.history, self.hparams.num_classes)
        if report:
            report["weights"].update(label_noise=self.hparams.label_noise, method=self.name)
        return report

    # --- checkpoints -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["weight_history"] = {key: _tensor(value) for key, value in self.history.items()}
        state["progress"] = {"steps_done": torch.tensor(self.steps_done), "sampler": self.generator.get_state()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        saved = state.get("weight_history")
        if saved:
            self.history = self.empty_history()
            self.history.update({key: value.numpy() for key, value in saved.items()})
            complete_history(self.history)
        progress = state.get("progress")
        if progress:
            self.steps_done = int(progress["steps_done"])
            self.generator.set_state(progress["sampler"])
        self.write_history()  # a resumed run may have snapshots past its checkpoint on disk

    # --- few-shot evaluation: nearest class mean of the classifier's features ---------------------------
    @torch.no_grad()
    def embed(self, x, adapted=None):
        self.classifier.eval()
        return self.classifier.features(x.to(self.device))

    @torch.no_grad()
    def adapt(self, support_x, support_y, ways, steps: int | None = None):
        return {"prototypes": class_means(self.embed(support_x), support_y.to(self.device), ways)}

    @torch.no_grad()
    def predict(self, adapted, query_x):
        return pairwise_logits(self.embed(query_x), adapted["prototypes"], "euclidean", 32.0).softmax(dim=-1)


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A history array as a tensor with standard strides: torch.from_numpy gives empty arrays, and axes of size 1
    added by ``[None]``, stride 0, which the checkpoint checksum cannot view as bytes."""
    source = torch.from_numpy(np.ascontiguousarray(array))
    return torch.empty(source.shape, dtype=source.dtype).copy_(source)
