"""Readers that yield one full (unsharded) tensor at a time from any supported checkpoint format.

    DCPSource        torch.distributed.checkpoint directory (FSDP2 / DDP / single), any world size
    DeepSpeedSource  DeepSpeed ZeRO-1/2/3 directory (one `*_optim_states.pt` per rank)
    UniversalSource  DeepSpeed universal checkpoint
                     (`zero/<param>/{fp32,exp_avg,exp_avg_sq,step}.pt`)
    SafetensorsSource  one .safetensors file of weights

All expose the same interface: `params` (name -> TensorInfo, in the model's order),
`param_groups` (hyperparameters + "params": names; empty for weights-only sources),
`read(name, kind)` with kind in KINDS, `step(name)`, and `meta` for `inspect`. Memory: a read
holds the requested tensor plus the pieces it is assembled from; files are memory-mapped and
released after each read, so resident memory does not grow with the checkpoint.
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from pretrain.checkpoint.torch_files import safe_torch_load
from pretrain.optim import canonical_name

PARAM, EXP_AVG, EXP_AVG_SQ = "param", "exp_avg", "exp_avg_sq"
KINDS = (PARAM, EXP_AVG, EXP_AVG_SQ)


class CheckpointFormatError(ValueError):
    """A checkpoint that is incomplete or not in the format it claims to be."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


