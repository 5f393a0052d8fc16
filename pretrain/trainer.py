"""The training loop: one loop for every backend (the engine hides the differences).

    resume (latest complete checkpoint) -> for each step: train_step (pretrain/step.py: lr,
    micro-batches, engine.train_step), metrics, eval, agree on signals, checkpoint -> final
    checkpoint and status.
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
from data_pipeline.dataset_meta import token_meta
from pretrain.checkpoint import Checkpointer, SavePolicy, seed_rank
from pretrain.config import TrainConfig, save_config, to_dict
from pretrain.dist import DistEnv, all_reduce_max, barrier, init_distributed
from pretrain.engines import build_engine
from pretrain.lm_vocab import bits_per_byte, resolve_vocab
from pretrain.metrics import MetricsLogger, device_peak_flops
from pretrain.models import build_model, count_params, get_family
from pretrain.mup.singular_values import top_singular_values
from pretrain.run_dir import COMPLETED, FAILED, PREEMPTED, RUNNING, write_json_atomic, write_status
from pretrain.step import DataExhausted, evaluate, run_eval_extras, train_step

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
    resolve_vocab(cfg.model, cfg.data)  # model.lm.vocab_size from the dataset manifest, or checked
    val_meta = token_meta(cfg.data, "val") if cfg.model.family == "lm" else {}
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
    save_policy = SavePolicy(cfg.checkpoint.every_steps, cfg.checkpoint.save_at_end,
                             last_saved=step if resume_from else -1)

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
    window_start, window_steps = time.perf_counter(), 0
    finished = True
    while step < cfg.schedule.steps:
        try:
            result = train_step(engine, data_iter, step, cfg.optim.lr, cfg.schedule, accum)
        except DataExhausted:
            log.info("data budget exhausted at step %d", step)
            break
        loss, grad_norm, lr = result.loss, result.grad_norm, result.lr
        step, samples, window_steps = step + 1, samples + gbs, window_steps + 1
        last = {"loss": loss}
        logger.progress(step, loss, lr)

        if step % cfg.logging.every_steps == 0 or step == cfg.schedule.steps:
            elapsed = time.perf_counter() - window_start
            sps = window_steps * gbs / elapsed
            record = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "step_time": elapsed / window_steps,
                      "samples_per_s": sps, "tokens_per_s": sps * stats["tokens_per_sample"], "samples": samples,
                      "tokens": samples * stats["tokens_per_sample"], "flops": samples * stats["flops_per_sample"]}
            record |= train_loader.metrics()  # data/epoch, data/bad_samples (on_bad_sample=skip)
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
            results |= bits_per_byte(results, val_meta)  # LM: comparable across tokenizers
            last.update({f"val_{k}": v for k, v in results.items()})
            logger.log(step, "val", {k[4:]: v for k, v in last.items() if k.startswith("val_")} | {"samples": samples})

        ckpt.poll()
        stop, save_now = requests.agree()
        if save_policy.due(step, stop, save_now):
            ckpt.save(step, engine, train_state())
            save_policy.saved(step)
        if stop:
            log.info("stop requested: checkpointed step %d, exiting for requeue", step)
            finished = False
            break

    if finished and save_policy.due_at_end(step):
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
