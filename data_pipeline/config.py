"""Typed configuration of the data section of a recipe (`data.*`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

IGNORE_INDEX = (
    -100
)  # targets of padding rows and of skipped samples (torch's cross-entropy default)


@dataclass
class DataConfig:
    """Where samples come from and how they are batched.

    `global_batch_size` is the number of samples per optimizer step over all ranks; each rank
    receives `global_batch_size / (world_size * grad_accum)` samples per micro-batch.
    """

    format: str = "memory"  # memory | wds | mds
    name: str = "digits"  # memory: digits | digits_translated | synthetic_images | synthetic_tokens
    train_url: str = ""  # shard dataset directory or fsspec URL (wds / mds)
    val_url: str = ""
    global_batch_size: int = 64
    eval_batch_size: int = 0  # global; 0 = global_batch_size
    # DataLoader worker processes per rank (sharded formats); "auto" = 0 on a CPU, several per
    # GPU (pretrain/device_defaults.py); read through `loader_workers`
    num_workers: int | Literal["auto"] = "auto"
    seed: int = 0
    val_fraction: float = 0.2  # memory datasets: share held out for evaluation
    seq_len: int = 64  # token datasets: tokens per sequence (sharded: taken from the manifest)

    # --- sharded datasets (wds / mds) ---
    mixture: dict[str, float] = field(
        default_factory=dict
    )  # train URL -> weight; overrides train_url
    mixture_block: int = 1024  # positions per block in which the mixture proportions are exact
    storage_options: dict[str, str] = field(default_factory=dict)  # fsspec kwargs (endpoint_url...)
    cache_dir: str = ""  # local cache of remote shards; "" = ~/.cache/pretrain/shards
    cache_limit_mb: float = 0.0  # evict least recently used cached shards beyond this; 0 = no limit
    verify_checksums: str = "always"  # off | download (remote shards) | always (local ones too)
    shuffle: bool = True
    shuffle_window: int = 4  # shards whose samples are shuffled together (locality vs. mixing)
    prefetch_factor: int = 2  # micro-batches each DataLoader worker prepares ahead
    # page-locked batches, so host-to-GPU copies are asynchronous; auto (or true) pins on CUDA
    pin_memory: bool | Literal["auto"] = "auto"
    on_bad_sample: str = "error"  # error | skip (skipped rows become padding, counted in metrics)
    budget_samples: int = 0
    budget_tokens: int = 0  # the same in tokens (token datasets); 0 = endless
    # fields of a sample; "" = found by common names (png/jpg/image, cls/label, tokens)
    image_key: str = ""
    label_key: str = ""
    tokens_key: str = ""
    # raw-text shards (MDS text column, WDS .txt/.json) tokenized on the fly (raw_text.py)
    tokenizer: str = ""  # tokenizer.json (or its directory); "" = shards hold token rows
    text_field: str = "text"  # MDS column / JSON field holding the text
    image_mode: str = ""  # "" keeps the stored mode; L | RGB convert
    image_size: int = 0  # resize to a square of this side; 0 keeps the stored size
    image_mean: list[float] = field(default_factory=lambda: [0.5])
    image_std: list[float] = field(default_factory=lambda: [0.5])
    random_flip: bool = False  # horizontal flip (train), seeded by (seed, epoch, sample id)
    # latent sets (`data build latents`): draw mean + std * noise per (seed, epoch, sample id);
    # false feeds the posterior mean
    latent_sample: bool = True
    # --- image augmentation (data_pipeline/augment.py, mixup.py); draws keyed by sample id ---
    random_resized_crop: bool = False  # train: crop of crop_scale area, crop_ratio aspect -> size
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 4.0 / 3.0])
    eval_crop_fraction: float = 0.0  # eval: center crop of this share of the short side; 0 = off
    auto_augment: str = ""  # "" | 3aug (DeiT III) | rand-m9-n2-mstd0.5 (RandAugment, timm spelling)
    color_jitter: float = 0.0  # brightness/contrast/saturation factor ~ U(1-x, 1+x)
    hue_jitter: float = 0.0  # hue shift ~ U(-x, x) of the colour circle (x <= 0.5), in jitter order
    # timm's RandomErasing after normalisation: probability, box area share, aspect, fill, boxes
    random_erasing: float = 0.0
    erase_scale: list[float] = field(default_factory=lambda: [0.02, 1.0 / 3.0])
    erase_ratio: list[float] = field(default_factory=lambda: [0.3, 1.0 / 0.3])
    erase_mode: str = "pixel"  # pixel (per-pixel normal) | rand (one colour per box) | const (0)
    erase_count: int = 1  # boxes per erased image: uniform in 1..count (timm's re_count)
    jpeg_draft: bool = True  # decode JPEGs at 1/2..1/8 scale when the crop keeps >= image_size px
    # cpu: loader workers decode (PIL); cuda: workers send JPEG bytes + the keyed draws and the
    # batch is decoded on the GPU (nvJPEG) with the ops in torch (device_decode.py)
    decode_device: str = "cpu"
    mixup_alpha: float = 0.0  # Beta(a, a) mixing weight of neighbouring pairs; 0 = off
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0  # share of pairs mixed
    mix_switch_prob: float = 0.5  # with both on: share of mixed pairs that use cutmix
    label_smoothing: float = 0.0  # any of these three adds "soft_label" [B, classes] to batches
    num_classes: int = 0  # classes of the soft labels; 0 = the manifest's num_classes
    packing_boundaries: str = "none"  # none | position_ids | doc_ids (packed token documents)
    # NaViT patch packing of variable-resolution images (see data_pipeline/navit.py)
    patch_pack: bool = False
    patch_size: int = 16
    pack_images: int = 4  # images per packed sequence; the micro-batch (images) must divide by it
    pack_max_patches: int = 256  # sequence length in patches; images shrink together to fit

    def __post_init__(self) -> None:
        positive = (
            "global_batch_size",
            "seq_len",
            "mixture_block",
            "shuffle_window",
            "prefetch_factor",
            "patch_size",
            "pack_images",
            "pack_max_patches",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"data.{name} must be > 0, got {getattr(self, name)}")
        not_negative = (
            "eval_batch_size",
            "cache_limit_mb",
            "budget_samples",
            "budget_tokens",
            "image_size",
        ) + (("num_workers",) if self.num_workers != "auto" else ())
        for name in not_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"data.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        refused = device_decode_refusal(self)
        if refused:
            raise ValueError(refused)
        if not self.image_mean:
            raise ValueError("data.image_mean must have one value, or one per channel")
        if not self.image_std or min(self.image_std) <= 0:
            raise ValueError(
                f"data.image_std must be > 0 (one value, or one per channel), got {self.image_std}"
            )

    @property
    def loader_workers(self) -> int:
        """num_workers, with an unresolved "auto" read as 0 (the CPU default)."""
        return 0 if self.num_workers == "auto" else self.num_workers


def device_decode_refusal(cfg: DataConfig) -> str:
    """Why data.decode_device cannot be honoured with these settings ("" when it can): the GPU
    path ports crop/resize, flip, colour jitter, erasing and mixup/cutmix, not the PIL-only ops,
    and refuses them rather than differ from the CPU path in silence."""
    if cfg.decode_device not in ("cpu", "cuda"):
        return f"data.decode_device={cfg.decode_device!r}: choose cpu or cuda"
    if cfg.decode_device == "cpu":
        return ""
    ported_not = [("auto_augment", "RandAugment/3-Augment are PIL ops"),
                  ("hue_jitter", "the hue shift is PIL's HSV conversion"),
                  ("patch_pack", "NaViT packing resizes each image its own way")]
    for key, why in ported_not:
        if getattr(cfg, key):
            return (f"data.{key}={getattr(cfg, key)!r} has no GPU version ({why}): use"
                    " data.decode_device=cpu")
    if cfg.format not in ("wds", "mds"):
        return f"data.decode_device=cuda decodes JPEG shards (wds, mds), not format={cfg.format}"
    if not cfg.image_size:
        return "data.decode_device=cuda needs data.image_size (one batch shape for the device)"
    if cfg.image_mode not in ("", "L", "RGB"):
        return f"data.decode_device=cuda supports image_mode '', L or RGB, not {cfg.image_mode!r}"
    return ""