class Source:
    """Base: subclasses fill params/param_groups/meta and implement `read` and `step`."""

    format = "?"

    def __init__(self) -> None:
        self.params: OrderedDict[str, TensorInfo] = OrderedDict()
        self.param_groups: list[dict] = []
        self.meta: dict = {}

    @property
    def has_optimizer(self) -> bool:
        return bool(self.param_groups)

    def read(self, name: str, kind: str = PARAM) -> torch.Tensor:
        raise NotImplementedError

    def step(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def optimized(self, name: str) -> bool:
        """Whether the optimizer holds state for `name` (buffers and frozen parameters: no)."""
        return any(name in group["params"] for group in self.param_groups)

    def group_of(self, name: str) -> int:
        for i, group in enumerate(self.param_groups):
            if name in group["params"]:
                return i
        raise KeyError(name)


# ----------------------------------------------------------------------------- DCP


class DCPSource(Source):
    """A DCP directory: this project's (`model.*`, `optim.*` from `get_state_dict`) or a plain
    script's (`{"model": ..., "optimizer": ...}`, or a bare model state dict). Buffers and frozen
    parameters are read like parameters; only the optimized ones carry Adam state.
    `weights="ema"` reads the weight EMA (`ema.*`, optim.ema_decay) as the parameters."""

    format = "dcp"

    def __init__(self, path: Path, weights: str = "model"):
        super().__init__()
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        from pretrain.checkpoint import dcp_io

        self.path = path
        if not (path / ".metadata").exists():
            raise CheckpointFormatError(f"{path} is not a DCP checkpoint (no .metadata)")

        class MetadataOnceReader(dcp_io.SafeFileSystemReader):
            """Every per-tensor load would unpickle .metadata again (most of a small load's
            time)."""

            metadata = None

            def read_metadata(self, *args, **kwargs):
                if self.metadata is None:
                    self.metadata = super().read_metadata(*args, **kwargs)
                return self.metadata

        self._reader = MetadataOnceReader(str(path))
        md = self._reader.read_metadata()
        self._keys = set(md.state_dict_metadata)
        self._optim = next(
            (
                p
                for p in ("optim.", "optimizer.")
                if any(k.startswith(p + "state.") for k in self._keys)
            ),
            "optim.",
        )
        self._model = "model." if any(k.startswith("model.") for k in self._keys) else ""
        self.holds_ema = any(k.startswith("ema.") for k in self._keys)
        if weights == "ema":
            if not self.holds_ema:
                raise CheckpointFormatError(f"{path} holds no EMA of the weights (the run had "
                                            "optim.ema_decay=0)")
            self._model = "ema."
        for key, m in md.state_dict_metadata.items():
            if not isinstance(m, TensorStorageMetadata) or not key.startswith(self._model):
                continue
            if not self._model and key.startswith(self._optim):
                continue
            name = key[len(self._model) :]
            self.params[name] = TensorInfo(name, tuple(m.size), m.properties.dtype)
        files = sorted({s.relative_path for s in md.storage_data.values()})
        for f in files:
            if not (path / f).exists():
                raise CheckpointFormatError(
                    f"shard file {path / f} is missing (listed in {path / '.metadata'})"
                )
        self.meta = {"format": "dcp", "shard_files": len(files)}
        group_keys = [k for k in self._keys if k.startswith(f"{self._optim}param_groups.")]
        if group_keys:
            self.param_groups = self._read_param_groups(group_keys)

    def _load(self, state: dict) -> dict:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import CheckpointException

        from pretrain.checkpoint import dcp_io
        from pretrain.run_dir import one_line_error

        try:
            dcp.load(
                state, storage_reader=self._reader, planner=dcp_io.SafeLoadPlanner(), no_dist=True
            )
        except CheckpointException as e:  # a BaseException wrapping the reader's error
            keys = ", ".join(sorted(state))
            raise CheckpointFormatError(
                f"{self.path}: cannot read {keys[:200]}: {one_line_error(e)}"
            ) from e
        return state

    def _read_param_groups(self, keys: list[str]) -> list[dict]:
        state = self._load({k: None for k in keys})
        groups: dict[int, dict] = {}
        for key, value in state.items():
            idx, field = key[len(f"{self._optim}param_groups.") :].split(".", 1)
            groups.setdefault(int(idx), {})[field] = value
        return [groups[i] for i in sorted(groups)]

    def read(self, name: str, kind: str = PARAM) -> torch.Tensor:
        info = self.params[name]
        key = f"{self._model}{name}" if kind == PARAM else f"{self._optim}state.{name}.{kind}"
        if key not in self._keys:
            raise CheckpointFormatError(f"{self.path} has no {key}")
        out = torch.empty(info.shape, dtype=info.dtype if kind == PARAM else torch.float32)
        return self._load({key: out})[key]

    def step(self, name: str) -> torch.Tensor:
        key = f"{self._optim}state.{name}.step"
        return self._load({key: torch.zeros((), dtype=torch.float32)})[key]


# ----------------------------------------------------------------------------- DeepSpeed ZeRO

_OPTIM_FILE = re.compile(r"^(bf16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")


class DeepSpeedSource(Source):
    """DeepSpeed's native ZeRO files: the fp32 master weights and Adam moments are flat
    partitions per rank and param group. Stage 1/2 files carry each parameter's fragment
    address in the rank's partition; stage 3 partitions every parameter into world_size equal
    pieces (the last one padded), laid end to end in the group's flat partition."""

    format = "deepspeed"

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        optim = {int(m.group(2)): p for p in path.iterdir() if (m := _OPTIM_FILE.match(p.name))}
        model_files = sorted(path.glob("*model_states.pt"))
        if not optim or not model_files:
            raise CheckpointFormatError(
                f"{path} is not a DeepSpeed ZeRO checkpoint "
                "(no *_optim_states.pt / *_model_states.pt)"
            )
        states = safe_torch_load(model_files[0], mmap=True)
        self.world_size = int(states["dp_world_size"])
        prefix = "bf16_" if any(p.name.startswith("bf16_") for p in optim.values()) else ""
        self.files = [
            path / f"{prefix}zero_pp_rank_{r}_mp_rank_00_optim_states.pt"
            for r in range(self.world_size)
        ]
        for f in self.files:
            if not f.exists():
                raise CheckpointFormatError(
                    f"shard file {f} is missing: the checkpoint was written by "
                    f"{self.world_size} ranks"
                )
        # DeepSpeed names parameters as its module does (wrappers included): use canonical names.
        self.shapes: list[OrderedDict] = [
            OrderedDict((canonical_name(n), s) for n, s in g.items())
            for g in states["param_shapes"]
        ]
        for group in self.shapes:  # what is read is the fp32 master copy, also under bf16
            for name, shape in group.items():
                self.params[name] = TensorInfo(name, tuple(shape), torch.float32)
        self.global_steps = int(states.get("global_steps", 0))
        module_state = {k: states.get(k) for k in ("module", "buffer_names", "frozen_param_shapes")}
        del states

        first = safe_torch_load(self.files[0], mmap=True)["optimizer_state_dict"]
        self.stage = int(first["zero_stage"])
        if self.stage == 3:
            inner = first["optimizer_state_dict"]
            self._offsets = []  # per group: name -> offset within each rank's flat partition
            for group in self.shapes:
                offsets, off = {}, 0
                for name, shape in group.items():
                    offsets[name] = off
                    off += math.ceil(math.prod(shape) / self.world_size)
                self._offsets.append(offsets)
        else:
            inner = first["base_optimizer_state"]
            self._fragments = [[{} for _ in self.shapes] for _ in range(self.world_size)]
            for r, f in enumerate(self.files):
                sd = first if r == 0 else safe_torch_load(f, mmap=True)["optimizer_state_dict"]
                for g, mapping in enumerate(sd["param_slice_mappings"]):
                    self._fragments[r][g] = {
                        canonical_name(n): (a.start, a.numel) for n, a in mapping.items()
                    }
                del sd
        self._steps = [
            inner["state"][g]["step"].clone()
            if "step" in inner["state"].get(g, {})
            else torch.tensor(0.0)
            for g in range(len(self.shapes))
        ]
        self.param_groups = []
        for g, group in enumerate(inner["param_groups"]):
            hyper = {k: v for k, v in group.items() if k != "params"}
            self.param_groups.append({**hyper, "params": list(self.shapes[g])})
        del first, inner
        self.extras = self._buffers_and_frozen(module_state)
        for name, tensor in self.extras.items():
            self.params[name] = TensorInfo(name, tuple(tensor.shape), tensor.dtype)
        self.meta = {
            "format": f"deepspeed-zero{self.stage}",
            "world_size": self.world_size,
            "global_steps": self.global_steps,
            "shard_files": len(self.files),
        }

    def _buffers_and_frozen(self, states: dict) -> OrderedDict[str, torch.Tensor]:
        """What DeepSpeed keeps outside the optimizer's partitions, as zero_to_fp32 reads it:
        buffers whole (own dtype) in the module state, frozen parameters as fragments in the
        model-states files (ZeRO-3: one fragment per rank, in rank order)."""
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        module = states["module"] or {}
        for name in states["buffer_names"] or []:
            if name in module:
                out[canonical_name(name)] = module[name].clone()
        shapes = states["frozen_param_shapes"] or {}
        if not shapes:
            return out
        if self.stage == 3:
            files = [
                self.path / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt"
                for r in range(self.world_size)
            ]
        else:
            files = sorted(self.path.glob("*model_states.pt"))[:1]
        fragments = [
            safe_torch_load(f, mmap=True).get("frozen_param_fragments") or {} for f in files
        ]
        for name, shape in shapes.items():
            pieces = [frag[name].reshape(-1) for frag in fragments if name in frag]
            numel = math.prod(shape)
            flat = torch.cat(pieces) if pieces else torch.empty(0)
            if flat.numel() < numel:
                raise CheckpointFormatError(
                    f"{self.path}: frozen parameter {name} has {flat.numel()} of {numel} elements"
                )
            out[canonical_name(name)] = flat[:numel].view(tuple(shape)).clone()
        return out

    def optimized(self, name: str) -> bool:
        return name not in self.extras and super().optimized(name)

    def _flat(self, rank: int, group: int, kind: str) -> tuple[torch.Tensor, dict]:
        sd = safe_torch_load(self.files[rank], mmap=True)["optimizer_state_dict"]
        if self.stage == 3:
            flat = (
                sd["fp32_flat_groups"][group]
                if kind == PARAM
                else sd["optimizer_state_dict"]["state"][group][kind]
            )
        else:
            flat = (
                sd["single_partition_of_fp32_groups"][group]
                if kind == PARAM
                else sd["base_optimizer_state"]["state"][group][kind]
            )
        return flat, sd

    def read(self, name: str, kind: str = PARAM) -> torch.Tensor:
        if name in self.extras:
            if kind != PARAM:
                raise CheckpointFormatError(
                    f"{self.path}: {name} is a buffer or frozen parameter (no {kind})"
                )
            return self.extras[name].clone()
        info = self.params[name]
        g = self.group_of(name)
        out = torch.empty(info.numel, dtype=torch.float32)
        if self.stage == 3:
            piece = math.ceil(info.numel / self.world_size)
            start = self._offsets[g][name]
            for r in range(self.world_size):
                lo = r * piece
                n = min(piece, info.numel - lo)
                if n <= 0:
                    break
                flat, sd = self._flat(r, g, kind)
                out[lo : lo + n].copy_(flat[start : start + n])
                del flat, sd  # unmaps the file: resident memory stays at one tensor
        else:
            lo = 0
            for r in range(self.world_size):
                frag = self._fragments[r][g].get(name)
                if frag is None:
                    continue
                start, n = frag
                flat, sd = self._flat(r, g, kind)
                out[lo : lo + n].copy_(flat[start : start + n])
                lo += n
                del flat, sd
            if lo != info.numel:
                raise CheckpointFormatError(
                    f"{self.path}: fragments of {name} cover {lo} of {info.numel} elements"
                )
        return out.view(info.shape)

    def step(self, name: str) -> torch.Tensor:
        return self._steps[self.group_of(name)].clone()


# ----------------------------------------------------------------------------- DeepSpeed universal


class UniversalSource(Source):
    format = "universal"

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        zero = path / "zero"
        if not zero.is_dir():
            raise CheckpointFormatError(
                f"{path} is not a DeepSpeed universal checkpoint (no zero/)"
            )
        optim = safe_torch_load(zero / "optimizer_state.pt")
        model_file = next(iter(sorted(path.glob("*model_states.pt"))), None)
        shapes = safe_torch_load(model_file, mmap=True)["param_shapes"] if model_file else None
        groups = optim.get("param_groups", [])
        if shapes is None:  # order from the directory listing
            shapes = [OrderedDict((d.name, None) for d in sorted(zero.iterdir()) if d.is_dir())]
        for g, group in enumerate(shapes):
            for name in group:
                f = zero / name / "fp32.pt"
                t = safe_torch_load(f, mmap=True)["param"]
                self.params[name] = TensorInfo(name, tuple(t.shape), torch.float32)
                del t
            if g < len(groups):
                hyper = {k: v for k, v in groups[g].items() if k != "params"}
                self.param_groups.append({**hyper, "params": list(group)})
        self.meta = {"format": "deepspeed-universal"}

    def _file(self, name: str, key: str) -> Path:
        f = self.path / "zero" / name / f"{key}.pt"
        if not f.exists():
            raise CheckpointFormatError(f"shard file {f} is missing")
        return f

    def read(self, name: str, kind: str = PARAM) -> torch.Tensor:
        key = "fp32" if kind == PARAM else kind
        return safe_torch_load(self._file(name, key))["param"].reshape(self.params[name].shape)

    def step(self, name: str) -> torch.Tensor:
        value = safe_torch_load(self._file(name, "step"))
        return torch.as_tensor(value, dtype=torch.float32).clone()


# ----------------------------------------------------------------------------- safetensors


class SafetensorsSource(Source):
    format = "safetensors"

    def __init__(self, path: Path):
        super().__init__()
        from safetensors import safe_open

        self.path = path
        try:
            self._file = safe_open(str(path), framework="pt")
        except Exception as e:  # SafetensorError (a bad header...), not exported by every version
            if isinstance(e, FileNotFoundError):
                raise
            raise CheckpointFormatError(
                f"{path} is not a readable .safetensors file ({' '.join(str(e).split())})"
            ) from e
        header = _safetensors_header(path)
        for name in self._file.keys():
            sl = self._file.get_slice(name)
            self.params[name] = TensorInfo(
                name, tuple(sl.get_shape()), _ST_DTYPES[header[name]["dtype"]]
            )
        self.meta = {"format": "safetensors", **(header.get("__metadata__") or {})}

    def read(self, name: str, kind: str = PARAM) -> torch.Tensor:
        if kind != PARAM:
            raise CheckpointFormatError(f"{self.path} holds weights only (no {kind})")
        return self._file.get_tensor(name)


_ST_DTYPES = {
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n))


