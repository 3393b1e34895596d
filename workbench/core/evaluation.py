"""Evaluating a saved run or checkpoint on its kind's fixed test tasks, and saving the result into the run.

The evaluation itself (tasks, metric, result) belongs to the kind: see
:meth:`workbench.core.kinds.base.ExperimentKind.evaluate`.

A run can also be tested on another dataset than it trained on (``dataset=`` / ``data_root=``), e.g. a
glyph-trained model on Omniglot's meta-test characters: the other dataset is read at the run's image size and its
images are preprocessed exactly like the run's training data (the checkpoint's PreprocessSpec: size, channels,
mean and standard deviation), as "try a task" does. The channels must match. Such a result records the dataset
in ``dataset`` and ``extras["evaluated_on"]``, is saved under its own file name (``...-on-<dataset>``), and leaves
the run's own test columns in the run index alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Any

from workbench.core import data
from workbench.core.algorithms import get_algorithm
from workbench.core.data.base import PreprocessSpec, ProgressCallback, no_progress
from workbench.core.device import resolve_device
from workbench.core.errors import CheckpointError, ConfigError
from workbench.core.kinds import get_kind
from workbench.core.precision import compute_in, resolve_precision
from workbench.core.runs import Run, RunStore, load_model, now_iso

__all__ = ["evaluate_run", "evaluated_on", "evaluation_dataset_config"]


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


def _is_own(config, name: str | None, root: str | None) -> bool:
    return (not name or name == config.dataset.name) and (not root or root == config.dataset.root)


def evaluation_dataset_config(config, name: str | None = None, root: str | None = None,
                              image_size: int | None = None):
    """The run's config with ``dataset`` set to the one to test on (unchanged for the run's own dataset).

    Another dataset uses its default split, no augmentation and no download; ``image_size`` (the run's) keeps the
    decoded images at the size the model takes. ConfigError when the dataset is unknown or does not serve the run's
    kind."""
    if _is_own(config, name, root):
        return config
    name = name or config.dataset.name
    info = data.dataset_info(name)
    if info is None:
        raise ConfigError("dataset", f"unknown dataset '{name}'; choose one of {', '.join(data.dataset_names())}")
    if config.kind not in info.kinds:
        raise ConfigError("dataset", f"'{name}' does not serve the run's kind '{config.kind}' (it serves "
                          f"{', '.join(info.kinds)}); choose a dataset of that kind")
    values: dict[str, Any] = {"name": name, "root": str(root or ""), "rotations": False, "download": False}
    if name != config.dataset.name:  # the run's split settings mean nothing for another dataset
        values.update(split="default", split_seed=0)
    if image_size:
        values["image_size"] = int(image_size)
    return config.replace(dataset=values)


def _other_dataset(config, eval_config, loaded, progress):
    """The other dataset, preprocessed with the run's spec; ConfigError when the channels cannot match."""
    dataset = data.load_dataset(eval_config.dataset, progress)
    spec = getattr(dataset, "spec", None)
    if not isinstance(spec, PreprocessSpec) or not isinstance(loaded.spec, PreprocessSpec):
        return dataset  # generated tasks (no images): nothing to match
    if spec.channels != loaded.spec.channels:
        raise ConfigError("dataset", f"the run was trained on {loaded.spec.channels}-channel images "
                          f"({config.dataset.name}) but {eval_config.dataset.name} has {spec.channels}-channel images "
                          f"({spec.image_size}x{spec.image_size}); a model takes only the channels it was trained "
                          "on, so choose a dataset with as many channels")
    return dataclasses.replace(dataset, spec=loaded.spec)


def evaluated_on(config, name: str, root: str | None) -> dict[str, str]:
    """What a result on another dataset records in ``extras["evaluated_on"]`` (the location as evaluate_run reads
    it, so a saved result can be matched to a request)."""
    return {"dataset": name, "root": str(Path(root).expanduser()) if root else "", "trained_on": config.dataset.name}


def _stem_suffix(name: str, root: str) -> str:
    suffix = "-on-" + (re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "data")
    if root:  # two folders of one dataset type must not overwrite each other's results
        suffix += "-" + hashlib.sha1(root.encode("utf-8")).hexdigest()[:8]
    return suffix


class _OnOtherData:
    """A result on another dataset as the run saves it: its own file name, and no change to the run index
    (whose test columns describe the run's own dataset)."""

    def __init__(self, result, suffix: str):
        self._result, self._suffix = result, suffix

    def __getattr__(self, name):
        return getattr(self._result, name)

    def file_stem(self) -> str:
        return self._result.file_stem() + self._suffix

    def index_fields(self) -> dict[str, Any]:
        return {}


def _check_counts(**values) -> None:
    lows = {"ways": 2, "shots": 1, "queries": 1, "episodes": 1, "seed": 0}
    for name, value in values.items():
        if value is not None and value < lows[name]:
            raise ConfigError(name, f"{value} is too small; use at least {lows[name]}")


def evaluate_run(run_or_id: "Run | str", store: "RunStore | None" = None, *, episodes: int | None = None,
                 ways: int | None = None, shots: int | None = None, queries: int | None = None,
                 seed: int | None = None, device: str = "auto", checkpoint: str = "best",
                 progress: ProgressCallback = no_progress, save: bool = True, dataset: str | None = None,
                 data_root: str | None = None, episode_domains: str | None = None, precision: str | None = None):
    """Evaluate a run's checkpoint on its kind's fixed test tasks (defaults from the run's config) and save it.

    ``run_or_id`` may also be a .pt checkpoint file; its embedded config names the dataset and the
    result is not saved anywhere. ``ways``/``shots``/``queries`` override the test setting (regression: shots
    are the support points, queries the query points of each task). ``dataset`` / ``data_root`` test on another
    dataset (see the module docstring); the episode count then defaults to that dataset's standard one.
    ``episode_domains`` ("any" or "within") overrides how the test episodes pick their classes (default: the
    run's own setting), e.g. to test a model on within-alphabet episodes and on random ones. ``precision`` (auto,
    fp32, bf16, fp16) defaults to the run's ``training.precision``, so a test computes as the training did.
    """
    if checkpoint not in ("best", "last"):
        raise ConfigError("checkpoint", f"'{checkpoint}' is not a checkpoint; use 'best' or 'last'")
    data_root = str(Path(data_root).expanduser()) if data_root else None
    torch_device = resolve_device(device)
    loaded, config, run, used_checkpoint = _resolve_source(run_or_id, store, torch_device, checkpoint)
    kind = get_kind(config.kind, config.task)
    own = _is_own(config, dataset, data_root)
    eval_config = evaluation_dataset_config(config, dataset, data_root, getattr(loaded.spec, "image_size", None))
    if episode_domains:
        eval_config = eval_config.replace(dataset={"episode_domains": episode_domains})
    test_data = (data.load_dataset(config.dataset, progress) if own else
                 _other_dataset(config, eval_config, loaded, progress))
    count = eval_config.eval_episodes() if episodes is None else episodes
    seed = config.evaluation.seed if seed is None else seed
    _check_counts(ways=ways, shots=shots, queries=queries, episodes=count, seed=seed)
    tasks = kind.fixed_tasks(test_data, eval_config, "test", count, seed, ways=ways, shots=shots, queries=queries)
    used_precision = resolve_precision(precision or config.training.precision, torch_device,
                                       get_algorithm(config.algorithm.name).auto_reduced_precision)
    with compute_in(used_precision.dtype):
        result = kind.evaluate(loaded.algorithm, tasks, torch_device, progress, split="test")
    result.checkpoint = used_checkpoint
    result.run = run.id if run is not None else str(run_or_id)
    result.dataset = eval_config.dataset.name
    result.created = now_iso()
    if not own:
        result.extras["evaluated_on"] = evaluated_on(config, eval_config.dataset.name, data_root)
    if save and run is not None:
        run.save_evaluation(result if own else _OnOtherData(result, _stem_suffix(eval_config.dataset.name,
                                                                                 data_root or "")))
    return result


def attack_curve(run_or_id: "Run | str", result, epsilons, *, attack: str = "fgsm", steps: int = 10,
                 device: str = "auto", store: "RunStore | None" = None, progress: ProgressCallback = no_progress):
    """Accuracy against ε (pixel units) on an evaluation's own fixed episodes, rebuilt from its setting and seed,
    for the checkpoint it evaluated; ``result.extras.update(curve.extras())`` adds it to the result."""
    from workbench.core.adversarial import accuracy_against_epsilon

    checkpoint = result.checkpoint if result.checkpoint in ("best", "last") else "best"
    loaded, config, _, _ = _resolve_source(run_or_id, store, resolve_device(device), checkpoint)
    domains = getattr(result, "domains", "any")  # the episodes of the result, within one domain or not
    config = config.replace(dataset={"episode_domains": domains}) if domains != "any" else config
    tasks = get_kind(config.kind, config.task).fixed_tasks(
        data.load_dataset(config.dataset, progress), config, "test", result.episodes, result.seed,
        ways=getattr(result, "ways", None), shots=result.shots, queries=result.queries)
    return accuracy_against_epsilon(loaded.algorithm, tasks, epsilons, attack, steps, progress=progress,
                                    seed=result.seed)
