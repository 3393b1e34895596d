"""Probe tasks: a few fixed meta-validation episodes used to look inside a model.

- :func:`adaptation_comparison` traces query loss/accuracy over inner steps for the meta-learned start and for
  a randomly initialized model of the same architecture (gradient-based algorithms).
- :func:`embedding_snapshot` embeds a probe episode's support and query images and the class prototypes;
  :class:`ProbeHistory` keeps such snapshots, taken during training, compactly in the run folder
  (``probes.npz``, float16, rewritten atomically).
- :func:`pca_2d` projects embeddings to 2-D with signs aligned to the previous frame, so a replay does not
  flip.
- :func:`projection_2d` runs t-SNE (scikit-learn) or UMAP (umap-learn, when installed) in a child process that
  reports its progress and is terminated on cancel, so a slow projection stops at once.

Headless: no Qt here. torch and the data package are imported inside the functions that need them, so the
projection child process starts without them.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.core.errors import EpisodeError
from workbench.core.progress import Cancelled, ProgressCallback, no_progress

if TYPE_CHECKING:
    import torch

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
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(algorithm)(algorithm.hparams, algorithm.model_spec, algorithm.device)
    fresh.eval()
    return fresh


def _mean_trace(traces: list[list[dict[str, float]]]) -> dict[str, np.ndarray]:
    length = min(len(t) for t in traces)
    # The keys every trace has: query_accuracy for classification, query_mse for regression.
    keys = [key for key in traces[0][0] if all(key in t[i] for t in traces for i in range(length))]
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
    import torch

    return torch.stack([features[labels == c].mean(0) for c in range(ways)])


def embedding_snapshot(algorithm: "Algorithm", episode: "Episode") -> dict[str, np.ndarray]:
    """Embeddings of one probe episode: support, query and class means (prototypes), as float16, plus the
    predicted query labels. Gradient-based methods also give the features after adapting ("adapted_*")."""
    import torch

    with torch.no_grad():
        return _embedding_snapshot(algorithm, episode)


def _embedding_snapshot(algorithm: "Algorithm", episode: "Episode") -> dict[str, np.ndarray]:
    import torch

    device = getattr(algorithm, "device", torch.device("cpu"))
    episode = episode.to(device)
    was_training = [m.training for m in algorithm.modules().values()]
    algorithm.eval()
    try:
        adapted = algorithm.adapt(episode.support_x, episode.support_y, episode.ways)
        predicted = algorithm.predict(adapted, episode.query_x).argmax(-1)
        out: dict[str, np.ndarray] = {"query_pred": predicted.cpu().numpy().astype(np.int16)}
        stages = [("", None)]
        if getattr(algorithm, "gradient_based", False) or getattr(algorithm, "support_dependent_embeddings", False):
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
        self.reused = 0  # leading snapshots left unread by load(known_steps=...)

    @classmethod
    def load(cls, path: Path | str, known_steps: list[int] | None = None) -> "ProbeHistory":
        """The saved history. ``known_steps``: the steps a reader already holds; when the file's steps still
        begin with them, those snapshots are left empty (not decompressed) and ``reused`` says how many, so a
        view that re-reads a growing history pays only for the new snapshots."""
        history = cls(path)
        if not history.path.is_file():
            return history
        with np.load(history.path, allow_pickle=False) as npz:
            history.info = json.loads(str(npz["info"]))
            steps = list(history.info.get("steps", []))
            if known_steps and steps[:len(known_steps)] == list(known_steps):
                history.reused = len(known_steps)
            history.snapshots = [{} for _ in steps]
            for key in npz.files:
                if key.startswith("meta_"):
                    history.meta[key[5:]] = npz[key]
                elif key.startswith("s") and "_" in key and key[1:key.index("_")].isdigit():
                    k = int(key[1:key.index("_")])
                    if history.reused <= k < len(history.snapshots):
                        history.snapshots[k][key[key.index("_") + 1:]] = npz[key]
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


PROJECTIONS = ("t-SNE", "UMAP")  # the slow ones; PCA is pca_2d
TSNE_ITERATIONS = 1000  # scikit-learn's default max_iter, the total of its progress lines
_TSNE_ITERATION = re.compile(r"\[t-SNE\] Iteration (\d+)")
_TSNE_STAGES = (("nearest neighbors", "t-SNE: finding nearest neighbours"),
                ("pairwise distances", "t-SNE: computing pairwise distances"),
                ("conditional probabilities", "t-SNE: affinities computed, optimizing the layout"))


def umap_available() -> bool:
    """Whether umap-learn is installed (it is optional)."""
    return importlib.util.find_spec("umap") is not None


def _fit_projection(method: str, points: np.ndarray, seed: int) -> np.ndarray:
    """Runs in the child process; t-SNE prints its progress (verbose), which :class:`_ProgressLines` reads."""
    x = np.asarray(points, np.float32)
    if method == "t-SNE":
        from sklearn.manifold import TSNE

        perplexity = float(max(2.0, min(30.0, (len(x) - 1) / 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                    max_iter=TSNE_ITERATIONS, verbose=2).fit_transform(x)
    if method == "UMAP":
        if not umap_available():
            raise ImportError("UMAP needs the optional package umap-learn (pip install umap-learn)")
        import umap

        neighbours = int(max(2, min(15, len(x) - 1)))
        return umap.UMAP(n_components=2, n_neighbors=neighbours, random_state=seed).fit_transform(x)
    raise ValueError(f"unknown projection {method!r}; choose one of {', '.join(PROJECTIONS)}")


class _ProgressLines:
    """Stands in for sys.stdout in the child: turns scikit-learn's verbose t-SNE lines into progress messages."""

    def __init__(self, connection):
        self.connection = connection
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            match = _TSNE_ITERATION.search(line)
            if match:
                done = int(match.group(1))
                self.connection.send(("progress", done, TSNE_ITERATIONS,
                                      f"t-SNE: optimizing the layout, iteration {done}/{TSNE_ITERATIONS}"))
                continue
            for needle, message in _TSNE_STAGES:
                if needle in line:
                    self.connection.send(("progress", 0, TSNE_ITERATIONS, message))
                    break
        return len(text)

    def flush(self) -> None:
        return None


