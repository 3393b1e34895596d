"""Checkpoint files: what they hold, reading them safely, and rebuilding a model from one.

Checkpoints hold only plain containers, numbers, strings and tensors, so they load with
``torch.load(weights_only=True)``: a file carrying pickled code is refused, never executed.

Format 2 stores the run's config once (the algorithm, its hyperparameters, the kind and the data settings are
read from it); format 1, written before experiment kinds, also stored the algorithm's name and hyperparameters
at the top level. Both load.

Each checkpoint carries a SHA-256 of its tensors (weights and optimizer state, with their names, dtypes and
shapes) under ``checksum``; a file whose tensor bytes changed since it was written is refused on load. Files from
before checksums load with a one-line note.
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from workbench.core.data.base import PreprocessSpec
from workbench.core.errors import CheckpointError, WorkbenchError

from workbench.core.algorithms import algorithm_names, get_algorithm
from workbench.core.config import ExperimentConfig
from workbench.core.models.spec import ModelSpec

if TYPE_CHECKING:
    from workbench.core.algorithms.base import Algorithm

CHECKPOINT_FORMAT = 2
READABLE_FORMATS = (1, 2)
REQUIRED_KEYS = {1: ("format", "algorithm", "hparams", "model_spec", "preprocess", "state"),
                 2: ("format", "config", "model_spec", "preprocess", "state")}
CHECKSUMMED_KEYS = ("state", "optimizer")  # the payload parts whose tensors the checksum covers
log = logging.getLogger(__name__)
_noted_without_checksum: set[str] = set()


def _tensors(value: Any, prefix: str):
    """(name, tensor) pairs of a nested payload part, in a fixed order."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            yield from _tensors(value[key], f"{prefix}/{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{prefix}/{index}")


def tensor_checksum(payload: dict[str, Any]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the payload's weight and optimizer tensors."""
    digest = hashlib.sha256()
    for key in CHECKSUMMED_KEYS:
        for name, tensor in _tensors(payload.get(key), key):
            tensor = tensor.detach().cpu()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            # A fresh dense copy: a one-element or expanded tensor may have stride 0, which view() refuses.
            flat = torch.empty(tensor.numel(), dtype=tensor.dtype).copy_(tensor.reshape(-1))
            digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def verify_checksum(payload: dict[str, Any], path: Path) -> None:
    """Refuse a payload whose tensors differ from the checksum written with them; note a file without one."""
    stored = payload.get("checksum")
    if stored is None:
        if str(path) not in _noted_without_checksum:
            _noted_without_checksum.add(str(path))
            log.warning("note: %s has no checksum (written by an older version); its weights are not verified",
                        path)
        return
    if not isinstance(stored, dict) or stored.get("algorithm") != "sha256" or "value" not in stored:
        raise CheckpointError(f"{path}: refused: its checksum field is malformed ({stored!r:.80})")
    if tensor_checksum(payload) != stored["value"]:
        raise CheckpointError(f"{path}: refused: the weights do not match the checksum written with them (the "
                              "file was corrupted or changed after it was saved); use another checkpoint, e.g. "
                              "the run's 'last' one, or train again")


def weights_only_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint to ship rather than resume (bundled demo models): the optimizer and RNG state dropped (about
    two thirds of an Adam-trained file), the checksum written again over what is left. Loads, evaluates and tries
    tasks like the original; resuming it starts the optimizer afresh."""
    slim = {key: value for key, value in payload.items() if key not in ("optimizer", "rng")}
    slim["checksum"] = {"algorithm": "sha256", "covers": list(CHECKSUMMED_KEYS), "value": tensor_checksum(slim)}
    return slim


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


def make_payload(algorithm: "Algorithm", config: ExperimentConfig, spec: PreprocessSpec, *, step: int,
                 best_val_accuracy: float | None, rng: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None, config_dict: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict; state tensors are moved to the CPU. ``config_dict``: ``config.to_dict()`` when the
    caller already has it (the trainer builds it once per run)."""
    def to_cpu(value):
        if isinstance(value, torch.Tensor):
            return value.detach().cpu()
        if isinstance(value, dict):
            return {k: to_cpu(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(to_cpu(v) for v in value)
        return value

    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_spec": algorithm.model_spec.to_dict(),
        "preprocess": spec.to_dict(),
        "config": config_dict if config_dict is not None else config.to_dict(),
        "state": to_cpu(algorithm.state_dict()),
        "optimizer": to_cpu(algorithm.optimizer_state()),
        "step": int(step),
        "best_val_accuracy": None if best_val_accuracy is None or not math.isfinite(best_val_accuracy)
        else float(best_val_accuracy),
        "rng": rng or {},
    }
    if extra:
        payload.update(extra)
    payload["checksum"] = {"algorithm": "sha256", "covers": list(CHECKSUMMED_KEYS), "value": tensor_checksum(payload)}
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
    if not isinstance(payload, dict) or "format" not in payload:
        raise CheckpointError(f"{path}: not a workbench checkpoint (it lacks the workbench fields "
                              f"{', '.join(REQUIRED_KEYS[CHECKPOINT_FORMAT])})")
    if payload["format"] not in READABLE_FORMATS:
        raise CheckpointError(f"{path}: checkpoint format {payload['format']!r} is not supported by this "
                              f"version (it reads formats {', '.join(map(str, READABLE_FORMATS))}); update the "
                              "workbench")
    missing = [key for key in REQUIRED_KEYS[payload["format"]] if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: not a workbench checkpoint (it lacks the workbench fields "
                              f"{', '.join(missing)})")
    verify_checksum(payload, path)
    return payload


def payload_algorithm(payload: dict[str, Any]) -> str:
    """The name of the algorithm that wrote a checkpoint (either format)."""
    if payload["format"] == 1:
        return str(payload["algorithm"])
    return str((payload["config"].get("algorithm") or {}).get("name", ""))


def payload_hparams(payload: dict[str, Any]) -> dict[str, Any]:
    if payload["format"] == 1:
        return dict(payload["hparams"])
    return dict((payload["config"].get("algorithm") or {}).get("hparams") or {})


def payload_config(payload: dict[str, Any]) -> ExperimentConfig | None:
    """The run's config from a checkpoint, or None when it is from a version whose settings no longer
    validate (the model itself may still load)."""
    if not payload.get("config"):
        return None
    try:
        return ExperimentConfig.from_dict(payload["config"])
    except (WorkbenchError, KeyError, TypeError, ValueError):
        return None


@dataclass
class LoadedModel:
    algorithm: "Algorithm"
    spec: PreprocessSpec
    config: ExperimentConfig | None
    payload: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.payload.get("step", 0))


def algorithm_from_payload(payload: dict[str, Any], device: torch.device | str = "cpu",
                           source: str = "checkpoint") -> "Algorithm":
    """Rebuild the algorithm a checkpoint describes and load its weights."""
    name = payload_algorithm(payload)
    if name not in algorithm_names():
        raise CheckpointError(f"{source}: made by algorithm '{name}', which this workbench does not have "
                              f"(it has {', '.join(algorithm_names())})")
    cls = get_algorithm(name)
    hparams_dict = cls.upgrade_hparams(payload_hparams(payload))
    try:
        hparams = cls.build_hparams(hparams_dict)
        spec_dict = dict(payload["model_spec"])
        if "kind" not in spec_dict:  # format 1: the kind follows from the settings, as for its config
            spec_dict["kind"] = cls.legacy_kind(payload_hparams(payload)) or "classification"
        model_spec = ModelSpec.from_dict(spec_dict)
    except (WorkbenchError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: its settings do not fit the installed '{name}' ({exc})") from None
    algorithm = cls(hparams, model_spec, torch.device(device))
    try:
        algorithm.load_state_dict(payload["state"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:400]
        raise CheckpointError(f"{source}: the weights do not match the '{name}' architecture "
                              f"({model_spec.in_channels} channel(s), {model_spec.image_size}px, hparams "
                              f"{hparams_dict}): {detail}") from None
    return algorithm


def load_checkpoint_file(payload: dict[str, Any], device: torch.device | str = "cpu",
                         label: str = "checkpoint") -> LoadedModel:
    """A ready model (eval mode) from a checkpoint's payload."""
    config = payload_config(payload)
    device = torch.device(device)
    algorithm = algorithm_from_payload(payload, device, label)
    if config is not None:
        try:
            algorithm.configure_optimizers(config.training.lr, config.training.steps, config.training.lr_schedule)
        except Exception:  # some algorithms adapt with their own optimizers; evaluation needs none here
            pass
    algorithm.eval()
    return LoadedModel(algorithm, PreprocessSpec.from_dict(payload["preprocess"]), config, payload)
