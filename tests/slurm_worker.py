"""A tiny gloo program that keeps the trainer's run-directory contract, to test the launcher alone.

    python -m torch.distributed.run ... tests/slurm_worker.py RUN_DIR STEPS [STEP_SECONDS] [EVERY]

Each step all-reduces a value that depends on the step and rank and adds it to a running total, so
the final total is the same only if a resumed run neither skips nor repeats a step. Like the
trainer it saves every EVERY steps; on SIGUSR1/SIGTERM all ranks agree (an all-reduce of a stop
flag) on the step to stop after, save, write status "preempted" and exit 0; at the end it writes
"completed". Each start appends {restart, start_step, world, nodes} to RUN/starts.jsonl.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from pretrain.run_dir import COMPLETED, PREEMPTED, RUNNING, write_json_atomic, write_status


def main() -> None:
    run_dir = Path(sys.argv[1])
    steps = int(sys.argv[2])
    step_seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    every = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    stop = {"signal": 0}

    def on_signal(signum: int, _frame) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    (run_dir / f"pid_rank{rank}").write_text(str(os.getpid()))  # for tests that kill a rank
    state_path = run_dir / "worker_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"step": 0, "total": 0}

    nodes = [None] * world
    dist.all_gather_object(nodes, os.environ.get("SLURMD_NODENAME", socket.gethostname()))
    if rank == 0:
        with open(run_dir / "starts.jsonl", "a") as f:
            f.write(json.dumps({"restart": restarts, "start_step": state["step"],
                                "world": world, "nodes": nodes}) + "\n")  # fmt: skip
        write_status(run_dir, state=RUNNING, step=state["step"], max_steps=steps,
                     restarts=restarts)  # fmt: skip

    def save() -> None:
        if rank == 0:
            write_json_atomic(state_path, state)
        dist.barrier()

    while state["step"] < steps:
        value = torch.tensor([float(state["step"] * 10 + rank)])
        dist.all_reduce(value)
        state["total"] += value.item()
        state["step"] += 1
        flag = torch.tensor([float(stop["signal"])])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item():
            save()
            if rank == 0:
                write_status(run_dir, state=PREEMPTED, step=state["step"], signal=int(flag.item()))
            dist.destroy_process_group()
            return
        if state["step"] % every == 0:
            save()
        if rank == 0:
            write_status(run_dir, state=RUNNING, step=state["step"], last_loss=state["total"])
        time.sleep(step_seconds)
    save()
    if rank == 0:
        write_status(run_dir, state=COMPLETED, step=state["step"], last_loss=state["total"])
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
