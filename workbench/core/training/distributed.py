"""Data-parallel meta-training over torch.distributed.

Every process (a rank) draws the same whole meta-batch from the same seeded sampler and trains on its contiguous
share of the tasks; before each optimizer step the gradients are averaged over the ranks (NCCL between CUDA
devices, gloo on the CPU). Algorithms average their loss over the tasks they get, so with equal shares the averaged
gradient is the whole meta-batch's and N processes take the steps one process would.

Processes are started by torch's elastic launcher: ``workbench train --nproc N`` (see :func:`launch`), or
``torchrun ... -m workbench train ...`` across hosts. Either sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous
address (:meth:`DistributedContext.from_env` reads them). Rank 0 alone keeps the run folder (metrics, checkpoints,
validation, the run index) and decides when training stops; the others follow it step by step.

Where one process and N differ: batch-norm running statistics are rank 0's (tracked over its share of the tasks,
as DistributedDataParallel keeps them); an algorithm that clips gradients before step() clips each rank's before
the average; one that draws random numbers per task (a shuffled support order) draws other numbers for the tasks
it gets; one that batches all its tasks through one forward normalizes over its share. Those train alike in
distribution, not bit for bit. Kinds trained on labelled batches are refused (see :func:`check_parallel`).
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import signal
import sys
import tempfile
import uuid
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from workbench.core.algorithms import get_algorithm
from workbench.core.device import resolve_device
from workbench.core.errors import ConfigError, WorkbenchError
from workbench.core.kinds import get_kind_class

# How long a rank waits for the others at a collective: rank 0 validates (or saves) while they wait at the next step.
WAIT_TIMEOUT = timedelta(hours=2)
# Relative difference between two ranks' weights that counts as "no longer the same model" (rounding on unlike
# hardware stays far below it; a weight update the ranks did not share is far above).
AGREEMENT_RTOL = 1e-4
_FAILED = "workbench: rank 0 failed"  # what rank 0 shares instead of a value when it raised


class LeaderFailed(WorkbenchError):
    """Raised on the other ranks when rank 0 failed; rank 0 reports the error itself."""

    def __init__(self) -> None:
        super().__init__("rank 0 stopped with an error (reported there)")


class DistributedContext:
    """This process's place among the training processes; one process (``world_size`` 1) by default, where every
    method is a no-op or the identity."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, local_world_size: int = 1):
        self.rank, self.world_size = rank, world_size
        self.local_rank, self.local_world_size = local_rank, local_world_size
        self._group = None  # the gradients' process group (NCCL on CUDA); None: the default (gloo) group
        self._stepping = False  # inside a meta-step, where every rank steps the optimizers together

    def __repr__(self) -> str:
        return f"DistributedContext(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "DistributedContext":
        """The context the launcher (elastic agent, torchrun) describes in the environment; one process without."""
        env = os.environ if environ is None else environ
        if "WORLD_SIZE" not in env:
            return cls()
        try:
            world = int(env["WORLD_SIZE"])
            rank = int(env.get("RANK", "0"))
            local_rank = int(env.get("LOCAL_RANK", str(rank)))
            local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
        except ValueError:
            raise WorkbenchError("the launcher's RANK, WORLD_SIZE, LOCAL_RANK or LOCAL_WORLD_SIZE is not a number") \
                from None
        if not 0 <= rank < world:
            raise WorkbenchError(f"RANK {rank} is outside WORLD_SIZE {world}")
        return cls(rank, world, local_rank, local_world)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    # --- setup --------------------------------------------------------------------------------------------------
    def join(self) -> None:
        """Join the process group (gloo, for control messages) once per process; it is left at exit."""
        if not self.active:
            return
        from torch import distributed as dist

        if not dist.is_available():
            raise WorkbenchError("this torch build has no torch.distributed; train in one process (without --nproc)")
        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=WAIT_TIMEOUT)
            atexit.register(_leave_process_group)

    def device(self, choice: str) -> torch.device:
        """Where this rank trains: CUDA device LOCAL_RANK, or the CPU."""
        device = resolve_device(choice)
        if not self.active:
            return device
        if device.type == "cuda":
            count = torch.cuda.device_count()
            if self.local_rank >= count:
                raise ConfigError("training.device", f"process {self.local_rank} on this host trains on GPU "
                                  f"{self.local_rank}, but only {count} are visible; start at most {count} "
                                  "processes per host")
            return torch.device("cuda", self.local_rank)
        if device.type != "cpu":
            raise ConfigError("training.device", f"data-parallel training runs on CUDA (NCCL) or the CPU (gloo), "
                              f"not on {device.type}; use cuda or cpu, or train in one process")
        return device

    def cpu_threads(self, requested: int) -> int:
        """Torch threads per process: the request, else this host's cores shared among its processes."""
        if requested or not self.active:
            return requested
        return max(1, (os.cpu_count() or 1) // max(1, self.local_world_size))

    def bind(self, device: torch.device) -> None:
        """Check that every rank trains on the same kind of device; on CUDA, open the NCCL group for gradients."""
        if not self.active:
            return
        from torch import distributed as dist

        kinds: list[Any] = [None] * self.world_size
        dist.all_gather_object(kinds, device.type)
        if len(set(kinds)) > 1:
            raise ConfigError("training.device", f"the processes resolved it to different devices "
                              f"({', '.join(sorted(set(kinds)))}); name one that every host has")
        if device.type == "cuda":
            torch.cuda.set_device(device)
            self._group = dist.new_group(backend="nccl")

    # --- sharing ------------------------------------------------------------------------------------------------
    def from_leader(self, value: Any) -> Any:
        """Rank 0's value on every rank (the others pass anything). Raises LeaderFailed where rank 0 failed."""
        if not self.active:
            return value
        from torch import distributed as dist

        box = [value if self.is_leader else None]
        dist.broadcast_object_list(box, src=0)
        if not self.is_leader and isinstance(box[0], str) and box[0] == _FAILED:
            raise LeaderFailed()
        return box[0]

    @contextmanager
    def leader_work(self) -> Iterator[None]:
        """Rank 0's part before its next shared value: when it raises, the others (waiting in from_leader) stop
        too instead of waiting for a value that never comes."""
        try:
            yield
        except WorkbenchError:
            if self.active and self.is_leader:
                from torch import distributed as dist

                dist.broadcast_object_list([_FAILED], src=0)
            raise

    def share_of(self, items: list) -> list:
        """This rank's contiguous share: rank r of N takes items [r*k, (r+1)*k) with k = len(items) / N."""
        if not self.active:
            return items
        share = len(items) // self.world_size
        return items[self.rank * share:(self.rank + 1) * share]

    def mean_of(self, values: dict[str, Any]) -> dict[str, Any]:
        """The step's numbers (loss, metric, extras) averaged over the ranks: the whole meta-batch's values."""
        if not self.active:
            return values
        from torch import distributed as dist

        keys = sorted(key for key, value in values.items() if _is_number(value))
        if not keys:
            return values
        numbers = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64)
        dist.all_reduce(numbers)
        return {**values, **dict(zip(keys, (numbers / self.world_size).tolist()))}

    def share_buffers(self, modules: Iterable[nn.Module]) -> None:
        """Rank 0's buffers (batch-norm running statistics) on every rank, as DistributedDataParallel does: each
        rank tracked statistics of its own share of tasks."""
        if not self.active:
            return
        from torch import distributed as dist

        buffers = [buffer for module in modules for buffer in module.buffers()]
        for group in _by_device_and_dtype(buffers):
            flat = torch.cat([buffer.reshape(-1) for buffer in group])
            dist.broadcast(flat, src=0, group=self._group_for(flat))
            for buffer, chunk in zip(group, flat.split([buffer.numel() for buffer in group])):
                buffer.copy_(chunk.view_as(buffer))

    def _group_for(self, tensor: torch.Tensor):
        """NCCL's group for CUDA tensors, the default (gloo) group for CPU ones."""
        return self._group if tensor.is_cuda else None

    def average_gradients(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        """Average the gradients over the ranks just before each optimizer's step() inside :meth:`meta_step`,
        whoever calls it (algorithms step their own optimizers). A gradient clipped before step() is clipped per
        rank, before the average."""
        if not self.active:
            return
        for optimizer in optimizers:
            optimizer.register_step_pre_hook(self._average_before_step)

    @contextmanager
    def meta_step(self) -> Iterator[None]:
        """Where the optimizers' steps are averaged (elsewhere, e.g. an adaptation during rank 0's validation, a
        step would wait for ranks that do not take it)."""
        self._stepping = True
        try:
            yield
        finally:
            self._stepping = False

    def _average_before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self._stepping:
            return
        from torch import distributed as dist

        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        for group in _by_device_and_dtype(params):
            # One all-reduce per group: the gradients (zeros where this rank has none) and, at the end, how many
            # ranks had each one; a parameter no rank touched keeps no gradient, as in one process.
            has = torch.tensor([p.grad is not None for p in group], dtype=group[0].dtype, device=group[0].device)
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group]
                             + [has])
            dist.all_reduce(flat, group=self._group_for(flat))
            sizes = [p.numel() for p in group]
            chunks = flat[:-len(group)].split(sizes)
            for p, chunk, count in zip(group, chunks, flat[-len(group):].tolist()):
                if count == 0:
                    continue
                mean = chunk.view_as(p) / self.world_size
                if p.grad is None:
                    p.grad = mean
                else:
                    p.grad.copy_(mean)

    def check_in_step(self, modules: Iterable[nn.Module], step: int, algorithm: str) -> None:
        """Raise (on every rank) when the ranks' weights no longer agree: an algorithm that changes weights
        outside its optimizers' step() cannot be averaged."""
        if not self.active:
            return
        from torch import distributed as dist

        tensors = [t for module in modules for t in (*module.parameters(), *module.buffers())]
        if not tensors:
            return
        mine = torch.stack([torch.nan_to_num(t.detach().double()).sum().cpu() for t in tensors])
        low, high = mine.clone(), mine.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.allclose(low, high, rtol=AGREEMENT_RTOL, atol=1e-6):
            raise WorkbenchError(f"the {self.world_size} processes' copies of the model differ after step {step}: "
                                 f"'{algorithm}' changes weights outside its optimizers' step(), which data-parallel "
                                 "training cannot average; train it in one process (without --nproc)")


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float))


