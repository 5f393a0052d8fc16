"""Writers that pull one tensor at a time from a Source.

    write_dcp          DCP directory with the keys `get_state_dict` gives (model.*, optim.state.*,
                       optim.param_groups.*): FSDP2/DDP/single load it at any world size.
    write_universal    DeepSpeed universal checkpoint: DeepSpeed loads it into ZeRO-1/2/3 at any
                       world size (`checkpoint.load_universal`).
    write_safetensors  one .safetensors file, fp32 or bf16; the header is known up front from the
                       source's shapes, so tensors are streamed in without holding the file.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch

from pretrain.checkpoint.convert.sources import EXP_AVG, EXP_AVG_SQ, PARAM, Source

ProgressFn = Callable[[str], None]


def return_freed_tensors_to_the_os() -> None:
    """Make glibc serve every allocation of 1 MiB or more (a tensor being converted) with its own
    mapping, given back to the OS when freed. By default glibc raises that threshold after the
    first large frees and serves later tensors from its heap, which it keeps: peak RSS then
    grows with fragmentation, not with the largest tensor (the same 1.2 GB export: 364-407 MiB
    without this, 735 once in a full test run; 364 MiB every time with it). A no-op where the C
    library is not glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version"):
        m_mmap_threshold = -3  # glibc's malloc.h
        libc.mallopt(m_mmap_threshold, 1 << 20)


def _noop(_: str) -> None:
    pass


# ----------------------------------------------------------------------------- DCP


def _lazy_planner(fetch: dict[str, Callable[[], torch.Tensor]]):
    """A DCP save planner whose tensors are placeholders on the meta device, materialized
    from `fetch` only when the writer asks for each (DCP's CPU writer asks one at a time)."""
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    class LazySavePlanner(DefaultSavePlanner):
        def resolve_data(self, write_item):
            make = fetch.get(write_item.index.fqn)
            if make is None:
                return super().resolve_data(write_item)
            return make().contiguous()

    return LazySavePlanner()


def write_dcp(source: Source, out: Path, optimizer: bool = True, progress: ProgressFn = _noop,
              sync: bool = True) -> None:
    """`sync`: fsync every file (checkpoints); off only for scratch data."""
    return_freed_tensors_to_the_os()
    from torch.distributed.checkpoint import save as dcp_save

    from pretrain.checkpoint.dcp_io import writer as dcp_writer

    model, fetch = {}, {}
    for name, info in source.params.items():
        model[name] = torch.empty(info.shape, dtype=info.dtype, device="meta")
        fetch[f"model.{name}"] = lambda n=name: (progress(n), source.read(n, PARAM))[1]
    state: dict = {"model": model}
    if optimizer and source.has_optimizer:
        opt_state: dict = {}
        for name, info in source.params.items():
            if not source.optimized(name):  # a buffer or a frozen parameter
                continue
            opt_state[name] = {"step": torch.empty((), dtype=torch.float32, device="meta")}
            fetch[f"optim.state.{name}.step"] = lambda n=name: source.step(n)
            for kind in (EXP_AVG, EXP_AVG_SQ):
                opt_state[name][kind] = torch.empty(info.shape, dtype=torch.float32, device="meta")
                fetch[f"optim.state.{name}.{kind}"] = lambda n=name, k=kind: source.read(n, k)
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": list(g["params"])}
                  for g in source.param_groups]
        state["optim"] = {"state": opt_state, "param_groups": groups}
    out.mkdir(parents=True, exist_ok=True)
    # One file per tensor: DCP's writer keeps every tensor of a file referenced until the file
    # is closed, so a single file would hold the whole checkpoint in memory.
    writer = dcp_writer(out, thread_count=1, single_file_per_rank=False, sync_files=sync)
    dcp_save(state, storage_writer=writer, planner=_lazy_planner(fetch), no_dist=True)


# ----------------------------------------------------------------------------- DeepSpeed universal


def _ds_version() -> str:
    try:
        from importlib.metadata import version

        return version("deepspeed")
    except Exception:  # noqa: BLE001 - only recorded as metadata
        return "0.0.0"


