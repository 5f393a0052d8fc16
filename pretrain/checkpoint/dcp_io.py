"""torch.distributed.checkpoint without unpickling arbitrary objects.

DCP's stock reader unpickles `.metadata` and non-tensor items without restriction; either can
run code from a hostile checkpoint. Here the
metadata goes through an unpickler that only builds DCP's own metadata classes, and non-tensor
items (optimizer param_groups: numbers, strings, lists) load with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from pretrain import compat
from pretrain.checkpoint.commit import require_complete
from pretrain.checkpoint.integrity import ChecksumRecorder
from pretrain.checkpoint.writeback import WritebackFileSystem

# A lone process (no process group) saving/loading is intended here; DCP warns on each call.
warnings.filterwarnings(
    "ignore", message="torch.distributed is disabled, unavailable or uninitialized"
)

_ALLOWED = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # returns a torch.layout by name
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "Path"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "slice"},
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file asked to build an object outside the allow-list."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"checkpoint metadata refers to {module}.{name}, which is not a DCP metadata type; "
            "refusing to unpickle it (the file may be corrupt or malicious)"
        )


class SafeFileSystemReader(FileSystemReader):
    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = compat.dcp_metadata_path(self, kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            try:
                metadata = _MetadataUnpickler(f).load()
            except UnsafeCheckpointError:
                raise
            except Exception as e:  # a corrupt pickle raises any of a dozen types
                raise UnsafeCheckpointError(
                    f"{path} is not readable DCP metadata ({type(e).__name__}: {e})"
                ) from e
        if not isinstance(metadata, Metadata):
            raise UnsafeCheckpointError(f"{path} does not hold DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            compat.dcp_set_element(
                self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj
            )
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def read_metadata(path: str | Path) -> Metadata:
    """The metadata of a DCP checkpoint directory, read safely."""
    return SafeFileSystemReader(str(path)).read_metadata()


@contextlib.contextmanager
def _without_record_crc32():
    """DCP writes every tensor as its own torch.save record; computing each record's CRC32
    costs a third of the save time. Checkpoint integrity comes from the commit protocol and
    the manifest's whole-file checksums, computed as the bytes are written (integrity.py), so
    the records skip it."""
    previous = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(previous)


# Two writer threads per rank: serialising records and writing them overlap (measured ~1.1-1.9x
# faster than one thread on 0.3-1.2 GB states, bench/bench_checkpoint.py); each writes its own file.
WRITER_THREADS = 2


class _Unclosable:
    """The stream one record is written to: writes go straight to the file, close() keeps it open
    (DCP appends the next record). Its write is the file's own bound method: no extra frame."""

    __slots__ = ("write", "flush")

    def __init__(self, raw: Any) -> None:
        self.write, self.flush = raw.write, raw.flush

    def close(self) -> None:
        self.flush()


class _PlainTransforms(compat.dcp_writer_transforms_base()):
    """DCP's record transforms with no extensions (what we always use), minus its cost: the stock
    version defines a wrapper class for every record (~30 us with ABCMeta) and adds a Python frame
    to every write; with ~400 records per checkpoint that was ~8% of a save's CPU time."""

    def __init__(self) -> None:
        super().__init__(())

    def transform_save_stream(self, write_item: Any, raw_stream: Any) -> tuple[Any, list[str]]:
        return _Unclosable(raw_stream), []


