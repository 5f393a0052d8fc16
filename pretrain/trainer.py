"""The training loop: one loop for every backend (the engine hides the differences).

    resume (latest complete checkpoint) -> for each step: lr, micro-batches, engine.train_step,
    metrics, eval, agree on signals, checkpoint -> final checkpoint and status.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import torch

from data_pipeline import build_loader
from pretrain.checkpoint import Checkpointer, seed_rank
from pretrain.config import TrainConfig, save_config, to_dict
from pretrain.dist import DistEnv, all_reduce_max, all_reduce_sum, barrier, init_distributed
from pretrain.engines import build_engine
from pretrain.engines.base import Engine
from pretrain.metrics import MetricsLogger, device_peak_flops
from pretrain.models import build_model, count_params, get_family
from pretrain.mup.singular_values import top_singular_values
from pretrain.run_dir import COMPLETED, FAILED, PREEMPTED, RUNNING, write_json_atomic, write_status
from pretrain.schedule import lr_at

log = logging.getLogger("pretrain")

SAVE_REQUEST_FILE = "SAVE_NOW"  # touch RUN/SAVE_NOW to checkpoint at the next step


class Requests:
    """Stop/save requests from signals, agreed by all ranks at a step boundary.

    SIGUSR1 / SIGTERM: checkpoint and stop (preemption, time limit). SIGUSR2 or the file
    RUN/SAVE_NOW: checkpoint and continue. A flag set on any rank applies to all ranks, at the
    same step, so no rank waits in a collective while another saves.
    """

    def __init__(self, run_dir: Path, env: DistEnv):
        self.run_dir, self.env = run_dir, env
        self.stop = self.save = False
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGUSR2, self._on_save)

    def _on_stop(self, signum, frame) -> None:
        self.stop = True

    def _on_save(self, signum, frame) -> None:
        self.save = True

    def agree(self) -> tuple[bool, bool]:
        request_file = self.run_dir / SAVE_REQUEST_FILE
        if self.env.is_main and request_file.exists():
            request_file.unlink(missing_ok=True)
            self.save = True
        flags = all_reduce_max(torch.tensor([float(self.stop), float(self.save)]))
        self.save = False
        return bool(flags[0]), bool(flags[1])


def evaluate(engine: Engine, loader, max_batches: int) -> dict[str, float]:
    """Loss (and accuracy where the family reports it) over the validation split, all ranks."""
    sums: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        for key, value in engine.eval_step(batch).items():
            sums[key] = sums.get(key, 0) + value.cpu()
    keys = sorted(sums)
    totals = dict(zip(keys, all_reduce_sum(torch.stack([sums[k] for k in keys])).tolist())) if keys else {}
    count = max(totals.get("count", 0.0), 1.0)
    out = {"loss": totals.get("loss_sum", float("nan")) / count}
    if "correct" in totals:
        out["accuracy"] = totals["correct"] / count
    return out


def run_eval_extras(engine: Engine, family, loader, step: int, run_dir: Path, env: DistEnv, logger: MetricsLogger) -> dict[str, float]:
    """The family's extra evaluation (samples, attention statistics) on the first val batch."""
    if family.eval_extras is None:
        return {}
    batch = engine._to_device(next(iter(loader)))
    engine.model.eval()
    with torch.no_grad(), engine.autocast():
        out = family.eval_extras(engine.model, batch, step, run_dir / "samples" if env.is_main else None)
    scalars = {}
    for key, value in out.items():
        if key.startswith("image/") and isinstance(value, torch.Tensor):
            logger.image(key[len("image/"):], value, step)
        else:
            scalars[key] = float(value)
    return scalars


