"""A tensor plan: how each tensor of one layout is computed from tensors of another.

Export and import are the same operation read in opposite directions: every output tensor
(an HF name, or a project name on import) is a small function of a few input tensors (split
a fused qkv, concatenate gate and up, scale by a folded multiplier). `PlanSource` presents a
plan as a checkpoint `Source`, so the existing streaming writers (safetensors, DCP) pull one
output tensor at a time and memory stays at a few tensors, never the checkpoint.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pretrain.checkpoint.convert.sources import PARAM, CheckpointFormatError, Source, TensorInfo

Read = Callable[[str], torch.Tensor]
Make = Callable[[Read], torch.Tensor]


class ExportRefused(ValueError):
    """The model uses an option the target format cannot express exactly (named in the text)."""


@dataclass(frozen=True)
class Entry:
    """One output tensor: its name, shape and how to compute it from the input layout."""

    name: str
    shape: tuple[int, ...]
    make: Make


Rows = slice | torch.Tensor | None  # which rows of our tensor a piece holds (None: all)


@dataclass(frozen=True)
class Piece:
    """Their tensor `theirs` = our tensor `ours`[rows][:, cols] * mult + offset, reshaped to
    `shape` (offset: a norm gain stored as weight - 1, as Gemma's (1 + weight) RMSNorm).

    One table of pieces per family serves both directions: export computes each of theirs from
    ours, import assembles each of ours from its pieces (dividing the multiplier back out,
    inverting the column permutation). `mult` is a forward multiplier folded into the weights
    (e.g. muP's readout multiplier); at 1.0 no arithmetic is done, so an unfolded tensor
    round-trips bit for bit. Several full pieces of one of ours are replicas (a table the
    other layout keeps once per block): import takes the first and requires the rest equal.
    `ours=None`: a tensor of theirs our model does not have, exact only at zero (a bias our
    layer lacks): export writes zeros of `shape`, import requires zeros (`nonzero_constant`).
    """

    ours: str | None
    theirs: str
    rows: Rows = None
    mult: float = 1.0
    shape: tuple[int, ...] | None = None
    cols: torch.Tensor | None = None  # a permutation of dim 1
    offset: float = 0.0


def _take(t: torch.Tensor, p: Piece) -> torch.Tensor:
    t = t if p.rows is None else t[p.rows]
    return t if p.cols is None else t[:, p.cols]


def scaled(t: torch.Tensor, mult: float, offset: float = 0.0) -> torch.Tensor:
    t = t if mult == 1.0 else t * mult
    return t if offset == 0.0 else t + offset


def unscaled(t: torch.Tensor, mult: float, offset: float = 0.0) -> torch.Tensor:
    t = t if offset == 0.0 else t - offset
    return t if mult == 1.0 else t / mult


def export_entries(pieces: list[Piece], ours: dict[str, tuple[int, ...]]) -> list[Entry]:
    """Their tensors, in table order, each computed from one of ours."""
    out = []
    for p in pieces:
        if p.ours is None:
            out.append(Entry(p.theirs, p.shape, lambda read, s=p.shape: torch.zeros(s)))
            continue
        taken = _take(torch.empty(ours[p.ours], device="meta"), p)
        shape = p.shape or tuple(taken.shape)

        def make(read: Read, p: Piece = p, shape: tuple[int, ...] = shape) -> torch.Tensor:
            return scaled(_take(read(p.ours), p), p.mult, p.offset).reshape(shape)

        out.append(Entry(p.theirs, shape, make))
    return out


def _untake(theirs: torch.Tensor, p: Piece, region: torch.Size) -> torch.Tensor:
    """Our region ours[rows] from their tensor: the inverse of `_take` + scale + reshape.
    A folded value is computed in float32, as the libraries compute (1 + w) or w * scale for
    bf16 weights (unfolded ones keep their dtype, cast bit-exactly later)."""
    folded = p.mult != 1.0 or p.offset != 0.0
    theirs = theirs.to(torch.float32) if folded and theirs.is_floating_point() else theirs
    value = unscaled(theirs, p.mult, p.offset).reshape(region)
    return value if p.cols is None else value[:, torch.argsort(p.cols)]


def import_entries(pieces: list[Piece], ours: dict[str, tuple[int, ...]]) -> list[Entry]:
    """Our tensors, in our model's order, each assembled from its pieces of theirs."""
    by_ours: dict[str, list[Piece]] = {}
    for p in pieces:
        if p.ours is not None:
            by_ours.setdefault(p.ours, []).append(p)
    missing = [n for n in ours if n not in by_ours]
    if missing:
        raise ExportRefused(f"no foreign tensor maps to {missing[0]} ({len(missing)} unmapped)")
    out = []
    for name, shape in ours.items():
        group = by_ours[name]

        def make(read: Read, group: list[Piece] = group, shape: tuple[int, ...] = shape):
            if all(p.rows is None for p in group):  # the whole tensor, maybe replicated
                first = _untake(read(group[0].theirs), group[0], torch.Size(shape))
                for p in group[1:]:
                    if not torch.equal(_untake(read(p.theirs), p, torch.Size(shape)), first):
                        raise CheckpointFormatError(
                            f"{p.theirs} differs from {group[0].theirs}: the model keeps one "
                            f"{group[0].ours} for all blocks")
                return first
            t = torch.empty(shape, dtype=torch.float32)
            for p in group:
                t[p.rows] = _untake(read(p.theirs).to(torch.float32), p, t[p.rows].shape)
            return t

        out.append(Entry(name, tuple(shape), make))
    return out


def nonzero_constant(pieces: list[Piece], read: Read) -> str | None:
    """The first of their tensors that must be zero for import (`Piece.ours=None`) but is not."""
    for p in pieces:
        if p.ours is None and torch.count_nonzero(read(p.theirs)):
            return p.theirs
    return None


class PlanSource(Source):
    """The plan's outputs as a weights-only Source over an input reader.

    The last input read is kept (one entry), so the three slices of one fused qkv or the two
    halves of a SwiGLU fc1 read it once; memory is that input plus the output being written.
    """

    format = "plan"

    def __init__(self, entries: list[Entry], read: Read, dtype: torch.dtype = torch.float32,
                 meta: dict | None = None):
        super().__init__()
        self.entries = {e.name: e for e in entries}
        self.params = OrderedDict((e.name, TensorInfo(e.name, e.shape, dtype)) for e in entries)
        self._read, self._cached = read, ("", None)
        self.meta = meta or {"format": "plan"}

    def _read_once(self, name: str) -> torch.Tensor:
        if self._cached[0] != name:
            self._cached = ("", None)  # drop the previous input before reading the next
            self._cached = (name, self._read(name))
        return self._cached[1]

    def read(self, name: str, kind: str = PARAM) -> torch.Tensor:
        if kind != PARAM:
            raise CheckpointFormatError(f"{name}: a converted layout holds weights only")
        out = self.entries[name].make(self._read_once).to(self.params[name].dtype)
        if tuple(out.shape) != self.params[name].shape:
            raise CheckpointFormatError(
                f"{name}: computed shape {tuple(out.shape)}, expected {self.params[name].shape}")
        return out

    def subset(self, names: list[str]) -> PlanSource:
        """The same plan restricted to `names` (one safetensors shard), sharing the reader."""
        part = PlanSource([self.entries[n] for n in names], self._read, meta=self.meta)
        part.params = OrderedDict((n, self.params[n]) for n in names)
        part._read_once = self._read_once
        return part
