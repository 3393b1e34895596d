"""Device selection and CPU thread policy, shared by the CLI and the GUI."""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda", "mps" or "cpu"
    name: str
    detail: str  # memory for CUDA, thread count for CPU

    @property
    def label(self) -> str:
        return f"{self.name} ({self.detail})" if self.detail else self.name


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def detect_devices() -> list[DeviceInfo]:
    """Every device torch can use here, best first."""
    found: list[DeviceInfo] = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            found.append(DeviceInfo(f"cuda:{index}", props.name, f"{props.total_memory / 2**30:.1f} GiB"))
    if _mps_available():
        found.append(DeviceInfo("mps", "Apple Metal (MPS)", ""))
    found.append(DeviceInfo("cpu", "CPU", f"{os.cpu_count() or 1} cores, {torch.get_num_threads()} torch threads"))
    return found


def resolve_device(choice: str = "auto") -> torch.device:
    """Turn a user's device choice into a torch.device; 'auto' prefers CUDA, then MPS, then CPU."""
    choice = (choice or "auto").strip().lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            from workbench.core.errors import ConfigError

            raise ConfigError("training.device", f"'{choice}' was asked for but no CUDA device is available; use 'auto' or 'cpu'")
        return torch.device(choice)
    if choice == "mps":
        if not _mps_available():
            from workbench.core.errors import ConfigError

            raise ConfigError("training.device", "'mps' was asked for but Apple MPS is not available; use 'auto' or 'cpu'")
        return torch.device("mps")
    if choice == "cpu":
        return torch.device("cpu")
    from workbench.core.errors import ConfigError

    raise ConfigError("training.device", f"unknown device '{choice}'; choose one of {', '.join(DEVICE_CHOICES)}")


def configure_cpu_threads(requested: int = 0, reserve_for_gui: bool = False) -> int:
    """Set torch's intra-op threads. 0 means automatic: all cores, less one when a GUI shares the machine."""
    cores = os.cpu_count() or 1
    if requested > 0:
        threads = requested
    else:
        threads = max(1, cores - 1) if reserve_for_gui else cores
    torch.set_num_threads(threads)
    return threads


def tune_cpu_allocator() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the OS after every step.

    By default each large activation buffer is mmapped afresh, so every CPU training step page-faults its
    buffers back in (thousands of faults, 1.4-2x slower Conv-4 steps here; see bench/README.md). The cost is
    that the process keeps its peak memory. Linux/glibc only; elsewhere it does nothing.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers from <malloc.h>
    # Fixed values also switch off glibc's dynamic thresholds; the largest C int means "never trim".
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, (1 << 31) - 1))


def pins_memory(device: torch.device | str) -> bool:
    """Whether host batches bound for ``device`` go through pinned (page-locked) memory: only for CUDA, where a
    copy from pinned memory runs asynchronously (non-blocking) and the host queues the next step meanwhile."""
    return torch.device(device).type == "cuda"


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device`` without making the host wait: pinned first when bound for CUDA, then copied
    non-blocking (a blocking host-to-device copy would synchronise every step)."""
    device = torch.device(device)
    if tensor.device == device:
        return tensor
    if pins_memory(device) and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
