"""The device mesh: the one place a run's ranks are laid out as dp_replicate x dp_shard x tp.

Ranks are numbered row-major over ("dp_replicate", "dp_shard", "tp"), so the tensor-parallel
ranks of one data-parallel group are neighbours (one node's fast links) and a rank's position
in the data order is `rank // tp`. The engines take the sub-meshes they need from here (FSDP2:
("dp_replicate", "dp_shard"), HSDP when dp_replicate > 1; TP: "tp"), the trainer feeds the
loader the data-parallel rank and size, and nothing else derives a layout from the world size.

Which combinations exist is decided here, before any process group is split, so a mesh that
cannot run fails on one line naming the key: the product must equal the world size, tp needs
fsdp2 and a model whose heads and MLP width it divides, DeepSpeed and DDP run flat meshes only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from pretrain.models.blocks import swiglu_hidden
from pretrain.models.config import ModelConfig
from pretrain.parallel_config import MeshConfig

MESH_DIMS = ("dp_replicate", "dp_shard", "tp")
MLP_DEFAULTS = {"lm": "swiglu"}  # each family's mlp=auto choice (pretrain/models/*.py)


@dataclass(frozen=True)
class MeshShape:
    """A resolved mesh: every dimension a positive int, product = world size."""

    dp_replicate: int
    dp_shard: int
    tp: int

    @property
    def dp(self) -> int:
        """Data-parallel ranks: how many different batches one step trains on."""
        return self.dp_replicate * self.dp_shard

    def as_dict(self) -> dict[str, int]:
        return {"dp_replicate": self.dp_replicate, "dp_shard": self.dp_shard, "tp": self.tp}

    def describe(self) -> str:
        return " x ".join(f"{k}={v}" for k, v in self.as_dict().items())


def resolve_mesh(cfg: MeshConfig, world_size: int, backend: str) -> MeshShape:
    """`parallel.mesh` with dp_shard=-1 filled in, checked against the world and the backend."""
    for key in ("dp_replicate", "tp"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"parallel.mesh.{key}={getattr(cfg, key)} must be >= 1")
    if cfg.dp_shard == 0 or cfg.dp_shard < -1:
        raise ValueError(f"parallel.mesh.dp_shard={cfg.dp_shard} must be >= 1 (or -1: the rest)")
    fixed = cfg.dp_replicate * cfg.tp
    dp_shard = world_size // fixed if cfg.dp_shard == -1 else cfg.dp_shard
    shape = MeshShape(cfg.dp_replicate, dp_shard, cfg.tp)
    if dp_shard < 1 or shape.dp * shape.tp != world_size:
        raise ValueError(
            f"parallel.mesh dp_replicate={cfg.dp_replicate} x dp_shard={cfg.dp_shard} x "
            f"tp={cfg.tp} does not match the world size {world_size}")
    if backend != "fsdp2" and (shape.tp > 1 or shape.dp_replicate > 1):
        key = "tp" if shape.tp > 1 else "dp_replicate"
        raise ValueError(f"parallel.mesh.{key}={getattr(shape, key)} needs "
                         f"parallel.backend=fsdp2 (got {backend})")
    return shape


def check_model_for_tp(model: ModelConfig, tp: int) -> None:
    """A model whose matrices split `tp` ways, with no option that TP would silently break."""
    if tp == 1:
        return
    if model.num_heads % tp:
        raise ValueError(f"parallel.mesh.tp={tp} does not divide model.num_heads="
                         f"{model.num_heads}")
    mlp = model.mlp if model.mlp != "auto" else MLP_DEFAULTS.get(model.family, "gelu")
    hidden = swiglu_hidden(model) if mlp == "swiglu" else int(model.width * model.mlp_ratio)
    if hidden % tp:
        raise ValueError(f"parallel.mesh.tp={tp} does not divide the MLP width {hidden} "
                         f"(model.width={model.width}, model.mlp_ratio={model.mlp_ratio})")
    vocab = model.lm.vocab_size if model.family == "lm" else 0  # 0: not read from data yet
    if vocab % tp:
        raise ValueError(f"parallel.mesh.tp={tp} does not divide model.lm.vocab_size={vocab} "
                         f"(the embedding and readout split by vocabulary; pad the vocabulary)")
    unsupported = {
        "model.sigma_reparam": model.sigma_reparam,  # its spectral norm needs the whole matrix
        "model.attn_entropy": model.attn_entropy,  # would record only this rank's heads
        "model.dropout": model.dropout > 0,  # masks would differ between the TP ranks
    }
    for key, on in unsupported.items():
        if on:
            raise ValueError(f"{key} is not supported with parallel.mesh.tp={tp}")


@dataclass(frozen=True)
class MeshLayout:
    """This rank's place in the mesh, and the mesh itself (None for a single process)."""

    shape: MeshShape
    mesh: DeviceMesh | None
    dp_rank: int  # which share of each global batch this rank trains on
    tp_rank: int

    @property
    def dp_size(self) -> int:
        return self.shape.dp

    def dp_mesh(self) -> DeviceMesh:
        """The mesh FSDP2 shards over: 1-D (dp_shard), or 2-D (dp_replicate, dp_shard) = HSDP."""
        assert self.mesh is not None
        if self.shape.dp_replicate > 1:
            return self.mesh["dp_replicate", "dp_shard"]
        return self.mesh["dp_shard"]

    def tp_mesh(self) -> DeviceMesh:
        assert self.mesh is not None
        return self.mesh["tp"]