def _setup_run_dir(cfg: TrainConfig, env: DistEnv, stats: dict) -> Path:
    run_dir = cfg.run_dir
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        write_json_atomic(run_dir / "model_stats.json", stats)
    barrier()
    return run_dir


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) the training described by `cfg`; returns the last metrics.

    An exception marks the run `failed` in status.json, so launchers do not requeue a crash.
    """
    try:
        return _train(cfg)
    except Exception:
        if int(os.environ.get("RANK", 0)) == 0 and cfg.run_dir.exists():
            write_status(cfg.run_dir, state=FAILED)
        raise


def _train(cfg: TrainConfig) -> dict:
    env = init_distributed(cfg.run.device, need_group=cfg.parallel.backend != "single")
    logging.basicConfig(level=logging.INFO if env.is_main else logging.WARNING, format="[pretrain] %(message)s")
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    family = get_family(cfg.model.family)
    model = build_model(cfg.model)
    kinds = model.param_kinds()  # canonical names -> muP role, taken before any wrapping
    stats = {
        "params": count_params(model),
        "params_non_embedding": count_params(model, exclude_embeddings=True),
        "flops_per_sample": model.flops_per_sample(),
        "tokens_per_sample": family.tokens_per_sample(model),
        "flops_note": " ".join((model.flops_per_sample.__doc__ or "").split()),
    }
    run_dir = _setup_run_dir(cfg, env, stats)
    engine = build_engine(model, family.loss, env, parallel=cfg.parallel, optim=cfg.optim,
                          model_cfg=cfg.model, global_batch_size=cfg.data.global_batch_size)
    train_loader = build_loader(cfg.data, env.rank, env.world_size, "train", cfg.optim.grad_accum)
    val_loader = build_loader(cfg.data, env.rank, env.world_size, "val") if cfg.logging.eval_every_steps else None
    ckpt = Checkpointer(run_dir, env, cfg.checkpoint.keep_last, cfg.checkpoint.async_save)

    step, samples = 0, 0
    resume_from = ckpt.find_resume_point(cfg.checkpoint.resume)
    if resume_from is not None:
        state = ckpt.load(resume_from, engine, cfg.run.seed)
        step, samples = state["step"], state["samples"]
        train_loader.load_state_dict(state["loader"])
        log.info("resumed from %s at step %d", resume_from, step)
    else:
        seed_rank(cfg.run.seed, env.rank, 0)

    restarts = int(os.environ.get("SLURM_RESTART_COUNT", 0))
    if env.is_main:
        write_status(run_dir, state=RUNNING, step=step, max_steps=cfg.schedule.steps, restarts=restarts)
        log.info("model: %s, %.3fM parameters; backend %s on %d process(es)", cfg.model.family,
                 stats["params"] / 1e6, cfg.parallel.backend, env.world_size)
    logger = MetricsLogger(run_dir, env.is_main, cfg.logging.tensorboard, cfg.logging.progress_bar, cfg.schedule.steps, step)
    if step == 0:
        logger.text("config", "```\n" + json.dumps(to_dict(cfg), indent=2) + "\n```")
    requests = Requests(run_dir, env)
    peak = device_peak_flops(env.device, cfg.logging.peak_tflops)
    gbs, accum = cfg.data.global_batch_size, cfg.optim.grad_accum

    def train_state() -> dict:
        return {"step": step, "samples": samples, "loader": train_loader.state_dict(),
                "world_size": env.world_size, "backend": cfg.parallel.backend, "config": to_dict(cfg)}

    data_iter = iter(train_loader)
    last = {"loss": float("nan")}
    window_start, window_steps, last_saved = time.perf_counter(), 0, step if resume_from else -1
    finished = True
    while step < cfg.schedule.steps:
        lr = lr_at(step, cfg.optim.lr, cfg.schedule)
        engine.set_lr(lr)
        try:
            micro_batches = [next(data_iter) for _ in range(accum)]
        except StopIteration:
            log.info("data budget exhausted at step %d", step)
            break
        loss, grad_norm = engine.train_step(micro_batches)
        step, samples, window_steps = step + 1, samples + gbs, window_steps + 1
        last = {"loss": loss}
        logger.progress(step, loss, lr)

        if step % cfg.logging.every_steps == 0 or step == cfg.schedule.steps:
            elapsed = time.perf_counter() - window_start
            sps = window_steps * gbs / elapsed
            record = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "step_time": elapsed / window_steps,
                      "samples_per_s": sps, "tokens_per_s": sps * stats["tokens_per_sample"], "samples": samples,
                      "tokens": samples * stats["tokens_per_sample"], "flops": samples * stats["flops_per_sample"]}
            if hasattr(train_loader, "metrics"):  # e.g. data/bad_samples under on_bad_sample=skip
                record |= train_loader.metrics()
            if peak:
                record["mfu"] = sps * stats["flops_per_sample"] / (peak * env.world_size)
            logger.log(step, "train", record)
            if cfg.model.mup.log_singular_values:  # a collective under FSDP2 / ZeRO-3: every rank calls it
                logger.log(step, "sv", top_singular_values(engine.model, kinds))
            if env.is_main:
                write_status(run_dir, step=step, last_loss=loss)
            window_start, window_steps = time.perf_counter(), 0

        if val_loader is not None and (step % cfg.logging.eval_every_steps == 0 or step == cfg.schedule.steps):
            results = evaluate(engine, val_loader, cfg.logging.eval_batches)
            results |= run_eval_extras(engine, family, val_loader, step, run_dir, env, logger)
            if family.eval_summary is not None:  # e.g. perplexity from the mean loss
                results |= family.eval_summary(results)
            last.update({f"val_{k}": v for k, v in results.items()})
            logger.log(step, "val", {k[4:]: v for k, v in last.items() if k.startswith("val_")} | {"samples": samples})

        ckpt.poll()
        stop, save_now = requests.agree()
        every = cfg.checkpoint.every_steps
        if stop or save_now or (every and step % every == 0):
            ckpt.save(step, engine, train_state())
            last_saved = step
        if stop:
            log.info("stop requested: checkpointed step %d, exiting for requeue", step)
            finished = False
            break

    if finished and cfg.checkpoint.save_at_end and last_saved != step:
        ckpt.save(step, engine, train_state())
    ckpt.close()
    logger.close()
    if env.is_main:
        write_status(run_dir, state=COMPLETED if finished else PREEMPTED, step=step, last_loss=last["loss"])
        if finished:
            summary = ", ".join(f"{k}={v:.4f}" for k, v in last.items())
            log.info("done at step %d: %s", step, summary)
            log.info("TensorBoard logs: %s  (tensorboard --logdir %s)", run_dir / "tb", run_dir / "tb")
            log.info("checkpoints:      %s", run_dir / "checkpoints")
    return {"step": step, **last}