class RenamedSource(Source):
    """`source` with `strip` removed from the front of each name and `add` put there instead:
    weights saved from a wrapper (`model.`, `module.`, `_orig_mod.`) for the bare model."""

    def __init__(self, source: Source, strip: str = "", add: str = ""):
        super().__init__()
        self.source, self.format, self.meta = source, source.format, source.meta
        self._old: dict[str, str] = {}
        for name, info in source.params.items():
            new = add + (name[len(strip) :] if strip and name.startswith(strip) else name)
            if new in self._old:
                raise CheckpointFormatError(
                    f"renaming makes {name!r} and {self._old[new]!r} both {new!r}"
                )
            self._old[new] = name
            self.params[new] = TensorInfo(new, info.shape, info.dtype)
        self.param_groups = [
            {
                **g,
                "params": [
                    add + (n[len(strip) :] if strip and n.startswith(strip) else n)
                    for n in g["params"]
                ],
            }
            for g in source.param_groups
        ]

    def read(self, name: str, kind: str = PARAM) -> torch.Tensor:
        return self.source.read(self._old[name], kind)

    def step(self, name: str) -> torch.Tensor:
        return self.source.step(self._old[name])


# ----------------------------------------------------------------------------- detection


def model_dir(path: Path) -> Path:
    """`<ckpt>/model` for a pretrain checkpoint, else `path` itself (a bare format directory)."""
    path = Path(path)
    return path / "model" if (path / "model").is_dir() else path


