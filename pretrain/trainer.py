"""The training loop: one loop for every backend (the engine hides the differences).

    resume (latest complete checkpoint) -> for each step: train_step (pretrain/step.py: lr,
    micro-batches, engine.train_step), metrics, eval, agree on signals, checkpoint -> final
    checkpoint and status.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from data_pipeline import build_loader
from data_pipeline.dataset_meta import token_meta
from pretrain.agreement import Agreement, Diverged, DivergenceGuard, Requests
from pretrain.checkpoint import Checkpointer, SavePolicy, seed_rank
from pretrain.config import TrainConfig, save_config, to_dict
from pretrain.device_defaults import apply_device_flags, describe_device, resolve_auto
from pretrain.dist import DistEnv, barrier, init_distributed, note_step
from pretrain.engines import build_engine
from pretrain.latent_decoder import with_latent_decoder
from pretrain.lm_vocab import bits_per_byte, resolve_vocab
from pretrain.mesh import device_flops, rank_memory
from pretrain.metrics import MetricsLogger, device_peak_flops, matmul_dtype, sync_debug
from pretrain.models import build_model, count_params, get_family
from pretrain.mup.singular_values import top_singular_values
from pretrain.run_dir import (
    COMPLETED,
    FAILED,
    PREEMPTED,
    RUNNING,
    one_line_error,
    write_json_atomic,
    write_status,
)
from pretrain.step import DataExhausted, evaluate, run_eval_extras, train_step

log = logging.getLogger("pretrain")

def _setup_run_dir(cfg: TrainConfig, env: DistEnv, stats: dict) -> Path:
    run_dir = cfg.run_dir
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        write_json_atomic(run_dir / "model_stats.json", stats)
    barrier()
    return run_dir


def _record_rank_memory(run_dir: Path, engine, env: DistEnv, stats: dict) -> None:
    """model_stats.json gains the mesh and every rank's parameter/optimizer bytes (a gather:
    every rank calls this once, after its first step)."""
    mine = {"rank": env.rank, **rank_memory(engine.model, engine.optimizer, engine.layout.shape)}
    ranks = [mine]
    if dist.is_initialized() and env.world_size > 1:
        ranks = [None] * env.world_size
        dist.all_gather_object(ranks, mine)
    if env.is_main:
        stats = stats | {"mesh": engine.layout.shape.as_dict(), "per_rank": ranks}
        write_json_atomic(run_dir / "model_stats.json", stats)


def _restore_data_position(loader, state: dict, env) -> None:
    """Put the loader where the checkpoint left it. A checkpoint converted from another tool's
    (`pretrain ckpt convert`) has no position in this project's sample order: the run resumes
    its model, optimizer and step, and the data order starts again at the beginning (said once;
    refusing would leave a migrating user no way in but losing the optimizer state)."""
    if "loader" in state:
        loader.load_state_dict(state["loader"])
    elif env.is_main:
        log.warning("resuming at step %d from a checkpoint of another tool: it holds no data "
                    "position, so the data order starts again from its beginning", state["step"])


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) the training described by `cfg`; returns the last metrics.

    Any exception that ends the run marks it `failed` in status.json with the error on one line,
    so launchers do not requeue a crash that would only repeat. That includes BaseExceptions
    (torch's CheckpointException is one); KeyboardInterrupt and SystemExit (a signal, an exit)
    are not failures of the run. Whichever rank fails writes it: a rank that waits in a
    collective for the failed one never gets to. The engine is closed on every way out.
    """
    try:
        with contextlib.ExitStack() as closing:
            note_step(None)  # setup is at no step: no stale one from an earlier run
            closing.callback(note_step, None)
            return _train(cfg, closing)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:
        if cfg.run_dir.exists():
            rank = int(os.environ.get("RANK", 0))
            write_status(cfg.run_dir, state=FAILED, error=one_line_error(e), failed_rank=rank)
        raise