def _by_device_and_dtype(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Tensors grouped for flat collectives, in the same order on every rank."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.device, tensor.dtype), []).append(tensor)
    return list(groups.values())


def _leave_process_group() -> None:
    from torch import distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


class DetachedRun:
    """The run as the other ranks see it: rank 0 keeps the run folder, so their writes go nowhere."""

    id = ""
    path = None

    def claim(self) -> None:
        pass

    def release(self) -> None:
        pass

    def set_status(self, status: str, message: str = "", **fields: Any) -> None:
        pass

    def update(self, **fields: Any) -> None:
        pass

    def append_metrics(self, records: list[dict]) -> None:
        pass


# --- which experiments split -----------------------------------------------------------------------------------
def trains_on_batches(config: Any) -> bool:
    """Whether the trainer feeds labelled batches (pre-training, label-noise and distillation kinds) rather than a
    meta-batch of tasks."""
    algorithm_cls = get_algorithm(config.algorithm.name)
    hparams = algorithm_cls.build_hparams(config.algorithm.hparams)
    return (algorithm_cls.training_input_for(hparams) == "batches"
            or get_kind_class(config.kind).trains_on == "labelled batches")


def check_parallel(config: Any, world_size: int, per_host: int = 0) -> None:
    """Raise a ConfigError when ``config`` cannot train on ``world_size`` processes (``per_host`` of them on this
    host: each needs its own GPU when training on CUDA)."""
    if world_size <= 1:
        return
    if per_host:  # the device of this host's last process
        DistributedContext(per_host - 1, world_size, per_host - 1, per_host).device(config.training.device)
    if trains_on_batches(config):
        field = "kind" if get_kind_class(config.kind).trains_on == "labelled batches" else "algorithm.name"
        raise ConfigError(field, f"'{config.algorithm.name}' on the {config.kind} kind trains on labelled batches, "
                          "not on a meta-batch of tasks; data-parallel training splits the tasks (its batch "
                          "statistics and sample weights span the whole batch), so train it in one process")
    meta_batch = config.training.meta_batch
    if meta_batch % world_size:
        fit = max(world_size, math.ceil(meta_batch / world_size) * world_size)
        raise ConfigError("training.meta_batch", f"{meta_batch} tasks per step cannot be split evenly over "
                          f"{world_size} processes; use a multiple of {world_size} (e.g. a meta-batch of {fit})")


# --- launching ---------------------------------------------------------------------------------------------------
def launch(entry: Callable[..., int], args: tuple, *, nproc: int, nnodes: int = 1, rdzv_endpoint: str = "",
           rdzv_id: str = "", error_code: int = 2) -> int:
    """Run ``entry(*args)`` in ``nproc`` processes on this host (``nnodes`` hosts in all) through torch's elastic
    launcher and return rank 0's result (0 on hosts without rank 0). ``entry`` returns an exit code; a
    WorkbenchError in a rank is printed there and ends the launch with ``error_code``.

    One host needs no rendezvous settings (a free local port is picked). Several hosts each run the same command
    with ``nnodes``, the same ``rdzv_endpoint`` (host:port of one of them) and the same ``rdzv_id``.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.launcher.api import LaunchConfig

    if nnodes > 1 and not rdzv_endpoint:
        raise ConfigError("--rdzv-endpoint", f"training on {nnodes} hosts needs a rendezvous address (host:port "
                          "of one of them, the same on every host)")
    with tempfile.TemporaryDirectory(prefix="workbench-launch-") as logs:  # the launcher's per-rank error files
        return _launch(entry, args, error_code, LaunchConfig(
            min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=nproc, rdzv_backend="c10d",
            rdzv_endpoint=rdzv_endpoint or "localhost:0",
            run_id=rdzv_id or ("workbench" if nnodes > 1 else uuid.uuid4().hex),
            max_restarts=0, start_method="spawn", logs_specs=DefaultLogsSpecs(log_dir=logs),
            # Ctrl+C reaches the ranks from the terminal: rank 0 stops them all after the step.
            signals_to_handle="SIGTERM,SIGHUP,SIGQUIT"))


def _launch(entry: Callable[..., int], args: tuple, error_code: int, config: Any) -> int:
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    with _sigint_left_to_ranks(), _quiet_process_logs():
        try:
            results = elastic_launch(config, _rank_main)(entry, args, error_code)
        except ChildFailedError as failure:
            rank, info = failure.get_first_failure()
            code = 128 - info.exitcode if info.exitcode < 0 else info.exitcode  # -2: killed by SIGINT
            if code in (error_code, 128 + signal.SIGINT, 128 + signal.SIGTERM):
                return code  # the rank printed why, or the user stopped it
            raise WorkbenchError(f"training process {rank} failed (exit code {info.exitcode}); see its output "
                                 "above") from None
        except SignalException as stop:
            return 128 + int(stop.sigval)
    if 0 in results:
        return int(results[0] or 0)
    return max((int(code or 0) for code in results.values()), default=0)


@contextmanager
def _quiet_process_logs() -> Iterator[None]:
    """The launcher's logs of a failed rank (a traceback of its own polling code, the others' termination): the
    rank has printed why."""
    loggers = [logging.getLogger(name) for name in ("torch.distributed.elastic.multiprocessing",
                                                    "torch.multiprocessing.spawn")]
    handler, propagated = logging.NullHandler(), [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, propagate in zip(loggers, propagated):
            logger.removeHandler(handler)
            logger.propagate = propagate


@contextmanager
def _sigint_left_to_ranks() -> Iterator[None]:
    """The first Ctrl+C is the ranks' (they get it from the terminal; rank 0 stops them all after the step); a
    second one also aborts the launcher (e.g. while it waits for other hosts)."""
    presses = []

    def on_sigint(signum, frame):
        presses.append(signum)
        if len(presses) > 1:
            raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _rank_main(entry: Callable[..., int], args: tuple, error_code: int) -> int:
    """One launched rank: ``entry(*args)``; its errors end this process with ``error_code`` so the launcher stops
    the others (a rank that merely returned would leave them waiting for it)."""
    context = DistributedContext.from_env()
    try:
        return entry(*args)
    except LeaderFailed:
        raise SystemExit(error_code) from None
    except WorkbenchError as exc:
        where = "" if context.is_leader else f" (process {context.rank})"
        print(f"error{where}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(error_code) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def follow(train: Callable[[], Any]) -> bool:
    """Train on a rank other than 0: stop signals are rank 0's to act on (it tells the others at the next step);
    returns False when rank 0 went away mid-step (it was aborted), True when training ended together."""
    from torch.distributed import DistBackendError

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, signal.SIG_IGN)
        except ValueError:  # not the main thread
            pass
    try:
        train()
        return True
    except DistBackendError:
        return False
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