class _WritebackWriter(FileSystemWriter):
    """DCP's file writer, with files that start disk writeback as they grow and checksum their
    bytes as they pass (writeback.py), and no per-record wrapper classes. The bytes on disk are
    the stock format (tests/test_checkpoint_io.py loads them with torch's own reader); torch is
    pinned, so the private base class is stable."""

    def __init__(self, *args: Any, recorder: ChecksumRecorder | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fs = WritebackFileSystem(recorder)
        self.transforms = _PlainTransforms()


def writer(
    path: str | Path,
    thread_count: int = WRITER_THREADS,
    recorder: ChecksumRecorder | None = None,
    **kwargs: Any,
) -> FileSystemWriter:
    """The storage writer for every DCP checkpoint this project writes; the checksums of the
    files it writes go to `recorder`."""
    return _WritebackWriter(str(path), thread_count=thread_count, recorder=recorder, **kwargs)


def raise_write_errors(recorder: ChecksumRecorder) -> None:
    """Re-raise the first write error of a finished save: DCP drops exceptions raised on its
    extra writer threads, and a save that lost a file must not be committed."""
    if recorder.errors:
        raise recorder.errors[0]


def state_nbytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) state dict held by this rank: what a save writes."""
    if isinstance(state, dict):
        return sum(state_nbytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_nbytes(v) for v in state)
    if isinstance(state, torch.Tensor):
        local = state.to_local() if hasattr(state, "to_local") else state  # a DTensor's shard
        return local.nbytes
    return 0


def save(
    state: dict, path: str | Path, process_group=None, recorder: ChecksumRecorder | None = None
) -> dict[str, str]:
    """Write `state`; returns the checksums of the files this rank wrote, by absolute path."""
    recorder = recorder if recorder is not None else ChecksumRecorder()
    with _without_record_crc32():
        dcp.save(state, storage_writer=writer(path, recorder=recorder), process_group=process_group)
    raise_write_errors(recorder)
    return recorder.digests()


def background_stager():
    """A stager that copies the state in a background thread (reusable across saves).

    The copy overlaps the next forward/backward; the caller must not change parameters or
    optimizer state until the returned staging future is done (Engine.hold_updates_until).
    With CUDA the copies go to pinned host buffers, non-blocking on a side stream, so they
    overlap the GPU's work; on a CPU they stay plain copies.
    """
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

    gpu = torch.accelerator.is_available()  # its side stream is made when this holds
    return DefaultStager(
        StagingOptions(
            use_pinned_memory=gpu,
            use_shared_memory=False,
            use_async_staging=True,
            use_non_blocking_copy=gpu,
        )
    )


def stager_reusable(stager) -> bool:
    """Whether `stager` can stage another save. torch 2.11.0's DefaultStager closes its inner
    state-dict stager at the end of every stage (pytorch#183413, fixed later): a second save
    through it raises KeyError: <class 'type'>, so such a stager is replaced, not reused."""
    inner = getattr(stager, "_state_dict_stager", None)
    return inner is None or bool(getattr(inner, "_deepcopy_dispatch", True))


def async_save(
    state: dict,
    path: str | Path,
    process_group=None,
    stager=None,
    recorder: ChecksumRecorder | None = None,
):
    """Start a save in the background; returns (staging future or None, upload future). The
    checksums and write errors of its files go to `recorder` (see `raise_write_errors`)."""
    previous = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)  # restored when the background write ends
    response = dcp.async_save(
        state,
        storage_writer=writer(path, recorder=recorder),
        process_group=process_group,
        async_stager=stager,
    )
    staging, upload = (
        (response.staging_completion, response.upload_completion)
        if hasattr(response, "upload_completion")
        else (None, response)
    )
    upload.add_done_callback(lambda _: torch.serialization.set_crc32_options(previous))
    return staging, upload


def load(state: dict, path: str | Path, process_group=None) -> None:
    """Load in place into `state` (resharding to however this run is sharded)."""
    dcp.load(
        state,
        storage_reader=SafeFileSystemReader(str(path)),
        planner=SafeLoadPlanner(),
        process_group=process_group,
    )


def read_model_tensors(path: Path, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """Full (unsharded) tensors of a committed checkpoint's model, loaded without a process group.

    Keys are canonical parameter names; works whatever world size or backend wrote it.
    """
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    require_complete(path)
    metadata = read_metadata(path / "model")
    state = {
        key: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in metadata.state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)
    }
    root = prefix.rstrip(".")  # "model", or "ema" (the weight EMA)
    nested = {root: {k[len(prefix) :]: v for k, v in state.items()}}
    dcp.load(
        nested,
        storage_reader=SafeFileSystemReader(str(path / "model")),
        planner=SafeLoadPlanner(),
        no_dist=True,
    )
    return nested[root]