def _train(cfg: TrainConfig, closing: contextlib.ExitStack) -> dict:
    env = init_distributed(cfg.run.device, need_group=cfg.parallel.backend != "single",
                           timeout_s=cfg.run.collective_timeout_s)
    cfg = resolve_auto(cfg, describe_device(env.device))  # GPU defaults; saved in config.yaml
    apply_device_flags(cfg.parallel)
    logging.basicConfig(level=logging.INFO if env.is_main else logging.WARNING,
                        format="[pretrain] %(message)s")
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    family = with_latent_decoder(get_family(cfg.model.family), cfg, env.is_main)  # model.dit.vae
    resolve_vocab(cfg.model, cfg.data)  # model.lm.vocab_size from the dataset manifest, or checked
    val_meta = token_meta(cfg.data, "val") if cfg.model.family == "lm" else {}
    model = build_model(cfg.model, meta=True)  # the engine allocates it (sharded, on device)
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
    closing.callback(engine.close)
    # Data-parallel ranks only: the TP ranks of one group train on the same batch.
    dp_rank, dp_size = engine.layout.dp_rank, engine.layout.dp_size
    train_loader = build_loader(cfg.data, dp_rank, dp_size, "train", cfg.optim.grad_accum)
    val_loader = (build_loader(cfg.data, dp_rank, dp_size, "val")
                  if cfg.logging.eval_every_steps else None)
    ckpt = Checkpointer(run_dir, env, cfg.checkpoint.keep_last, cfg.checkpoint.async_save)

    step, samples = 0, 0
    # The newest checkpoint that verifies and loads on every rank (older ones are fallbacks).
    resumed = ckpt.resume(cfg.checkpoint.resume, engine, cfg.run.seed,
                          restore=lambda state: _restore_data_position(train_loader, state, env),
                          fallback=cfg.checkpoint.resume_fallback)
    resume_from = resumed[0] if resumed is not None else None
    if resumed is not None:
        state = resumed[1]
        step = state["step"]
        samples = state.get("samples", step * cfg.data.global_batch_size)  # foreign: no count
        log.info("resumed from %s at step %d", resume_from, step)
    else:
        seed_rank(cfg.run.seed, dp_rank, 0)  # TP ranks draw the same noise (DiT)
    save_policy = SavePolicy(cfg.checkpoint.every_steps, cfg.checkpoint.save_at_end,
                             last_saved=step if resume_from else -1)

    restarts = int(os.environ.get("SLURM_RESTART_COUNT", 0))
    if env.is_main:
        write_status(run_dir, state=RUNNING, step=step, max_steps=cfg.schedule.steps,
                     restarts=restarts)
        log.info("model: %s, %.3fM parameters; backend %s on %d process(es)", cfg.model.family,
                 stats["params"] / 1e6, cfg.parallel.backend, env.world_size)
    logger = MetricsLogger(run_dir, env.is_main, cfg.logging.tensorboard,
                           cfg.logging.progress_bar, cfg.schedule.steps, step,
                           cfg.logging.every_steps, wandb=cfg.logging.wandb,
                           run_config=to_dict(cfg))
    if step == 0:
        logger.text("config", "```\n" + json.dumps(to_dict(cfg), indent=2) + "\n```")
    guard = DivergenceGuard(cfg.optim.on_nonfinite, cfg.optim.max_consecutive_skips, env.device)
    agreement = Agreement(Requests(run_dir, env), guard, cfg.checkpoint.agree_every_steps,
                          env.device)
    peak = device_peak_flops(env.device, cfg.logging.peak_tflops,
                             matmul_dtype(cfg.parallel.mixed_precision))
    gbs, accum = cfg.data.global_batch_size, cfg.optim.grad_accum
    watch_syncs = cfg.logging.sync_debug and env.device.type == "cuda"

    def train_state() -> dict:
        return {"step": step, "samples": samples, "loader": train_loader.state_dict(),
                "world_size": env.world_size, "backend": cfg.parallel.backend,
                "mesh": engine.layout.shape.as_dict(), "config": to_dict(cfg)}

    def agree_or_fail(check, at_step: int):
        try:
            return check(at_step)
        except Diverged as e:  # status names the step; train() marks the run failed
            if env.is_main:
                write_status(run_dir, step=e.step, error=str(e))
            raise

    data_iter = iter(train_loader)
    memory_pending = engine.checkpoint_format == "dcp"  # DeepSpeed partitions its own way
    result = None
    last: dict[str, float] = {}
    window_start, window_steps, window_tokens, window_flops = time.perf_counter(), 0, 0, 0
    finished = True
    while step < cfg.schedule.steps:
        note_step(step + 1)
        sync_debug(watch_syncs)  # a steady-state step: any host sync in it warns
        try:
            result = train_step(engine, data_iter, step, cfg.optim.lr, cfg.schedule, accum)
        except DataExhausted:
            log.info("data budget exhausted at step %d", step)
            break
        step, samples, window_steps = step + 1, samples + gbs, window_steps + 1
        if memory_pending:  # optimizer state exists from the first step on
            memory_pending = False
            _record_rank_memory(run_dir, engine, env, stats)
        guard.update(result.finite, step)
        tokens, flops = map(sum, zip(*(family.cost_of(model, s) for s in result.shapes)))
        window_tokens += tokens * dp_size  # every DP rank trains a batch of the same shape
        window_flops += flops * dp_size  # (its TP ranks share that batch)

        log_due = step % cfg.logging.every_steps == 0 or step == cfg.schedule.steps
        eval_due = val_loader is not None and (step % cfg.logging.eval_every_steps == 0
                                               or step == cfg.schedule.steps)
        forced = (log_due or save_policy.due(step, False, False) or step == cfg.schedule.steps
                  or ckpt.pending is not None)
        if not (eval_due or agreement.due(step, forced)):
            continue
        sync_debug(False)  # reading results back from here on is intended
        if agreement.due(step, forced):
            ckpt.poll()
            agreed = agree_or_fail(agreement.agree, step)  # the same on every rank
            loss, lr = float(result.loss), result.lr
            last["loss"] = loss
            logger.progress(step, loss, lr)
        if log_due:
            elapsed = time.perf_counter() - window_start
            sps = window_steps * gbs / elapsed
            per_sample_tokens = window_tokens / (window_steps * gbs)  # as the batches were shaped
            per_sample_flops = window_flops / (window_steps * gbs)
            record = {"loss": loss, "lr": lr, "grad_norm": float(result.grad_norm),
                      "step_time": elapsed / window_steps, "samples_per_s": sps,
                      "tokens_per_s": window_tokens / elapsed, "samples": samples,
                      "tokens": samples * per_sample_tokens, "flops": samples * per_sample_flops}
            if cfg.optim.on_nonfinite == "skip":
                record["skipped_steps"] = agreed.skipped_steps
            record |= train_loader.metrics()  # data/epoch, data/bad_samples (on_bad_sample=skip)
            record["device_flops_per_s"] = device_flops(window_flops / elapsed,
                                                        engine.layout.shape)
            if peak:
                record["mfu"] = record["device_flops_per_s"] / peak
            logger.log(step, "train", record)
            if cfg.model.mup.log_singular_values:  # a collective under FSDP2 / ZeRO-3: all call it
                logger.log(step, "sv", top_singular_values(engine.model, kinds))
            if env.is_main:
                write_status(run_dir, step=step, last_loss=loss)
            window_start, window_steps, window_tokens, window_flops = time.perf_counter(), 0, 0, 0

        if eval_due:
            with engine.ema_weights():  # optim.ema_decay: evaluate and sample the EMA
                results = evaluate(engine, val_loader, cfg.logging.eval_batches)
                results |= run_eval_extras(engine, family, val_loader, step, run_dir, env,
                                           logger)
            if family.eval_summary is not None:  # e.g. perplexity from the mean loss
                results |= family.eval_summary(results)
            results |= bits_per_byte(results, val_meta)  # LM: comparable across tokenizers
            last.update({f"val_{k}": v for k, v in results.items()})
            val = {k[4:]: v for k, v in last.items() if k.startswith("val_")}
            logger.log(step, "val", val | {"samples": samples})

        if not agreement.due(step, forced):
            continue
        if save_policy.due(step, agreed.stop, agreed.save):
            ckpt.save(step, engine, train_state())
            save_policy.saved(step)
        if agreed.stop:
            log.info("stop requested: checkpointed step %d, exiting for requeue", step)
            finished = False
            break

    sync_debug(False)
    agree_or_fail(agreement.final_check, step)
    last.pop("loss", None)
    last = {"loss": float(result.loss) if result is not None else float("nan")} | last
    if finished and save_policy.due_at_end(step):
        ckpt.save(step, engine, train_state())
    ckpt.close()
    logger.close()
    if env.is_main:
        write_status(run_dir, state=COMPLETED if finished else PREEMPTED, step=step,
                     last_loss=last["loss"])
        if finished:
            summary = ", ".join(f"{k}={v:.4f}" for k, v in last.items())
            log.info("done at step %d: %s", step, summary)
            tb = run_dir / "tb"
            log.info("TensorBoard logs: %s  (tensorboard --logdir %s)", tb, tb)
            log.info("checkpoints:      %s", run_dir / "checkpoints")
    return {"step": step, **last}
