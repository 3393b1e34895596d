"""Snapshots for views of training, recorded by the trainer at each validation into the run folder.

Each view capability that follows training through a file has a recorder here; the trainer calls the recorders
of the views its kind lists (:attr:`ExperimentKind.views`). A recorder never stops training: a failure (an
algorithm without the hook the view needs) is kept as its ``note``, which the view shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


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


# View capability -> recorder class (dataset, config, run folder) with .record(algorithm, step).
RECORDERS: dict[str, Callable[..., Any]] = {"embeddings": EmbeddingSnapshots}


def recorders_for(views: tuple[str, ...], dataset: Any, config: Any, run_path: Path) -> list[Any]:
    return [RECORDERS[view](dataset, config, run_path) for view in views if view in RECORDERS]
