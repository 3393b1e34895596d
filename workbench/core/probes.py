"""Probe tasks: a few fixed meta-validation episodes used to look inside a model.

- :func:`adaptation_comparison` traces query loss/accuracy over inner steps for the meta-learned start and for
  a randomly initialized model of the same architecture (gradient-based algorithms).
- :func:`embedding_snapshot` embeds a probe episode's support and query images and the class prototypes;
  :class:`ProbeHistory` keeps such snapshots, taken during training, compactly in the run folder
  (``probes.npz``, float16, rewritten atomically).
- :func:`pca_2d` projects embeddings to 2-D with signs aligned to the previous frame, so a replay does not
  flip.

Headless: no Qt here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from workbench.core.data.base import ProgressCallback, no_progress
from workbench.core.errors import EpisodeError

if TYPE_CHECKING:
    from workbench.core.algorithms.base import Algorithm
    from workbench.core.data.base import FewShotDataset
    from workbench.core.data.episodes import Episode, FixedEpisodes

PROBE_SEED = 1234  # fixed, so every snapshot of a run (and every run) sees the same probe tasks
PROBE_FILE = "probes.npz"
# Keeps probes.npz small: at most this many snapshots and about this many bytes of arrays; beyond either,
# every other older snapshot is dropped (the first and the newest stay).
MAX_SNAPSHOTS = 100
MAX_BYTES = 8 * 1024 * 1024


# --- probe tasks ------------------------------------------------------------------------------------------
def probe_split_name(dataset: "FewShotDataset", ways: int) -> str:
    """Meta-validation classes when there are enough, else the test classes."""
    for name in ("val", "test"):
        split = dataset.splits.get(name)
        if split is not None and split.num_classes >= ways:
            return name
    raise EpisodeError(f"{dataset.name} has no validation or test split with {ways} classes for probe tasks")


def probe_episodes(dataset: "FewShotDataset", ways: int, shots: int, queries: int, count: int = 1,
                   seed: int = PROBE_SEED) -> "FixedEpisodes":
    from workbench.core.data.episodes import FixedEpisodes

    split_name = probe_split_name(dataset, ways)
    return FixedEpisodes(dataset.split(split_name), dataset.spec, ways, shots, queries, count, seed,
                         split_name=split_name, dataset_name=dataset.name)


def config_probe_episodes(dataset: "FewShotDataset", config, count: int = 1) -> "FixedEpisodes":
    """Probe tasks at a run's own way/shot/query setting."""
    return probe_episodes(dataset, config.dataset.ways, config.dataset.shots, config.dataset.queries, count)


