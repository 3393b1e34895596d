"""Snapshots for views of training, recorded by the trainer at each validation into the run folder.

Each view capability that follows training through a file has a recorder here; the trainer calls the recorders
of the views its kind lists (:attr:`ExperimentKind.views`). A recorder never stops training: a failure (an
algorithm without the hook the view needs) is kept as its ``note``, which the view shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from workbench.core.inspection import InspectionSpec, compact, specs_from_json, specs_to_json


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


INSPECTION_FILE = "inspections.npz"
INSPECTION_MAX_SNAPSHOTS = 200


@dataclass
class InspectionHistory:
    """A run's inspection records over training: ``specs`` as declared, ``steps`` [S] and, per snapshot, the
    compacted records by spec name (see workbench.core.inspection.compact)."""

    specs: list[InspectionSpec]
    steps: list[int]
    records: list[dict[str, dict[str, np.ndarray]]]
    algorithm: str = ""


class InspectionSnapshots:
    """The Mechanism view's history (<run>/inspections.npz): the algorithm's ``inspect()`` records at every
    validation. Keys: ``steps``, ``specs`` (JSON), ``algorithm`` and ``<snapshot>/<spec>/<array>``; at most
    INSPECTION_MAX_SNAPSHOTS snapshots (every other one is thinned beyond)."""

    def __init__(self, dataset: Any, config: Any, run_path: Path):
        self.path = Path(run_path) / INSPECTION_FILE
        self.note = ""
        self.history: InspectionHistory | None = None  # read once (a resumed run's), then kept here

    def record(self, algorithm: Any, step: int) -> None:
        if not algorithm.has("inspection"):
            return
        try:
            with torch.no_grad():
                raw = algorithm.inspect()
            record = {spec.name: compact(spec, raw[spec.name]) for spec in algorithm.inspections if spec.name in raw}
            history = self.history if self.history is not None else read_inspections(self.path)
            keep = [i for i, s in enumerate(history.steps) if s < step]  # a resumed run replaces later ones
            steps = [history.steps[i] for i in keep] + [int(step)]
            records = [history.records[i] for i in keep] + [record]
            while len(steps) > INSPECTION_MAX_SNAPSHOTS:
                chosen = sorted(set(range(0, len(steps) - 1, 2)) | {len(steps) - 1})
                steps, records = [steps[i] for i in chosen], [records[i] for i in chosen]
            self.history = InspectionHistory(list(algorithm.inspections), steps, records, algorithm.name)
            write_inspections(self.path, self.history)
            self.note = ""
        except Exception as exc:  # never stops training; the view explains a missing history
            self.note = f"{type(exc).__name__}: {exc}"


def write_inspections(path: Path, history: InspectionHistory) -> None:
    from workbench.core.fileio import atomic_write

    arrays: dict[str, np.ndarray] = {"steps": np.asarray(history.steps, np.int64),
                                     "specs": np.array(specs_to_json(history.specs)),
                                     "algorithm": np.array(history.algorithm)}
    for index, record in enumerate(history.records):
        for spec_name, named in record.items():
            for array_name, value in named.items():
                arrays[f"{index}/{spec_name}/{array_name}"] = value

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(Path(path), write)


def read_inspections(path: Path) -> InspectionHistory:
    """A run's inspection history; empty when the file is missing or unreadable (a view says so)."""
    path = Path(path)
    if not path.is_file():
        return InspectionHistory([], [], [])
    try:
        with np.load(path, allow_pickle=False) as npz:
            steps = [int(s) for s in npz["steps"]]
            records: list[dict[str, dict[str, np.ndarray]]] = [{} for _ in steps]
            for key in npz.files:
                index, _, rest = key.partition("/")
                if rest and index.isdigit() and int(index) < len(steps):
                    spec_name, _, array_name = rest.partition("/")
                    records[int(index)].setdefault(spec_name, {})[array_name] = npz[key]
            return InspectionHistory(specs_from_json(str(npz["specs"])), steps, records, str(npz["algorithm"]))
    except (OSError, ValueError, KeyError, TypeError):
        return InspectionHistory([], [], [])


# View capability -> recorder class (dataset, config, run folder) with .record(algorithm, step).
RECORDERS: dict[str, Callable[..., Any]] = {"embeddings": EmbeddingSnapshots, "fit": FitSnapshots,
                                            "inspection": InspectionSnapshots}


def recorders_for(views: tuple[str, ...], dataset: Any, config: Any, run_path: Path) -> list[Any]:
    return [RECORDERS[view](dataset, config, run_path) for view in views if view in RECORDERS]
