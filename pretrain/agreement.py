"""Where the ranks agree: stop/save requests and the divergence guard, read at agreement points.

A steady-state step reads nothing back to the host and runs no blocking collective besides the
model's own. The loop calls `Agreement.due` after each step; at log steps, save steps, every
`checkpoint.agree_every_steps` steps, the last step and while an async save is in flight, one
all-reduce on the compute device carries the stop/save flags and the guard's counters, and one
read brings them to the host. Every rank reads the same values, so every rank stops, saves or
fails at the same step.

The divergence guard sees every step: the engine's `finite` flag (loss and grad norm, both
global values) updates device-side counters with no sync. With `optim.on_nonfinite=skip` the
engine has already skipped the update on device (fused AdamW's found_inf); with `fail` the run
ends at the next agreement point, before anything is saved, naming the first bad step. A save
happens only at an agreement point, after the check, so no checkpoint holds a diverged state.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

import torch

from pretrain.dist import DistEnv, all_reduce_max

SAVE_REQUEST_FILE = "SAVE_NOW"  # touch RUN/SAVE_NOW to checkpoint at the next agreement point


class Diverged(RuntimeError):
    """A non-finite loss or grad norm the policy does not tolerate."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class Requests:
    """Stop/save requests from signals and RUN/SAVE_NOW, raised on any rank.

    SIGUSR1 / SIGTERM: checkpoint and stop (preemption, time limit). SIGUSR2 or the file
    RUN/SAVE_NOW: checkpoint and continue. The handlers only set flags; they take effect at the
    next agreement point, on every rank at once, so no rank waits in a collective while another
    saves.
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

    def local_flags(self) -> tuple[float, float]:
        """(stop, save) on this rank; a save request is consumed by reading it."""
        request_file = self.run_dir / SAVE_REQUEST_FILE
        if self.env.is_main and request_file.exists():
            request_file.unlink(missing_ok=True)
            self.save = True
        flags = (float(self.stop), float(self.save))
        self.save = False
        return flags


class DivergenceGuard:
    """Counts non-finite steps on the device; no host sync until an agreement point reads it."""

    def __init__(self, policy: str, max_consecutive_skips: int, device: torch.device):
        self.policy, self.max_consecutive = policy, max_consecutive_skips
        zero = torch.zeros((), dtype=torch.float64, device=device)
        self.first_bad = zero - 1  # first non-finite step, -1 while none
        self.run = zero.clone()  # current run of consecutive non-finite steps
        self.worst_run = zero.clone()  # longest run so far (read, then reset, at each check)
        self.skipped = zero.clone()  # non-finite steps in total

    def update(self, finite: torch.Tensor, step: int) -> None:
        bad = ~finite
        self.first_bad = torch.where(bad & (self.first_bad < 0), float(step), self.first_bad)
        self.run = torch.where(bad, self.run + 1, 0.0)
        self.worst_run = torch.maximum(self.worst_run, self.run)
        self.skipped = self.skipped + bad

    def state(self) -> torch.Tensor:
        return torch.stack([self.first_bad, self.worst_run, self.skipped])

    def check(self, first_bad: float, worst_run: float, step: int) -> None:
        """Raise Diverged if the policy does not tolerate what the counters show."""
        if first_bad < 0:
            return
        if self.policy == "fail":
            raise Diverged(f"non-finite loss or grad norm at step {int(first_bad)} "
                           "(optim.on_nonfinite=fail): nothing checkpointed after it",
                           int(first_bad))
        if worst_run > self.max_consecutive:
            raise Diverged(f"{int(worst_run)} consecutive non-finite steps by step {step} "
                           f"(optim.max_consecutive_skips={self.max_consecutive})", step)


@dataclass(frozen=True)
class Agreed:
    stop: bool
    save: bool
    skipped_steps: int


class Agreement:
    """Decides the agreement points and runs them (see the module docstring)."""

    def __init__(self, requests: Requests, guard: DivergenceGuard, every_steps: int,
                 device: torch.device):
        self.requests, self.guard = requests, guard
        self.every_steps, self.device = max(every_steps, 1), device

    def due(self, step: int, forced: bool) -> bool:
        return forced or step % self.every_steps == 0

    def agree(self, step: int) -> Agreed:
        """One all-reduce and one host read; raises Diverged (on every rank) per the policy."""
        stop, save = self.requests.local_flags()
        flags = torch.tensor([stop, save], dtype=torch.float64, device=self.device)
        packed = torch.cat([flags, self.guard.state()])
        stop, save, first_bad, worst_run, skipped = all_reduce_max(
            packed, "all_reduce(stop/save agreement)").tolist()
        self.guard.check(first_bad, worst_run, step)
        self.guard.worst_run.zero_()
        return Agreed(stop > 0, save > 0, int(skipped))

    def final_check(self, step: int) -> None:
        """The guard at the end of the loop (a break between agreement points skips none)."""
        first_bad, worst_run, _ = self.guard.state().tolist()
        self.guard.check(first_bad, worst_run, step)
