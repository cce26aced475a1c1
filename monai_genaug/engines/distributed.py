# Copyright (c) monai_genaug contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Multi-GPU (and multi-process CPU) data-parallel training for the bundles, the MONAI way.

A bundle's ``configs/multi_gpu_train.json`` is merged over its train config and launched with
``torchrun --nproc_per_node=N -m monai.bundle run --config_file "['configs/train.json','configs/multi_gpu_train.json']"``
(see MONAI model-zoo ``multi_gpu_train.json``). Configs that build a ``SupervisedTrainer`` themselves wrap
``network`` in ``DistributedDataParallel`` and give the data loader a MONAI ``DistributedSampler`` directly. The
package's trainer factories (:func:`~monai_genaug.engines.diffusion.create_diffusion_trainer`,
:func:`~monai_genaug.methods.gms.create_gms_trainer`, ...) build their own handlers and optimiser around the
unwrapped network; :func:`distributed_trainer` converts such a ready trainer: the network it calls becomes
``DistributedDataParallel`` (optimiser, checkpoints and EMA keep the unwrapped module, so checkpoint keys are the
same as in single-process training) and its data loader is sharded by a ``DistributedSampler``. Writers in the
package (checkpoints, final weights, sample grids, MLflow) act on rank 0 only.

Helpers for the configs: :func:`local_device` (``cuda:LOCAL_RANK`` or CPU), :func:`init_distributed` /
:func:`destroy_distributed` (``initialize`` / ``finalize``), :func:`is_main_process`, :func:`unwrap`.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Events
from monai.data import DistributedSampler
from monai.utils import set_determinism
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

__all__ = [
    "destroy_distributed",
    "distributed_loader",
    "distributed_trainer",
    "get_rank",
    "init_distributed",
    "is_main_process",
    "local_device",
    "rank0_writers",
    "unwrap",
]

#: handler classes (matched by class name along the MRO) whose event methods write files or tracking records, and
#: the methods that write (``None``: all of them). :func:`rank0_writers` detaches them on non-zero ranks.
WRITER_HANDLERS: dict[str, Sequence[str] | None] = {
    "ResumableCheckpointHandler": ("save", "completed"),
    "FinalGeneratorSaver": None,
    "FinalAutoencoderSaver": None,
    "FinalClassifierSaver": None,
    "FinalModelHandler": None,
    "SampleGridHandler": None,
    "SegmentationGridSaver": None,
    "CheckpointSaver": None,
    "MetricsSaver": None,
    "MLFlowHandler": None,
    "TensorBoardHandler": None,
}
#: trainer attributes holding the networks the trainer calls (``SupervisedTrainer.network``,
#: ``GanTrainer.state.g_network`` / ``d_network``); each becomes ``DistributedDataParallel``.
NETWORK_ATTRS: tuple[str, ...] = ("network", "g_network", "d_network")
#: handler classes that must keep running on every rank (their state steers training) but write only on rank 0:
#: their ``save_fn`` becomes a no-op on non-zero ranks.
SAVE_FN_HANDLERS: tuple[str, ...] = ("BestModelSaver",)