def _projection_child(method: str, seed: int, connection) -> None:
    """Entry point of the child process: receives the points, then sends ("progress", done, total, message)...
    and ("result", coords) or ("error", message)."""
    import contextlib

    try:
        points = connection.recv()
        package = "scikit-learn" if method == "t-SNE" else "umap-learn"
        connection.send(("progress", 0, 0, f"{method}: loading {package}"))
        with contextlib.redirect_stdout(_ProgressLines(connection)):
            coords = _fit_projection(method, points, seed)
        connection.send(("result", np.asarray(coords, np.float64)))
    except BaseException as exc:  # everything goes back to the parent, which raises it there
        text = str(exc)
        with contextlib.suppress(OSError):  # the parent has gone (cancelled): nobody to tell
            connection.send(("error", f"{type(exc).__name__}: {text}" if text else type(exc).__name__))
    finally:
        connection.close()


def projection_2d(points: np.ndarray, method: str = "t-SNE", seed: int = 0,
                  progress: ProgressCallback = no_progress, cancel: threading.Event | None = None,
                  poll_s: float = 0.05) -> np.ndarray:
    """2-D t-SNE or UMAP of ``points`` [N, D], computed in a child process (spawned: safe beside the GUI's and
    torch's threads). Cancel by setting ``cancel`` or by raising from ``progress`` (a BackgroundTask's callback
    raises :class:`Cancelled` once its job is cancelled): both are checked every ``poll_s`` seconds, and the
    child is then terminated, so a long fit stops at once instead of running on. Raises ``Cancelled`` then,
    ``RuntimeError`` when the child fails or dies. As with any spawned process, the child re-imports the main
    script: a script that calls this needs the ``if __name__ == "__main__":`` guard (the ``workbench`` entry
    points have it; the frozen app calls ``multiprocessing.freeze_support()``)."""
    if method not in PROJECTIONS:
        raise ValueError(f"unknown projection {method!r}; choose one of {', '.join(PROJECTIONS)}")
    x = np.ascontiguousarray(points, np.float32)
    context = multiprocessing.get_context("spawn")
    connection, child_end = context.Pipe()
    # The points go through the pipe, not the Process arguments: Python's spawn blocks for ever writing large
    # arguments to a child that died before reading them (e.g. it could not re-import the main module).
    child = context.Process(target=_projection_child, args=(method, seed, child_end), daemon=True,
                            name=f"workbench-{method}")
    state = (0, 0, f"{method}: starting a worker process")
    progress(*state)
    child.start()
    child_end.close()  # the child holds the only other end now, so its death reads as EOF / a broken pipe here
    try:
        try:
            connection.send(x)
        except OSError:
            child.join(1.0)
            raise RuntimeError(f"the {method} process ended unexpectedly (exit code {child.exitcode})") from None
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"{method} cancelled")
            progress(*state)  # raises Cancelled when the caller has cancelled
            if not connection.poll(poll_s):
                continue
            try:
                message = connection.recv()
            except EOFError:
                child.join(1.0)
                raise RuntimeError(f"the {method} process ended unexpectedly (exit code {child.exitcode})") from None
            if message[0] == "progress":
                state = tuple(message[1:])
            elif message[0] == "result":
                progress(1, 1, f"{method} done")
                return message[1]
            else:
                raise RuntimeError(message[1])
    finally:
        connection.close()
        if child.is_alive():
            child.terminate()
            child.join(2.0)
            if child.is_alive():
                child.kill()
        child.join()
