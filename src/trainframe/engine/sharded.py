"""Sharded checkpoints under FSDP2: every rank writes its own shard through torch.distributed.checkpoint.

With ``trainer.distributed=fsdp2`` a checkpoint is a directory (``step_00000100/``, ``best/``)::

    .metadata               DCP: where each piece of each tensor lies (rank 0 writes it last)
    __R_0.distcp            DCP: model and optimizer, rank R's shard, written by rank R
    trainframe_rankR.pt     the rest as rank R saw it: loop, config, data position, RNG, controller,
                            plugin entries (rank 0's also serve one-process readers)

Save (:class:`Writer`): rank 0 makes a hidden temporary directory beside the target and tells the
others its name; each rank writes its own ``trainframe_rankR.pt`` (fsynced) and then hands its
shards to ``dcp.async_save``, which copies them to host memory before it returns, so training goes
on while a background thread writes. DCP's write ends with rank 0 gathering every rank's result and
writing ``.metadata``, so when rank 0's save completes every rank's files are on disk; only then
does rank 0 rename the directory into place (and prune). A kill before that leaves the temporary
directory (removed by the next ``train``/``resume``) and the previous checkpoints as they were. The
next save, the final one and ``distributed.shutdown`` wait for a save still in flight; a failed
write is reported there in one line. The background writes go through a gloo process group of their
own, so their collectives never interleave with the training's.

Load: :func:`read_meta` checks that every file the checkpoint names is there, whole, and returns one
rank's metadata (for the newest-good search); :func:`load_into` reads the shards into an FSDP2 model
and optimizer (all ranks, the same world size); :func:`load_full` reads the whole model into plain
tensors in one process, with no process group (``eval``, ``export``, ``generate``). DCP's
``.metadata`` and its non-tensor entries are pickles; they are read here with a restricted unpickler
and ``torch.load(weights_only=True)``, as ``.pt`` checkpoints are.

State dicts of an FSDP2 model and optimizer: :func:`model_optimizer_state` (this rank's shards, or
gathered whole, as ``Trainer.state_dict()`` returns them) and :func:`load_full_state` (whole ones back).
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import pickle
import shutil
import sys
from pathlib import Path

import torch

from trainframe.errors import UserError
from trainframe.fileio import replace_dir, write_error, writing

DCP_METADATA = ".metadata"
FORMAT = "dcp"  # the ``format`` entry of a sharded checkpoint's metadata


def meta_name(rank: int) -> str:
    return f"trainframe_rank{rank}.pt"


def is_sharded(path: Path) -> bool:
    return Path(path).is_dir()


# ------------------------------------------------------------------------ FSDP2 state dicts
def model_optimizer_state(model, optimizer, *, full: bool) -> tuple[dict, dict]:
    """The state dicts of an FSDP2 model and its optimizer: this rank's shards (DTensors, as DCP
    writes them; no collective), or with ``full`` the whole of each, gathered to the CPU (a
    collective: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True) if full else None
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def load_full_state(model, optimizer, model_state: dict, optim_state: dict) -> None:
    """Every rank: the whole model and optimizer state (of a ``.pt`` checkpoint) into an FSDP2
    model and its optimizer."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    full = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=full)
    set_optimizer_state_dict(model, optimizer, optim_state, options=full)


# --------------------------------------------------------------------------------------- saving
_IN_FLIGHT: set[concurrent.futures.Future] = set()  # every Writer's, for drain() at shutdown


class Writer:
    """Writes sharded checkpoints of one run, one at a time, asynchronously where asked."""

    def __init__(self, world):
        import torch.distributed as dist

        self.world = world
        # Collective: every rank builds its Writer at the same save.
        self.group = dist.new_group(backend="gloo")
        self._pending: concurrent.futures.Future | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainframe-ckpt")

    def save(self, shards: dict, meta: dict, target: Path, *, keep_last: int | None, wait: bool) -> None:
        """Every rank: write ``shards`` (this rank's model/optimizer state dicts) and ``meta`` into a
        checkpoint directory that appears at ``target`` once complete. ``keep_last``: prune the step
        checkpoints to that many after it appears. ``wait``: return only then."""
        import torch.distributed.checkpoint as dcp

        from trainframe.engine import distributed

        self.wait()  # one save at a time: the previous one is published (or reported) first
        target = Path(target)
        tmp = None
        if self.world.is_main:
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            with writing(target, "the checkpoint"):
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
        tmp = Path(distributed.broadcast_object(str(tmp), self.world))
        meta_file = tmp / meta_name(self.world.rank)
        with writing(meta_file, "the checkpoint"), open(meta_file, "wb") as f:
            torch.save(meta, f)
            f.flush()
            os.fsync(f.fileno())
        writer = dcp.FileSystemWriter(tmp, sync_files=True)
        if wait:
            try:
                dcp.save(shards, storage_writer=writer, process_group=self.group)
            except BaseException as e:
                self._failed(tmp, target, e)
            self._publish(tmp, target, keep_last)
            return
        written = dcp.async_save(shards, storage_writer=writer, process_group=self.group)
        upload = getattr(written, "upload_completion", written)  # torch's newer AsyncSaveResponse

        def finish():
            try:
                upload.result()
            except BaseException as e:
                self._failed(tmp, target, e)
            self._publish(tmp, target, keep_last)

        self._pending = self._pool.submit(finish)
        _IN_FLIGHT.add(self._pending)

    def wait(self) -> None:
        """Block until the save in flight (if any) is published; its failure is raised here, once."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            finally:
                _IN_FLIGHT.discard(pending)

    def _failed(self, tmp: Path, target: Path, e: BaseException):
        if self.world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, UserError):
            raise e
        for error in (e, *getattr(e, "failures", {}).values()):  # DCP's CheckpointException: rank -> error
            if isinstance(error, tuple):  # (exception, traceback) in some torch versions
                error = error[0]
            if isinstance(error, OSError) and error.errno is not None:
                raise write_error(error, target, "the checkpoint") from None
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{target}: the sharded checkpoint was not written ({type(e).__name__}: {first})") from None

    def _publish(self, tmp: Path, target: Path, keep_last: int | None) -> None:
        """Rank 0, once every rank's files are written: the directory takes its place, then pruning."""
        if not self.world.is_main:
            return
        from trainframe.engine import checkpoint as ckpt

        with writing(target, "the checkpoint"):
            replace_dir(tmp, target)
            if keep_last is not None:
                ckpt.prune(target.parent, keep_last)


