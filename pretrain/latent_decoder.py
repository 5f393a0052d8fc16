"""The DiT sample grid of a latent set, decoded to pixels through the VAE the set was encoded with
(`model.dit.vae`, the forms `data build latents --vae/--vae-config` take, loaded by the same
`VaeSource`).

The model samples latents as the loader feeds them, (z - shift_factor) * scaling_factor; the
decoder undoes that with the factors of the latent set's manifest, not the VAE's config, so the
grid shows what the training data meant. The VAE's identity (sha256 of its config and weights) is
checked against the manifest's before training starts: latents decoded by another VAE are noise
that looks like a bug in the model. Only rank 0 holds the VAE; it is used only at grid time.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import partial
from typing import Any

import torch

from data_pipeline.dataset_meta import dataset_url, manifest_meta
from data_pipeline.latent_build import VaeSource
from pretrain.models import ModelFamily, with_eval_extras
from pretrain.models.dit import dit_eval_extras

log = logging.getLogger(__name__)

DECODE_CHUNK = 8  # latents per decoder call: SD's VAE needs ~1 GiB of activations per 256 px


class LatentDecoder:
    """Scaled latents [N, C, h, w] -> pixels [N, 3, H, W] in about [-1, 1], without gradients, in
    chunks, on the latents' device, in the VAE's own dtype (autocast off)."""

    def __init__(self, vae: Any, scaling_factor: float, shift_factor: float,
                 chunk: int = DECODE_CHUNK):
        self.vae, self.scale, self.shift, self.chunk = vae, scaling_factor, shift_factor, chunk

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        device = latents.device
        self.vae.to(device)
        dtype = next(self.vae.parameters()).dtype
        out = []
        with torch.autocast(device.type, enabled=False):
            for part in latents.split(self.chunk):
                z = part.to(dtype) / self.scale + self.shift
                out.append(self.vae.decode(z).sample.float())
        return torch.cat(out)


def latent_decoder(model_cfg: Any, data_cfg: Any, is_main: bool) -> LatentDecoder | None:
    """The grid's decoder on rank 0 (None elsewhere, and when no VAE is configured); a bad or
    mismatched model.dit.vae raises one line on every rank, before any step."""
    if model_cfg.family != "dit":
        return None
    d = model_cfg.dit
    meta = manifest_meta(data_cfg, "train")
    url = dataset_url(data_cfg, "train")
    is_latent_set = meta.get("kind") == "latents"
    if not d.vae:
        if is_latent_set and is_main:
            log.info("the sample grid shows latent channels 0-2 of %s (set model.dit.vae to the"
                     " VAE it was encoded with to see images)", url)
        return None
    if not is_latent_set:
        raise ValueError(f"model.dit.vae {d.vae}: the training data {url or data_cfg.format!r}"
                         " is not a latent set (`pretrain data build latents`); there is nothing"
                         " to decode")
    source = VaeSource(d.vae, d.vae_config, "model.dit.vae", "model.dit.vae_config")
    source.check()
    encoded_with = meta.get("vae") if isinstance(meta.get("vae"), dict) else {}
    want, have = str(encoded_with.get("identity", "")), source.identity()
    if have != want:
        raise ValueError(f"model.dit.vae {d.vae} (identity {have[:16]}) is not the VAE that"
                         f" encoded {url} ({encoded_with.get('source', '?')}, identity"
                         f" {want[:16] or 'not recorded'})")
    scale, shift = meta.get("scaling_factor"), meta.get("shift_factor", 0.0)
    if not isinstance(scale, (int, float)) or not scale or not isinstance(shift, (int, float)):
        raise ValueError(f"{url}: manifest scaling_factor {scale!r} / shift_factor {shift!r} are"
                         " not numbers")
    if not is_main:
        return None
    try:
        vae = source.load()
    except ImportError as e:  # no diffusers: bad setup, said in one line like a bad path
        raise ValueError(f"model.dit.vae {d.vae}: {e}") from e
    return LatentDecoder(vae, float(scale), float(shift))


def with_latent_decoder(family: ModelFamily, cfg: Any, is_main: bool) -> ModelFamily:
    """`family` with its sample grid decoded through model.dit.vae where one is configured."""
    decode = latent_decoder(cfg.model, cfg.data, is_main)
    if decode is None:
        return family
    return replace(family, eval_extras=with_eval_extras(
        family.loss, partial(dit_eval_extras, decode=decode)))
