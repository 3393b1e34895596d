"""Snapshots for views of training, recorded by the trainer at each validation into the run folder.

Each view capability that follows training through a file has a recorder here; the trainer calls the recorders
of the views its kind lists (:attr:`ExperimentKind.views`). A recorder never stops training: a failure (an
algorithm without the hook the view needs) is kept as its ``note``, which the view shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


class EmbeddingSnapshots:
    """The Embeddings view's history: a fixed probe task embedded at every validation (<run>/probes.npz)."""

    def __init__(self, dataset: Any, config: Any, run_path: Path):
        self.dataset, self.config, self.run_path = dataset, config, Path(run_path)
        self.probe: tuple | None = None
        self.note = ""

    def record(self, algorithm: Any, step: int) -> None:
        from workbench.core import probes

        if not algorithm.has("embeddings"):
            self.note = f"{algorithm.title} does not expose embeddings"
            return
        try:
            if self.probe is None:
                fixed = probes.config_probe_episodes(self.dataset, self.config, 1)
                self.probe = (fixed[0], fixed.split.class_names,
                              probes.probe_split_name(self.dataset, self.config.dataset.ways))
            episode, class_names, split_name = self.probe
            probes.record_probe_snapshot(self.run_path, algorithm, episode, step, class_names, split_name)
        except Exception as exc:  # the view explains a missing history
            self.note = str(exc)


FIT_FILE = "fit_history.npz"
FIT_GRID_POINTS = 200
FIT_INNER_STEPS = tuple(range(11))  # predictions after 0..10 inner steps
FIT_MAX_SNAPSHOTS = 200


class FitSnapshots:
    """The Fit view's history (<run>/fit_history.npz): on a fixed probe task of the regression kind (its "probe"
    split, seeded by the run's evaluation seed), the model's prediction on a grid after 0..10 inner steps, at
    every validation. Adapts through the algorithm's public interface (``adapt(..., steps=n)`` + ``predict``).

    Arrays: steps [S]; x_grid, true_y [G]; support_x, support_y [K]; inner_steps [P]; predictions [S, P, G];
    probe_mse [S, P]; amplitude, phase (scalars); algorithm (str). At most FIT_MAX_SNAPSHOTS snapshots."""

    def __init__(self, dataset: Any, config: Any, run_path: Path):
        self.dataset, self.config, self.path = dataset, config, Path(run_path) / FIT_FILE
        self.probe: dict[str, Any] | None = None
        self.note = ""

    def _probe(self) -> dict[str, Any]:
        """The probe task and the grid over the dataset's ``x_range`` (tensors; amplitude and phase as floats)."""
        if self.probe is None:
            from workbench.core.kinds import get_kind

            kind = get_kind(self.config.kind, self.config.task)
            task = kind.fixed_tasks(self.dataset, self.config, "probe", 1, self.config.evaluation.seed, queries=1)[0]
            grid = torch.linspace(*self.dataset.x_range, FIT_GRID_POINTS).unsqueeze(1)
            self.probe = {"x_grid": grid, "true_y": task.target(grid),
                          "support_x": task.support_x, "support_y": task.support_y,
                          "amplitude": np.float32(task.amplitude), "phase": np.float32(task.phase)}
        return self.probe

    def predictions(self, algorithm: Any) -> tuple[np.ndarray, np.ndarray]:
        """[P, G] predictions on the grid and [P] grid MSE after each count of FIT_INNER_STEPS."""
        probe = self._probe()
        rows = []
        for steps in FIT_INNER_STEPS:
            adapted = algorithm.adapt(probe["support_x"], probe["support_y"], 1, steps=steps)
            rows.append(algorithm.predict(adapted, probe["x_grid"]).detach().float().cpu().reshape(-1))
        predicted = torch.stack(rows)
        mse = ((predicted - probe["true_y"].reshape(1, -1)) ** 2).mean(1)
        return predicted.numpy(), mse.numpy()

    def record(self, algorithm: Any, step: int) -> None:
        try:
            predicted, mse = self.predictions(algorithm)
            history = _load_fit_history(self.path)
            keep = [i for i, s in enumerate(history["steps"]) if s < step]  # a resumed run replaces later ones
            steps = [int(history["steps"][i]) for i in keep] + [int(step)]
            snapshots = [history["predictions"][i] for i in keep] + [predicted]
            errors = [history["probe_mse"][i] for i in keep] + [mse]
            while len(steps) > FIT_MAX_SNAPSHOTS:  # thin every other one, keeping the newest
                chosen = sorted(set(range(0, len(steps) - 1, 2)) | {len(steps) - 1})
                steps, snapshots, errors = ([seq[i] for i in chosen] for seq in (steps, snapshots, errors))
            self._save(algorithm.name, steps, snapshots, errors)
            self.note = ""
        except Exception as exc:  # the view explains a missing history
            self.note = f"{type(exc).__name__}: {exc}"

    def _save(self, algorithm_name: str, steps: list[int], snapshots: list, errors: list) -> None:
        from workbench.core.fileio import atomic_write

        probe = self._probe()
        arrays = {"steps": np.asarray(steps, np.int64),
                  "x_grid": probe["x_grid"].reshape(-1).numpy().astype(np.float32),
                  "true_y": probe["true_y"].reshape(-1).numpy().astype(np.float32),
                  "support_x": probe["support_x"].reshape(-1).numpy().astype(np.float32),
                  "support_y": probe["support_y"].reshape(-1).numpy().astype(np.float32),
                  "inner_steps": np.asarray(FIT_INNER_STEPS, np.int64),
                  "predictions": np.stack(snapshots).astype(np.float32),
                  "probe_mse": np.stack(errors).astype(np.float32),
                  "amplitude": probe["amplitude"], "phase": probe["phase"], "algorithm": np.array(algorithm_name)}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

        atomic_write(self.path, write)


def _load_fit_history(path: Path) -> dict[str, np.ndarray]:
    """The snapshots already in a run's fit history (none if it has no such file or an unreadable one)."""
    empty = {"steps": np.zeros(0, np.int64), "predictions": np.zeros((0, len(FIT_INNER_STEPS), FIT_GRID_POINTS)),
             "probe_mse": np.zeros((0, len(FIT_INNER_STEPS)))}
    if not path.is_file():
        return empty
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in empty}
    except (OSError, ValueError, KeyError):
        return empty


# View capability -> recorder class (dataset, config, run folder) with .record(algorithm, step).
RECORDERS: dict[str, Callable[..., Any]] = {"embeddings": EmbeddingSnapshots, "fit": FitSnapshots}


def recorders_for(views: tuple[str, ...], dataset: Any, config: Any, run_path: Path) -> list[Any]:
    return [RECORDERS[view](dataset, config, run_path) for view in views if view in RECORDERS]
