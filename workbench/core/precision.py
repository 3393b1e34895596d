"""Mixed precision: the number format the backbones compute in, chosen from the hardware and the algorithm.

``training.precision`` (``--precision``) is ``fp32``, ``bf16``, ``fp16`` or ``auto``. Reduced precision covers the
backbones' forward passes only (Conv-4, the MLP): inside a :func:`compute_in` scope each backbone enters
``torch.autocast`` itself (:func:`backbone_autocast`) and returns float32 features. Losses, distances, softmax and
log-sum-exp, the inner-loop updates of MAML-like methods, batch-norm running statistics and optimizer state stay
float32; the weights stay float32 too (autocast casts copies), so checkpoints hold float32 weights.

``auto`` uses bfloat16 where the hardware has bfloat16 units (a CPU with AVX-512 BF16 or AMX; a CUDA GPU of compute
capability 8.0 or later) and the algorithm declares that it keeps its accuracy in bfloat16
(``Algorithm.auto_reduced_precision``, set after a measured comparison); everything else stays float32. ``auto``
never picks float16: its small gradients underflow without loss scaling, which would have to be part of every
algorithm's optimizer step. The detection is a plain function (:func:`cpu_features`) so tests can simulate a machine.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
PRECISION_HELP = ("Number format of the backbone's forward pass (autocast; losses, distances, inner-loop updates, "
                  "batch-norm statistics and optimizer state stay float32). auto: bf16 where the hardware has "
                  "bfloat16 units (CPU AVX-512 BF16 or AMX, CUDA compute capability 8.0+) and the algorithm has "
                  "shown equal accuracy in bf16, else fp32. fp16 has no loss scaling; prefer bf16.")
TITLES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# CPU feature flags (as /proc/cpuinfo names them) that make each reduced format fast, and torch's own checks.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPU_FP16_FLAGS = ("avx512_fp16", "amx_fp16")
_TORCH_CPU_CHECKS = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported",
                     "amx_fp16": "_is_amx_fp16_supported"}
_FLAG_TITLES = {"avx512_bf16": "AVX-512 BF16", "amx_bf16": "AMX BF16", "amx_tile": "AMX", "avx512_fp16":
                "AVX-512 FP16", "amx_fp16": "AMX FP16"}


def _cpuinfo_flags(path: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_features() -> frozenset[str]:
    """The CPU's reduced-precision features (/proc/cpuinfo names): torch's own checks, then the flags Linux lists."""
    found = {flag for flag in (*CPU_BF16_FLAGS, *CPU_FP16_FLAGS, "amx_tile") if flag in _cpuinfo_flags()}
    for flag, check in _TORCH_CPU_CHECKS.items():
        probe = getattr(torch.cpu, check, None)  # private helpers: absent in some versions
        try:
            if probe is not None and probe():
                found.add(flag)
        except Exception:  # a probe that fails only means "not known to be there"
            pass
    if "amx_tile" in found:  # every AMX processor has the bfloat16 tile instructions
        found.add("amx_bf16")
    return frozenset(found)


@dataclass(frozen=True)
class Hardware:
    """What the device offers for reduced precision."""

    device: str  # "cpu", "cuda", "mps"
    name: str
    bf16: bool  # fast bfloat16 arithmetic
    fp16: bool  # fast float16 arithmetic
    features: tuple[str, ...] = ()  # what was found, in words

    @property
    def summary(self) -> str:
        found = ", ".join(self.features) if self.features else "no bfloat16 or float16 units"
        return f"{self.name}: {found}"

    def to_dict(self) -> dict:
        return {"device": self.device, "name": self.name, "bf16": self.bf16, "fp16": self.fp16,
                "features": list(self.features)}


def detect_hardware(device: torch.device | str = "cpu") -> Hardware:
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        # bfloat16 tensor cores from Ampere (8.0), float16 ones from Volta (7.0).
        return Hardware("cuda", torch.cuda.get_device_name(device), (major, minor) >= (8, 0), major >= 7,
                        (f"compute capability {major}.{minor}",))
    if device.type == "cpu":
        flags = cpu_features()
        shown = [title for flag, title in _FLAG_TITLES.items() if flag in flags and flag != "amx_bf16"]
        if not {"amx_tile", "amx_bf16"} & flags:
            shown.append("no AMX")
        return Hardware("cpu", "CPU", bool(set(CPU_BF16_FLAGS) & flags), bool(set(CPU_FP16_FLAGS) & flags),
                        tuple(shown))
    return Hardware(device.type, device.type.upper(), False, False)


@dataclass(frozen=True)
class Precision:
    """A resolved precision: what was asked, what is used and why."""

    requested: str
    name: str  # "fp32", "bf16" or "fp16"
    reason: str
    hardware: Hardware

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype of the backbones; None for float32."""
        return _DTYPES[self.name]

    @property
    def reduced(self) -> bool:
        return self.dtype is not None

    def to_dict(self) -> dict:
        return {"requested": self.requested, "precision": self.name, "reason": self.reason,
                "hardware": self.hardware.to_dict()}


