"""Evaluating a saved run or checkpoint on its kind's fixed test tasks, and saving the result into the run.

The evaluation itself (tasks, metric, result) belongs to the kind: see
:meth:`workbench.core.kinds.base.ExperimentKind.evaluate`.
"""

from __future__ import annotations

from pathlib import Path

from workbench.core import data
from workbench.core.data.base import ProgressCallback, no_progress
from workbench.core.device import resolve_device
from workbench.core.errors import CheckpointError, ConfigError
from workbench.core.kinds import get_kind
from workbench.core.runs import Run, RunStore, load_model, now_iso

__all__ = ["evaluate_run"]


def _resolve_source(run_or_id, store, torch_device, checkpoint: str):
    """The loaded model, its config, the run (None for a bare .pt file) and the checkpoint's label."""
    if isinstance(run_or_id, Run):
        run = run_or_id
    elif str(run_or_id).endswith(".pt") and Path(str(run_or_id)).expanduser().is_file():
        loaded = load_model(Path(str(run_or_id)).expanduser(), torch_device)
        if loaded.config is None:
            raise CheckpointError(f"{run_or_id}: the checkpoint does not say which dataset it was trained on")
        return loaded, loaded.config, None, Path(str(run_or_id)).stem
    else:
        run = (store or RunStore()).get(str(run_or_id))
    loaded = load_model(run, torch_device, kind=checkpoint)
    used = "last" if checkpoint == "best" and not run.has_checkpoint("best") else checkpoint
    return loaded, run.config, run, used


def evaluate_run(run_or_id: "Run | str", store: "RunStore | None" = None, *, episodes: int | None = None,
                 ways: int | None = None, shots: int | None = None, queries: int | None = None,
                 seed: int | None = None, device: str = "auto", checkpoint: str = "best",
                 progress: ProgressCallback = no_progress, save: bool = True):
    """Evaluate a run's checkpoint on its kind's fixed test tasks (defaults from the run's config) and save it.

    ``run_or_id`` may also be a .pt checkpoint file; its embedded config names the dataset and the
    result is not saved anywhere. ``ways``/``shots``/``queries`` override the test setting (regression: shots
    are the support points, queries the query points of each task).
    """
    if checkpoint not in ("best", "last"):
        raise ConfigError("checkpoint", f"'{checkpoint}' is not a checkpoint; use 'best' or 'last'")
    torch_device = resolve_device(device)
    loaded, config, run, used_checkpoint = _resolve_source(run_or_id, store, torch_device, checkpoint)
    kind = get_kind(config.kind, config.task)
    dataset = data.load_dataset(config.dataset, progress)
    count = config.eval_episodes() if episodes is None else episodes
    seed = config.evaluation.seed if seed is None else seed
    for name, value, low in (("ways", ways, 2), ("shots", shots, 1), ("queries", queries, 1), ("episodes", count, 1),
                             ("seed", seed, 0)):
        if value is not None and value < low:
            raise ConfigError(name, f"{value} is too small; use at least {low}")
    tasks = kind.fixed_tasks(dataset, config, "test", count, seed, ways=ways, shots=shots, queries=queries)
    result = kind.evaluate(loaded.algorithm, tasks, torch_device, progress, split="test")
    result.checkpoint = used_checkpoint
    result.run = run.id if run is not None else str(run_or_id)
    result.dataset = config.dataset.name
    result.created = now_iso()
    if save and run is not None:
        run.save_evaluation(result)
    return result
