"""Weights & Biases sink next to TensorBoard: the same scalars, the run config, the eval images.

It never fails a run: wandb missing, a service that cannot be reached (online init falls back
to offline after `logging.wandb.init_timeout_s`, so nothing is lost: `wandb sync RUN/wandb/...`
uploads it later) or any error while logging only prints one warning, and the run continues
without it. The W&B run id is kept in RUN/wandb_run_id, so a resumed (requeued) run appends
to the same W&B run.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

import torch

from pretrain.metrics_config import WandbConfig

log = logging.getLogger("pretrain")
RUN_ID_FILE = "wandb_run_id"


class WandbSink:
    def __init__(self, cfg: WandbConfig, run_dir: Path, config: dict, name: str):
        self.run: Any = None
        try:
            import wandb
        except ImportError:
            log.warning("logging.wandb.project=%s, but wandb is not installed (pip install "
                        "'.[wandb]'): logging without it", cfg.project)
            return
        self.wandb = wandb
        id_file = run_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        init = dict(project=cfg.project, entity=cfg.entity or None, dir=str(run_dir), id=run_id,
                    resume="allow", config=config, name=name)
        modes = [cfg.mode] + (["offline"] if cfg.mode == "online" else [])
        for mode in modes:
            try:
                settings = wandb.Settings(init_timeout=cfg.init_timeout_s, silent=True,
                                          console="off")
                self.run = wandb.init(mode=mode, settings=settings, **init)
                break
            except Exception as e:  # noqa: BLE001 - the service's problem never stops training
                log.warning("wandb init (%s) failed: %s", mode, str(e).splitlines()[0][:300])
                try:
                    wandb.teardown()  # the half-started run holds its id until torn down
                except Exception:  # noqa: BLE001, S110
                    pass
        if self.run is None:
            log.warning("logging to W&B is off for this run")
            return
        id_file.write_text(run_id + "\n")

    def _guard(self, what: str, fn) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            log.warning("wandb %s failed (%s); logging to W&B is off for this run", what, e)
            self.run = None

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        scalars = {f"{split}/{k}": v for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        self._guard("log", lambda: self.run.log(scalars, step=step))

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """A uint8 [3, H, W] image (e.g. a DiT sample grid)."""
        array = image.permute(1, 2, 0).cpu().numpy()
        self._guard("image", lambda: self.run.log({tag: self.wandb.Image(array)}, step=step))

    def close(self) -> None:
        self._guard("finish", lambda: self.run.finish())
        self.run = None
