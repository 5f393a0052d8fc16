"""Width variants of a recipe, trained for a few steps through the real engine.

Coordinate checks and LR sweeps train many small models in one process (or one torchrun job):
each variant goes through `build_model` (so through the parametrization) and `build_engine`
(single, DDP or FSDP2 as the recipe says), exactly like `pretrain train`, without run
directories or checkpoints.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from data_pipeline import build_loader
from pretrain.config import TrainConfig
from pretrain.dist import DistEnv, init_distributed
from pretrain.engines import build_engine
from pretrain.engines.base import Engine
from pretrain.models import build_model, get_family
from pretrain.models.parametrization import base_head_dim
from pretrain.step import train_step

PARAMETRIZATIONS = ("sp", "mup", "depth-mup", "completep")
# the depth rule's exponent α of each muP variant: "mup" is the width rules alone
DEPTH_ALPHA = {"mup": 0.0, "depth-mup": 0.5, "completep": 1.0}
# how the heads follow width: "fixed" keeps the recipe's head count (head dim grows), "scale"
# keeps the recipe's head dim (heads grow), as `pretrain scaling plan` and most LM families do
HEAD_RULES = ("fixed", "scale")


def num_heads_at(cfg: TrainConfig, width: int, heads: str = "fixed") -> int:
    """The head count of `cfg` at `width` under the head rule `heads` (see HEAD_RULES); at the
    recipe's own width, under either rule, the recipe's count."""
    if heads not in HEAD_RULES:
        raise ValueError(f"heads {heads!r} is not one of {', '.join(HEAD_RULES)}")
    if heads == "fixed":
        return cfg.model.num_heads
    head_dim = cfg.model.width // cfg.model.num_heads  # the rule `scaling_laws.plan` plans by
    if width % head_dim:
        raise ValueError(f"width {width} is not a multiple of the recipe's head dim {head_dim} "
                         "(heads=scale keeps it at every width)")
    return width // head_dim


def variant(
    cfg: TrainConfig,
    width: int,
    parametrization: str,
    lr: float | None = None,
    depth: int | None = None,
    heads: str = "fixed",
) -> TrainConfig:
    """`cfg` at another width (and depth), in SP, muP, depth-muP or CompleteP, optionally with
    another lr, its head count set by the rule `heads` (`num_heads_at`).

    The muP variants keep the recipe's base_width and base head dim (pinned when heads grow, as
    `scaling_laws.plan.mup_pins` pins it, so the attention scale follows the head dim alone);
    the depth rule's base depth is the
    recipe's model.mup.base_depth, else its depth (so the recipe itself is the base model)."""
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(
            f"parametrization {parametrization!r} is not one of {', '.join(PARAMETRIZATIONS)}"
        )
    out = copy.deepcopy(cfg)
    out.model.width = width
    out.model.num_heads = num_heads_at(cfg, width, heads)
    if heads == "scale":
        out.model.mup.base_head_dim = base_head_dim(cfg.model)
    out.model.depth = cfg.model.depth if depth is None else depth
    out.model.mup.enabled = parametrization != "sp"
    if parametrization in DEPTH_ALPHA:
        out.model.mup.depth_alpha = DEPTH_ALPHA[parametrization]
        out.model.mup.base_depth = cfg.model.mup.base_depth or cfg.model.depth
    if lr is not None:
        out.optim.lr = lr
    if width % out.model.num_heads:
        raise ValueError(f"width {width} is not divisible by model.num_heads={out.model.num_heads}")
    if out.model.depth < 1:
        raise ValueError(f"depth {out.model.depth} must be >= 1")
    return out


def sizes(cfg: TrainConfig, widths: list[int], depths: list[int] | None) -> list[tuple[int, int]]:
    """The (width, depth) points of a sweep: across widths at the recipe's depth, or across
    `depths` at one width (one axis at a time, so every verdict reads one slope)."""
    if not depths:
        return [(w, cfg.model.depth) for w in widths]
    if len(widths) != 1:
        raise ValueError(f"a depth sweep runs at one width, got widths {widths}")
    return [(widths[0], d) for d in depths]


def sweep_axis(rows: list[dict]) -> str:
    """"depth" when the rows' depths differ, else "width" (rows without a depth: width)."""
    return "depth" if len({r.get("depth") for r in rows}) > 1 else "width"


def setup(cfg: TrainConfig) -> DistEnv:
    """Join torchrun's process group (if any) once for all variants."""
    return init_distributed(cfg.run.device, need_group=cfg.parallel.backend != "single")


def build(cfg: TrainConfig, env: DistEnv, seed: int) -> Engine:
    """Model (same seed on every rank) through the parametrization, wrapped by the engine."""
    torch.manual_seed(seed)
    family = get_family(cfg.model.family)
    return build_engine(
        build_model(cfg.model),
        family.loss,
        env,
        parallel=cfg.parallel,
        optim=cfg.optim,
        model_cfg=cfg.model,
        global_batch_size=cfg.data.global_batch_size,
    )


def train_steps(
    cfg: TrainConfig,
    env: DistEnv,
    engine: Engine,
    steps: int,
    after_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """`steps` optimizer steps on the recipe's data and schedule (the trainer's own step
    function); returns the mean loss per step.

    A non-finite loss stops the run early (a diverged LR); the losses so far are returned.
    """
    accum = cfg.optim.grad_accum
    layout = engine.layout  # data-parallel ranks: the TP ranks of one group share a batch
    loader = iter(build_loader(cfg.data, layout.dp_rank, layout.dp_size, "train", accum))
    losses = []
    for step in range(steps):
        loss = float(train_step(engine, loader, step, cfg.optim.lr, cfg.schedule, accum).loss)
        losses.append(loss)
        if after_step is not None:
            after_step(step, loss)
        if not torch.isfinite(torch.tensor(loss)):
            break
    return losses