def build_layout(shape: MeshShape, rank: int, device: torch.device,
                 with_mesh: bool) -> MeshLayout:
    """The rank's layout; the DeviceMesh (a collective: every rank calls this) if `with_mesh`."""
    mesh = None
    if with_mesh:
        mesh = init_device_mesh(device.type, (shape.dp_replicate, shape.dp_shard, shape.tp),
                                mesh_dim_names=MESH_DIMS)
    return MeshLayout(shape, mesh, dp_rank=rank // shape.tp, tp_rank=rank % shape.tp)


def device_flops(flops: float, shape: MeshShape) -> float:
    """The share of a global step's training FLOPs (or FLOP/s) one device computes: its
    data-parallel rank's part of the batch, split tp ways by tensor parallelism (the
    replicated norms and adds are not counted, as in the models' FLOPs). MFU divides this by
    one device's peak."""
    return flops / (shape.dp * shape.tp)


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes this rank holds for `tensor` (its local shard when it is a DTensor)."""
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def rank_memory(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                shape: MeshShape) -> dict[str, int]:
    """Parameter and optimizer-state bytes held by this rank (measured), and what the mesh
    predicts: a parameter's bytes divided by dp_shard, and by tp when TP splits it
    (replicated over dp_replicate; uneven shards are padded, so measured can exceed it)."""
    params = {id(p): p for p in model.parameters()}.values()  # tied parameters once
    predicted = 0
    for p in params:
        split = shape.dp_shard * (shape.tp if is_tp_sharded(p) else 1)
        predicted += p.numel() * p.element_size() // split
    optim_bytes = sum(tensor_bytes(v) for state in optimizer.state.values()
                      for v in state.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
    return {"param_bytes": sum(tensor_bytes(p) for p in params),
            "param_bytes_predicted": predicted, "optim_bytes": optim_bytes,
            "optim_bytes_predicted": 2 * predicted}  # AdamW: exp_avg and exp_avg_sq


def is_tp_sharded(param: torch.Tensor) -> bool:
    """True when the "tp" mesh dimension splits `param` (not merely replicates it)."""
    mesh = getattr(param, "device_mesh", None)
    if mesh is None or "tp" not in (mesh.mesh_dim_names or ()):
        return False
    return param.placements[mesh.mesh_dim_names.index("tp")].is_shard()