def drain(timeout: float = 600) -> None:
    """Wait for every sharded save still being written (before the process group goes); a failure
    is printed, not raised: this runs on the way out."""
    for pending in list(_IN_FLIGHT):
        try:
            pending.result(timeout=timeout)
        except BaseException as e:
            print(f"trainframe: {e}", file=sys.stderr)
        _IN_FLIGHT.discard(pending)


# -------------------------------------------------------------------------------------- loading
class _MetadataUnpickler(pickle.Unpickler):
    """DCP's ``.metadata`` holds dataclasses of torch.distributed.checkpoint, torch dtypes and sizes:
    nothing else is let through (a plain ``pickle.load`` would run whatever the file names)."""

    def find_class(self, module: str, name: str):
        if module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None),
                                                               (torch.dtype, torch.layout, torch.memory_format))):
            return getattr(torch, name)
        if (module, name) == ("torch.serialization", "_get_layout"):  # a layout by name ("torch.strided")
            return torch.serialization._get_layout
        if module == "pathlib" and name in ("Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"):
            import pathlib

            return getattr(pathlib, name)  # the checkpoint id DCP keeps
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        if module.startswith("torch.distributed.checkpoint."):
            import importlib

            obj = getattr(importlib.import_module(module), name, None)
            if isinstance(obj, type) and obj.__module__ == module:
                return obj
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint's metadata")


def _reader(path: Path):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            with open(Path(self.path) / DCP_METADATA, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(path)


def _safe_bytes(planner_class):
    """``planner_class`` whose non-tensor entries are read with ``torch.load(weights_only=True)``."""
    from torch.distributed.checkpoint import default_planner

    class Safe(planner_class):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            obj = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                default_planner.set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return Safe


def _unreadable(path: Path, e: BaseException) -> UserError:
    why = (str(e).splitlines() or [""])[0][:120]
    return UserError(f"{path}: corrupt or unreadable checkpoint ({type(e).__name__}{': ' + why if why else ''})")


def _load_meta_file(path: Path, rank: int) -> dict:
    file = Path(path) / meta_name(rank)
    if not file.exists():
        raise UserError(f"{path}: corrupt or unreadable checkpoint ({file.name} is missing)")
    try:
        meta = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _unreadable(path, e) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "loop" not in meta:
        raise UserError(f"{path}: not a trainframe checkpoint")
    return meta


def read_meta(path: Path, rank: int = 0) -> dict:
    """Rank ``rank``'s metadata of the sharded checkpoint ``path`` (rank 0's where it has no such
    rank: the world-size check then refuses it), after checking that the checkpoint is whole: DCP's
    metadata reads, every data file it names is at least as long as it says, and every rank's
    metadata loads. Every rank checks the same, so all of them agree on which checkpoint is good."""
    path = Path(path)
    try:
        metadata = _reader(path).read_metadata()
    except FileNotFoundError:
        raise UserError(f"{path}: corrupt or unreadable checkpoint ({DCP_METADATA} is missing)") from None
    except Exception as e:
        raise _unreadable(path, e) from None
    sizes: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        sizes[info.relative_path] = max(sizes.get(info.relative_path, 0), info.offset + info.length)
    for name, need in sizes.items():
        file = path / name
        have = file.stat().st_size if file.exists() else -1
        if have < need:
            what = "is missing" if have < 0 else f"is truncated ({have} of {need} bytes)"
            raise UserError(f"{path}: corrupt or unreadable checkpoint ({name} {what})")
    first = _load_meta_file(path, 0)
    saved_world = first["loop"].get("world_size", 1)
    metas = [first] + [_load_meta_file(path, r) for r in range(1, saved_world)]
    return metas[rank] if rank < saved_world else first


def load_full(path: Path, keys=("model",)) -> dict:
    """The sharded checkpoint ``path`` as one process sees a ``.pt`` one: rank 0's metadata plus
    ``keys`` (default the model; ``optimizer`` too on request) as whole, plain CPU tensors. No
    process group needed."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state = read_meta(path)
    tensors: dict = {}
    try:
        _load_state_dict(tensors, storage_reader=_reader(path), planner=_safe_bytes(_EmptyStateDictLoadPlanner)(
            keys=list(keys)), no_dist=True)
    except Exception as e:
        raise _unreadable(path, e) from None
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise UserError(f"{path}: not a trainframe checkpoint (no {', '.join(missing)})")
    return {**state, **tensors}


def load_into(path: Path, model, optimizer, step: int) -> None:
    """Every rank: this rank's shards of the model and optimizer from ``path``, in place."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    try:
        dcp.load(state, storage_reader=_reader(path), planner=_safe_bytes(DefaultLoadPlanner)())
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
    except Exception as e:  # another model shape or optimizer: DCP names the first key that differs
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"checkpoint at step {step} does not fit this run's model and optimizer "
                        f"({first}); resume it with the config and trainframe version that wrote it") from None