def deepspeed_tag_dir(path: Path) -> Path:
    """The tag directory a DeepSpeed save directory's `latest` file names, else `path`."""
    latest = path / "latest"
    if not latest.is_file() or any(path.glob("*_optim_states.pt")):
        return path
    tag = latest.read_text().strip()
    if not tag or tag in (".", "..") or "/" in tag or "\\" in tag or not (path / tag).is_dir():
        raise CheckpointFormatError(
            f"{latest} names {tag!r}, which is not a tag directory of {path}"
        )
    return path / tag


def open_source(path: Path, weights: str = "model") -> Source:
    """The right reader for a checkpoint directory, a model/ directory or a .safetensors file.
    `weights="ema"`: the weight EMA as the parameters (DCP checkpoints of this project)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file():
        if path.suffix == ".safetensors":
            return SafetensorsSource(path)
        raise CheckpointFormatError(f"{path}: single files must be .safetensors")
    d = deepspeed_tag_dir(model_dir(path))
    if (d / ".metadata").exists():
        return DCPSource(d, weights)
    if weights == "ema":  # DeepSpeed ZeRO-1/2: the full EMA beside DeepSpeed's files
        if not (d / "ema.safetensors").is_file():
            raise CheckpointFormatError(f"{path} holds no EMA of the weights (the run had "
                                        "optim.ema_decay=0)")
        return SafetensorsSource(d / "ema.safetensors")
    if (d / "zero").is_dir():
        return UniversalSource(d)
    if any(d.glob("*_optim_states.pt")):
        return DeepSpeedSource(d)
    raise CheckpointFormatError(
        f"{path}: no DCP .metadata, DeepSpeed *_optim_states.pt or universal zero/ found"
    )