def write_universal(
    source: Source, out: Path, global_steps: int, progress: ProgressFn = _noop
) -> None:
    """zero/<name>/{fp32,exp_avg,exp_avg_sq,step}.pt, zero/optimizer_state.pt and the model-states
    file DeepSpeed reads first (both its ZeRO-1/2 and its ZeRO-3 name)."""
    if not source.has_optimizer:
        raise ValueError(
            "a DeepSpeed checkpoint needs optimizer state; this source has weights only"
        )
    return_freed_tensors_to_the_os()
    zero = out / "zero"
    zero.mkdir(parents=True, exist_ok=True)
    module = {}  # buffers and frozen parameters: DeepSpeed keeps them in the module state
    for name in source.params:
        progress(name)
        if not source.optimized(name):
            module[name] = source.read(name, PARAM)
            continue
        d = zero / name
        d.mkdir(exist_ok=True)
        torch.save({"param": source.read(name, PARAM).float(), "cat_dim": 0}, d / "fp32.pt")
        for kind in (EXP_AVG, EXP_AVG_SQ):
            torch.save({"param": source.read(name, kind).float(), "cat_dim": 0}, d / f"{kind}.pt")
        torch.save(source.step(name), d / "step.pt")
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [i]}
        for i, g in enumerate(source.param_groups)
    ]
    steps = {
        i: {"step": source.step(g["params"][0])}
        for i, g in enumerate(source.param_groups)
        if g["params"]
    }
    version = _ds_version()
    torch.save(
        {
            "ds_version": version,
            "param_groups": groups,
            "dynamic_loss_scale": False,
            "overflow": False,
            "optimizer_state_dict": {"state": steps, "param_groups": groups},
        },
        zero / "optimizer_state.pt",
    )
    shapes = [
        OrderedDict((n, torch.Size(source.params[n].shape)) for n in g["params"])
        for g in source.param_groups
    ]
    states = {
        "module": module,
        "buffer_names": [],
        "optimizer": None,
        "param_shapes": shapes,
        "frozen_param_shapes": {},
        "shared_params": {},
        "frozen_param_fragments": {},
        "lr_scheduler": None,
        "data_sampler": None,
        "random_ltd": None,
        "skipped_steps": 0,
        "global_steps": global_steps,
        "dp_world_size": 1,
        "mp_world_size": 1,
        "ds_config": {},
        "ds_version": version,
    }
    for fname in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        torch.save(states, out / fname)


# ----------------------------------------------------------------------------- safetensors

_ST_NAMES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_ALIGN = 8


def write_safetensors(
    source: Source,
    out: Path,
    dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
    progress: ProgressFn = _noop,
) -> None:
    """Weights only, floating tensors in `dtype` (None keeps each tensor's dtype; integer and
    bool tensors, e.g. BatchNorm's step count, always keep theirs). Written to `out` directly;
    callers that need atomicity write aside and rename."""
    return_freed_tensors_to_the_os()
    header: dict = {}
    offset = 0

    def target(info) -> torch.dtype:
        return dtype if dtype is not None and info.dtype.is_floating_point else info.dtype

    for name, info in source.params.items():
        dt = target(info)
        n = info.numel * dt.itemsize
        header[name] = {
            "dtype": _ST_NAMES[dt],
            "shape": list(info.shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % _ALIGN)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, info in source.params.items():
            progress(name)
            t = source.read(name, PARAM).to(target(info)).contiguous()
            if tuple(t.shape) != info.shape:
                raise ValueError(
                    f"{name}: source gave shape {tuple(t.shape)}, expected {info.shape}"
                )
            if t.numel():
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
            del t
        f.flush()


def total_bytes(source: Source, optimizer: bool) -> int:
    """Bytes of tensor data a conversion moves (for throughput figures)."""
    per = sum(i.nbytes for i in source.params.values())
    return per + (2 * sum(i.numel * 4 for i in source.params.values()) if optimizer else 0)


def largest_tensor_bytes(source: Source) -> int:
    return max((max(i.nbytes, i.numel * 4) for i in source.params.values()), default=0)