# --- adaptation ---------------------------------------------------------------------------------------------
def fresh_copy(algorithm: "Algorithm", seed: int = 0) -> "Algorithm":
    """The same algorithm and architecture with randomly initialized weights (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(algorithm)(algorithm.hparams, algorithm.model_spec, algorithm.device)
    fresh.eval()
    return fresh


def _mean_trace(traces: list[list[dict[str, float]]]) -> dict[str, np.ndarray]:
    length = min(len(t) for t in traces)
    keys = ("step", "support_loss", "query_loss", "query_accuracy")
    return {key: np.mean([[float(t[i][key]) for i in range(length)] for t in traces], axis=0) for key in keys}


def adaptation_comparison(algorithm: "Algorithm", episodes: "FixedEpisodes", steps: int,
                          progress: ProgressCallback = no_progress, random_seed: int = 0) -> dict[str, Any]:
    """Query loss/accuracy per inner step (0 = before adapting) for the trained start and a random start,
    averaged over ``episodes``. Returns {"meta": {...arrays}, "random": {...arrays}, "steps", "episodes"}."""
    if not getattr(algorithm, "gradient_based", False):
        raise ValueError(f"{algorithm.name} has no inner loop to trace")
    random_start = fresh_copy(algorithm, random_seed)
    total = 2 * len(episodes)
    traces: dict[str, list] = {"meta": [], "random": []}
    done = 0
    progress(0, total, "adapting from the meta-learned start")
    for which, model in (("meta", algorithm), ("random", random_start)):
        for index in range(len(episodes)):
            episode = episodes[index]
            trace = model.adaptation_trace(episode.support_x, episode.support_y, episode.query_x, episode.query_y,
                                           episode.ways, steps)
            if not trace:
                raise ValueError(f"{algorithm.name} returned no adaptation trace")
            traces[which].append(trace)
            done += 1
            label = "meta-learned" if which == "meta" else "random"
            progress(done, total, f"adapting from the {label} start: task {index + 1}/{len(episodes)}")
    return {"meta": _mean_trace(traces["meta"]), "random": _mean_trace(traces["random"]), "steps": steps,
            "episodes": len(episodes), "algorithm": algorithm.name}


# --- embeddings ---------------------------------------------------------------------------------------------
def _prototypes(features: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    return torch.stack([features[labels == c].mean(0) for c in range(ways)])


@torch.no_grad()
def embedding_snapshot(algorithm: "Algorithm", episode: "Episode") -> dict[str, np.ndarray]:
    """Embeddings of one probe episode: support, query and class means (prototypes), as float16, plus the
    predicted query labels. Gradient-based methods also give the features after adapting ("adapted_*")."""
    device = getattr(algorithm, "device", torch.device("cpu"))
    episode = episode.to(device)
    was_training = [m.training for m in algorithm.modules().values()]
    algorithm.eval()
    try:
        adapted = algorithm.adapt(episode.support_x, episode.support_y, episode.ways)
        predicted = algorithm.predict(adapted, episode.query_x).argmax(-1)
        out: dict[str, np.ndarray] = {"query_pred": predicted.cpu().numpy().astype(np.int16)}
        stages = [("", None)]
        if getattr(algorithm, "gradient_based", False):
            stages.append(("adapted_", adapted))
        for prefix, state in stages:
            support = algorithm.embed(episode.support_x, state).flatten(1).float()
            query = algorithm.embed(episode.query_x, state).flatten(1).float()
            out[prefix + "support"] = support.cpu().numpy().astype(np.float16)
            out[prefix + "query"] = query.cpu().numpy().astype(np.float16)
            out[prefix + "prototypes"] = _prototypes(support, episode.support_y, episode.ways).cpu().numpy() \
                .astype(np.float16)
    finally:
        for module, training in zip(algorithm.modules().values(), was_training):
            module.train(training)
    return out


def episode_meta(episode: "Episode") -> dict[str, np.ndarray]:
    """What does not change between snapshots: labels and the split rows of the images (for thumbnails)."""
    def rows(index, n):
        return (index.cpu().numpy() if index is not None else np.full(n, -1)).astype(np.int64)

    return {"support_y": episode.support_y.cpu().numpy().astype(np.int16),
            "query_y": episode.query_y.cpu().numpy().astype(np.int16),
            "support_row": rows(episode.support_index, len(episode.support_y)),
            "query_row": rows(episode.query_index, len(episode.query_y))}


class ProbeHistory:
    """Embedding snapshots of a run's probe tasks over training, stored in ``<run>/probes.npz``.

    Arrays are keyed ``s<k>_<field>`` per snapshot k (float16 embeddings, int16 predictions); the episode's
    labels and rows are stored once as ``meta_<field>``; ``info`` is a JSON string with the steps, split,
    way/shot setting and class names.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if self.path.is_dir():
            self.path = self.path / PROBE_FILE
        self.info: dict[str, Any] = {"steps": []}
        self.meta: dict[str, np.ndarray] = {}
        self.snapshots: list[dict[str, np.ndarray]] = []

    @classmethod
    def load(cls, path: Path | str) -> "ProbeHistory":
        history = cls(path)
        if not history.path.is_file():
            return history
        with np.load(history.path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        history.info = json.loads(str(arrays.pop("info")))
        history.meta = {key[5:]: value for key, value in arrays.items() if key.startswith("meta_")}
        history.snapshots = [{} for _ in history.info.get("steps", [])]
        for key, value in arrays.items():
            if key.startswith("s") and "_" in key and key[1:key.index("_")].isdigit():
                k = int(key[1:key.index("_")])
                if k < len(history.snapshots):
                    history.snapshots[k][key[key.index("_") + 1:]] = value
        return history

    @property
    def steps(self) -> list[int]:
        return list(self.info.get("steps", []))

    def __len__(self) -> int:
        return len(self.snapshots)

    def append(self, step: int, snapshot: dict[str, np.ndarray], meta: dict[str, np.ndarray] | None = None,
               **info: Any) -> None:
        if meta is not None and not self.meta:
            self.meta = dict(meta)
        self.info.update(info)
        steps = self.steps
        # A resumed run may repeat steps it had done before it was stopped: later history is replaced.
        while steps and steps[-1] >= step:
            steps.pop()
            self.snapshots.pop()
        steps.append(int(step))
        self.snapshots.append(snapshot)
        while len(self.snapshots) > 2 and (len(self.snapshots) > MAX_SNAPSHOTS or self.nbytes() > MAX_BYTES):
            keep = sorted(set(range(0, len(self.snapshots) - 1, 2)) | {len(self.snapshots) - 1})
            self.snapshots = [self.snapshots[i] for i in keep]
            steps = [steps[i] for i in keep]
        self.info["steps"] = steps

    def nbytes(self) -> int:
        return sum(a.nbytes for snapshot in self.snapshots for a in snapshot.values())

    def save(self) -> Path:
        from workbench.core.fileio import atomic_write

        arrays: dict[str, np.ndarray] = {"info": np.array(json.dumps(self.info))}
        arrays.update({f"meta_{key}": value for key, value in self.meta.items()})
        for k, snapshot in enumerate(self.snapshots):
            arrays.update({f"s{k}_{key}": value for key, value in snapshot.items()})

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, **arrays)

        atomic_write(self.path, write)
        return self.path