def check_choice(requested: str, field: str = "training.precision") -> str:
    from workbench.core.errors import ConfigError

    choice = (requested or "auto").strip().lower()
    if choice not in PRECISION_CHOICES:
        raise ConfigError(field, f"unknown precision '{requested}'; choose one of {', '.join(PRECISION_CHOICES)}")
    return choice


def resolve_precision(requested: str, device: torch.device | str, algorithm_allows: bool,
                      hardware: Hardware | None = None) -> Precision:
    """The precision to use. ``algorithm_allows``: the algorithm's ``auto_reduced_precision`` (only ``auto``
    reads it). An explicit format the hardware lacks falls back to float32: it would be emulated, slower."""
    choice = check_choice(requested)
    device = torch.device(device)
    hardware = hardware or detect_hardware(device)
    if choice == "fp32":
        return Precision(choice, "fp32", "float32, as asked", hardware)
    if choice == "auto":
        if not algorithm_allows:
            return Precision(choice, "fp32", "auto: float32, since this algorithm has not shown equal accuracy in "
                             "bfloat16", hardware)
        if not hardware.bf16:
            return Precision(choice, "fp32", f"auto: float32, since the {hardware.name} has no bfloat16 units",
                             hardware)
        return Precision(choice, "bf16", f"auto: bfloat16, on the {hardware.name}'s bfloat16 units", hardware)
    fast = hardware.bf16 if choice == "bf16" else hardware.fp16
    if not torch.amp.is_autocast_available(device.type) or not fast:
        return Precision(choice, "fp32", f"{choice} was asked for, but the {hardware.name} has no {TITLES[choice]} "
                         "units (it would be emulated, slower than float32); float32 is used", hardware)
    note = "; no loss scaling, so very small gradients may underflow" if choice == "fp16" else ""
    return Precision(choice, choice, f"{TITLES[choice]}, as asked{note}", hardware)


def choices_for(device: torch.device | str, algorithm_allows: bool,
                hardware: Hardware | None = None) -> list[tuple[str, str, str]]:
    """(config value, label, tooltip) per choice, resolved for a device and algorithm: the GUI's precision box."""
    hardware = hardware or detect_hardware(device)
    out = []
    for choice in PRECISION_CHOICES:
        resolved = resolve_precision(choice, device, algorithm_allows, hardware)
        if choice == "auto":
            label = f"Automatic: {resolved.name}"
        elif resolved.name != choice:
            label = f"{choice} (not supported here: {resolved.name})"
        else:
            label = choice
        out.append((choice, label, resolved.reason))
    return out


# --- the scope backbones read ------------------------------------------------------------------------------
# A context variable, so each thread (a GUI's training worker, its "try a task") has its own.
_COMPUTE_DTYPE: contextvars.ContextVar[torch.dtype | None] = contextvars.ContextVar("compute_dtype", default=None)


@contextlib.contextmanager
def compute_in(dtype: torch.dtype | None) -> Iterator[None]:
    """Backbone forward passes inside this block compute in ``dtype`` (None: float32). Do not hold it across a
    generator's ``yield``: the scope would leak to the consumer."""
    token = _COMPUTE_DTYPE.set(dtype)
    try:
        yield
    finally:
        _COMPUTE_DTYPE.reset(token)


def compute_dtype() -> torch.dtype | None:
    return _COMPUTE_DTYPE.get()


def backbone_autocast(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """What a backbone's forward enters: autocast to the scope's dtype on ``x``'s device, or nothing."""
    dtype = _COMPUTE_DTYPE.get()
    if dtype is None or not x.is_floating_point():
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, dtype=dtype)


def full_precision(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast switched off for a block (statistics that must stay float32), when it is on."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()