def get_rank() -> int:
    """The global rank (0 when ``torch.distributed`` is not initialised)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """True on rank 0 and in single-process runs: the process that writes checkpoints, files and tracking."""
    return get_rank() == 0


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available (LOCAL_RANK, not RANK: correct on several nodes), else CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed(seed: int | None = 0, backend: str | None = None, quiet_non_main: bool = True) -> int:
    """Initialise the process group from the ``torchrun`` environment (``initialize`` of ``multi_gpu_train.json``).

    Args:
        seed: ``monai.utils.set_determinism`` seed on every rank (None: leave the RNGs alone).
        backend: ``"nccl"`` / ``"gloo"``; default NCCL with CUDA, Gloo on CPU.
        quiet_non_main: set the log level of non-zero ranks to WARNING (one rank reports progress).

    Returns:
        the global rank.

    Raises:
        RuntimeError: not launched by ``torchrun`` (no ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` in the
            environment).
    """
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing and not dist.is_initialized():
        raise RuntimeError(
            f"multi_gpu_train.json needs the torchrun environment ({', '.join(missing)} not set); launch with "
            "torchrun --nproc_per_node=N -m monai.bundle run --config_file \"['configs/<train>.json',"
            "'configs/multi_gpu_train.json']\"."
        )
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_device())
    if seed is not None:
        set_determinism(seed=seed)
    if quiet_non_main and not is_main_process():
        logging.getLogger().setLevel(logging.WARNING)
        for name in ("monai_genaug", "monai_genaug.train", "ignite", "py.warnings"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return get_rank()


def destroy_distributed() -> None:
    """Tear the process group down (``finalize`` of ``multi_gpu_train.json``); no-op when not initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` (the network itself otherwise)."""
    return network.module if isinstance(network, (DistributedDataParallel, nn.DataParallel)) else network


def _ddp(network: nn.Module, device: torch.device | str | None, find_unused_parameters: bool) -> nn.Module:
    if isinstance(network, DistributedDataParallel):
        return network
    device = torch.device(device) if device is not None else next(network.parameters()).device
    network = network.to(device)
    return DistributedDataParallel(
        network,
        device_ids=[device] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )


def distributed_loader(loader: DataLoader, shuffle: bool = True, even_divisible: bool = True) -> DataLoader:
    """The same data loader over this rank's shard: MONAI ``DistributedSampler``, loader ``shuffle`` off.

    Args:
        loader: a ``torch.utils.data.DataLoader`` (batch size, workers, collate function and pinning are kept).
        shuffle: shuffle inside the sampler (its seed follows the epoch, via ``set_epoch``).
        even_divisible: pad so every rank gets the same number of items (training); False for evaluation.
    """
    if not isinstance(loader, DataLoader):
        raise TypeError(f"distributed_loader needs a torch DataLoader, got {type(loader).__name__}.")
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    sampler = DistributedSampler(loader.dataset, even_divisible=even_divisible, shuffle=shuffle)
    return loader.__class__(
        loader.dataset,
        batch_size=loader.batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers if loader.num_workers > 0 else False,
    )


def _class_names(obj: Any) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


def _owner(fn: Any) -> tuple[Any, str]:
    """The object a registered event handler belongs to, and the method name."""
    fn = inspect.unwrap(fn)
    return getattr(fn, "__self__", fn), getattr(fn, "__name__", "")


def _no_save(*args: Any, **kwargs: Any) -> None:
    return None


def rank0_writers(engine: Any, writers: Mapping[str, Sequence[str] | None] | None = None) -> list[str]:
    """On a non-zero rank, detach the file/tracking writers from ``engine`` and the evaluators it runs.

    Walks ``engine``'s event handlers (and those of evaluators reachable through ``ValidationHandler.validator``
    or an ``evaluator`` attribute): handlers of the :data:`WRITER_HANDLERS` classes are removed (MLflow handlers
    are also switched off), handlers of :data:`SAVE_FN_HANDLERS` keep tracking the best metric but save nothing.
    On rank 0 (and without a process group) nothing changes.

    Args:
        engine: an Ignite engine (trainer or evaluator).
        writers: class name -> writing methods (``None``: all); default :data:`WRITER_HANDLERS`.

    Returns:
        ``"Class.method"`` of every detached handler (empty on rank 0).
    """
    if is_main_process():
        return []
    writers = WRITER_HANDLERS if writers is None else writers
    removed: list[str] = []
    seen: set[int] = set()
    todo = [engine]
    while todo:
        eng = todo.pop()
        if id(eng) in seen or not hasattr(eng, "_event_handlers"):
            continue
        seen.add(id(eng))
        for nested in (getattr(eng, "evaluator", None),):
            if nested is not None:
                todo.append(nested)
        for event, handlers in eng._event_handlers.items():
            kept = []
            for entry in handlers:
                owner, name = _owner(entry[0])
                for attr in ("validator", "evaluator"):
                    if hasattr(getattr(owner, attr, None), "_event_handlers"):
                        todo.append(getattr(owner, attr))
                names = _class_names(owner)
                if names & set(SAVE_FN_HANDLERS) and hasattr(owner, "save_fn"):
                    owner.save_fn = _no_save
                hit = [c for c in names if c in writers and (writers[c] is None or name in writers[c])]
                if hit:
                    if hasattr(owner, "disabled"):
                        owner.disabled = True
                    removed.append(f"{type(owner).__name__}.{name}")
                    continue
                kept.append(entry)
            handlers[:] = kept
    return removed


def distributed_trainer(
    trainer: Any,
    device: torch.device | str | None = None,
    find_unused_parameters: bool = True,
    shard_data: bool = True,
) -> Any:
    """Make a ready MONAI trainer (e.g. from a package factory) data-parallel; returns the same trainer.

    ``trainer.network`` (``g_network`` / ``d_network`` of GAN trainers) becomes ``DistributedDataParallel`` (the
    factories keep the unwrapped module for the optimiser, EMA, checkpoints and validation, so the saved keys do not
    change) and, with ``shard_data``, ``trainer.data_loader`` is replaced by :func:`distributed_loader` with the epoch
    length updated and the sampler's epoch set at every epoch start (as ``monai.engines.Workflow`` does). Call it before
    ``trainer.run()``, after :func:`init_distributed`; without an initialised process group it returns the trainer
    unchanged. On non-zero ranks the package's writers are detached (:func:`rank0_writers`), and every rank waits
    for the others when training completes (rank 0 has finished writing before anyone reads its files).

    Args:
        trainer: a ``monai.engines.SupervisedTrainer`` (or any workflow with ``network`` and ``data_loader``).
        device: this rank's device (default: where the network is).
        find_unused_parameters: DDP option; True for generative networks, whose conditioning branches (dropped
            prompts, frozen parts) leave some parameters without gradient in an iteration.
        shard_data: shard the training loader across ranks.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return trainer
    # SupervisedTrainer keeps ``network`` on the engine, GanTrainer keeps ``g_network`` / ``d_network`` on its state
    found = [
        (holder, a)
        for holder in (trainer, getattr(trainer, "state", None))
        for a in NETWORK_ATTRS
        if isinstance(getattr(holder, a, None), nn.Module)
    ]
    if not found:
        raise TypeError(
            f"distributed_trainer needs a trainer with a network module ({', '.join(NETWORK_ATTRS)}), got "
            f"{type(trainer).__name__}."
        )
    for holder, attr in found:
        setattr(holder, attr, _ddp(getattr(holder, attr), device, find_unused_parameters))
    loader = getattr(trainer, "data_loader", None)
    if shard_data and isinstance(loader, DataLoader) and not isinstance(loader.sampler, DistributedSampler):
        sharded = distributed_loader(loader, shuffle=True, even_divisible=True)
        if trainer.state.epoch_length == len(loader):
            trainer.state.epoch_length = len(sharded)
        trainer.data_loader = sharded
        sampler = sharded.sampler

        def _set_sampler_epoch(engine) -> None:
            sampler.set_epoch(engine.state.epoch)

        trainer.add_event_handler(Events.EPOCH_STARTED, _set_sampler_epoch)
    trainer.distributed_removed = rank0_writers(trainer)
    # last COMPLETED handler: the final files and checkpoints of rank 0 exist before any rank goes on
    trainer.add_event_handler(Events.COMPLETED, _barrier)
    return trainer


def _barrier(engine: Any = None) -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