def record_probe_snapshot(run_path: Path | str, algorithm: "Algorithm", episode: "Episode", step: int,
                          class_names: list[str], split_name: str) -> None:
    """Append one snapshot to the run's history (called by the trainer at validation time)."""
    history = ProbeHistory.load(Path(run_path) / PROBE_FILE)
    history.append(step, embedding_snapshot(algorithm, episode), episode_meta(episode), split=split_name,
                   ways=episode.ways, class_names=list(class_names), class_ids=[int(c) for c in episode.class_ids],
                   algorithm=algorithm.name, gradient_based=bool(getattr(algorithm, "gradient_based", False)))
    history.save()


# --- projection ---------------------------------------------------------------------------------------------
def pca_2d(points: np.ndarray, previous_components: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """2-D PCA of ``points`` [N, D]. Returns (coordinates [N, 2], components [2, D]); each component's sign is
    chosen to agree with ``previous_components`` (same D) so consecutive frames do not mirror."""
    x = np.asarray(points, np.float64)
    if x.ndim != 2 or len(x) == 0:
        return np.zeros((0, 2)), np.zeros((2, x.shape[-1] if x.ndim == 2 else 0))
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = np.zeros((2, x.shape[1]))
    components[:min(2, len(vt))] = vt[:2]
    if previous_components is not None and previous_components.shape == components.shape:
        for i in range(2):
            if float(components[i] @ previous_components[i]) < 0:
                components[i] = -components[i]
    else:  # a deterministic sign: the largest-magnitude loading is positive
        for i in range(2):
            if components[i].any() and components[i][np.argmax(np.abs(components[i]))] < 0:
                components[i] = -components[i]
    return centred @ components.T, components


def tsne_2d(points: np.ndarray, seed: int = 0, progress: ProgressCallback = no_progress) -> np.ndarray:
    """t-SNE (scikit-learn) of ``points``; slow, so callers run it in a worker."""
    from sklearn.manifold import TSNE

    x = np.asarray(points, np.float32)
    progress(0, 1, "t-SNE")
    perplexity = float(max(2.0, min(30.0, (len(x) - 1) / 3)))
    coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    progress(1, 1, "t-SNE done")
    return coords
