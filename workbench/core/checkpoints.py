"""Checkpoint files: what they hold, reading them safely, and rebuilding a model from one.

Checkpoints hold only plain containers, numbers, strings and tensors, so they load with
``torch.load(weights_only=True)``: a file carrying pickled code is refused, never executed.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from workbench.core.data.base import PreprocessSpec
from workbench.core.errors import CheckpointError, WorkbenchError

if TYPE_CHECKING:
    from workbench.core.algorithms.base import Algorithm
    from workbench.core.config import ExperimentConfig
    from workbench.core.runs import Run, RunStore

CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = ("format", "algorithm", "hparams", "model_spec", "preprocess", "state")


def rng_state(sampler_generator: torch.Generator | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if sampler_generator is not None:
        state["sampler"] = sampler_generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], sampler_generator: torch.Generator | None = None) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if sampler_generator is not None and "sampler" in state:
        sampler_generator.set_state(state["sampler"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        except (RuntimeError, IndexError):
            pass  # fewer GPUs than when saved: the run continues, just not bit-identically


def make_payload(algorithm: "Algorithm", config: "ExperimentConfig", spec: PreprocessSpec, *, step: int,
                 best_val_accuracy: float | None, rng: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict (see the engine API contract); state tensors are moved to the CPU."""
    def to_cpu(value):
        if isinstance(value, torch.Tensor):
            return value.detach().cpu()
        if isinstance(value, dict):
            return {k: to_cpu(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(to_cpu(v) for v in value)
        return value

    from workbench.core.hparams import to_dict

    payload = {
        "format": CHECKPOINT_FORMAT,
        "algorithm": algorithm.name,
        "hparams": to_dict(algorithm.hparams),
        "model_spec": algorithm.model_spec.to_dict(),
        "preprocess": spec.to_dict(),
        "config": config.to_dict(),
        "state": to_cpu(algorithm.state_dict()),
        "optimizer": to_cpu(algorithm.optimizer_state()),
        "step": int(step),
        "best_val_accuracy": None if best_val_accuracy is None or not math.isfinite(best_val_accuracy)
        else float(best_val_accuracy),
        "rng": rng or {},
    }
    if extra:
        payload.update(extra)
    return payload


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file safely; CheckpointError says why a file is refused."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file") from None
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "GLOBAL" in text or "global" in text:
            raise CheckpointError(f"{path}: refused: file contains executable pickle data (it names code or "
                                  "classes to import); only load checkpoints written by the workbench") from None
        raise CheckpointError(f"{path}: not a workbench checkpoint (unreadable pickle data)") from None
    except (EOFError, RuntimeError, ValueError, OSError, AttributeError, IndexError, KeyError, TypeError) as exc:
        reason = "the file is empty or cut short" if isinstance(exc, EOFError) else str(exc).splitlines()[0][:200]
        raise CheckpointError(f"{path}: not a workbench checkpoint ({reason})") from None
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path}: not a workbench checkpoint (it lacks the workbench fields "
                              f"{', '.join(REQUIRED_KEYS)})")
    if payload["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {payload['format']!r} is not supported by this "
                              f"version (it reads format {CHECKPOINT_FORMAT}); update the workbench")
    return payload


@dataclass
class LoadedModel:
    algorithm: "Algorithm"
    spec: PreprocessSpec
    config: "ExperimentConfig | None"
    payload: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.payload.get("step", 0))


def algorithm_from_payload(payload: dict[str, Any], device: torch.device | str = "cpu",
                           source: str = "checkpoint") -> "Algorithm":
    """Rebuild the algorithm a checkpoint describes and load its weights."""
    from workbench.core.algorithms import algorithm_names, get_algorithm
    from workbench.core.algorithms.base import ModelSpec

    name = payload["algorithm"]
    if name not in algorithm_names():
        raise CheckpointError(f"{source}: made by algorithm '{name}', which this workbench does not have "
                              f"(it has {', '.join(algorithm_names())})")
    cls = get_algorithm(name)
    try:
        hparams = cls.build_hparams(payload["hparams"])
        model_spec = ModelSpec.from_dict(payload["model_spec"])
    except (WorkbenchError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: its settings do not fit the installed '{name}' ({exc})") from None
    algorithm = cls(hparams, model_spec, torch.device(device))
    try:
        algorithm.load_state_dict(payload["state"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:400]
        raise CheckpointError(f"{source}: the weights do not match the '{name}' architecture "
                              f"({model_spec.in_channels} channel(s), {model_spec.image_size}px, hparams "
                              f"{payload['hparams']}): {detail}") from None
    return algorithm


def load_model(source: "str | Path | Run", device: torch.device | str = "cpu", *, kind: str = "best",
               store: "RunStore | None" = None) -> LoadedModel:
    """A ready model (eval mode) from a run (object, id, name or folder) or a .pt file.

    ``kind`` picks the run's "best" or "last" checkpoint; "best" falls back to "last" when a run
    stopped before its first validation.
    """
    from workbench.core.runs import Run, RunStore

    if isinstance(source, Run):
        payload, label = _run_payload(source, kind)
    else:
        path = Path(str(source)).expanduser()
        if path.is_file():
            payload, label = read_checkpoint(path), str(path)
        elif path.suffix == ".pt":
            raise CheckpointError(f"{path}: no such checkpoint file")
        else:
            run = (store or RunStore()).get(str(source))
            payload, label = _run_payload(run, kind)
    config = None
    try:
        from workbench.core.config import ExperimentConfig

        config = ExperimentConfig.from_dict(payload["config"]) if payload.get("config") else None
    except (WorkbenchError, KeyError, TypeError, ValueError):
        config = None  # settings from an older version; the model itself still loads
    device = torch.device(device)
    algorithm = algorithm_from_payload(payload, device, label)
    if config is not None:
        try:
            algorithm.configure_optimizers(config.training.lr, config.training.steps, config.training.lr_schedule)
        except Exception:  # some algorithms adapt with their own optimizers; evaluation needs none here
            pass
    algorithm.eval()
    return LoadedModel(algorithm, PreprocessSpec.from_dict(payload["preprocess"]), config, payload)


def _run_payload(run: "Run", kind: str) -> tuple[dict[str, Any], str]:
    label = f"run {run.id}"
    if kind == "best" and not run.has_checkpoint("best") and run.has_checkpoint("last"):
        kind = "last"
    return run.load_checkpoint(kind), f"{label} ({kind} checkpoint)"
