"""Typed model settings (`model.*`): shared block options plus one section per family."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pretrain.models.mup_config import MupConfig


@dataclass
class ViTConfig:
    image_size: int = 8
    patch_size: int = 2
    in_channels: int = 1
    num_classes: int = 10
    pooling: Literal["cls", "mean"] = "cls"

    def __post_init__(self) -> None:
        require_positive("model.vit", self, "image_size", "patch_size", "in_channels",
                         "num_classes")
        if self.image_size % self.patch_size:
            raise ValueError(f"model.vit.image_size={self.image_size} is not divisible by "
                             f"model.vit.patch_size={self.patch_size}")


@dataclass
class DiTConfig:
    """Diffusion transformer (Peebles & Xie 2023) and its training objective / sampler."""

    image_size: int = 8
    patch_size: int = 2
    in_channels: int = 1  # pixels (1 or 3) or precomputed VAE latents (e.g. 4)
    num_classes: int = 10  # class label num_classes is the "null" label for guidance
    class_dropout: float = 0.1  # classifier-free-guidance label dropout during training
    objective: Literal["flow", "ddpm"] = "flow"  # velocity (rectified flow) or noise prediction
    timestep_sampling: Literal["uniform", "logit_normal"] = "uniform"  # flow matching t ~ ...
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0
    ddpm_schedule: Literal["linear", "cosine"] = "linear"
    ddpm_steps: int = 1000  # training timesteps T of the DDPM chain
    # DDPM only: also predict the reverse step's variance (2x output channels), trained by
    # L_simple + 0.001 * L_vlb, used by sampler=ddpm (Improved DDPM; DiT). ddim ignores it
    learn_sigma: bool = False
    sampler: Literal["auto", "euler", "ddim", "ddpm"] = "auto"  # auto: euler (flow), ddim (ddpm)
    sample_steps: int = 50
    guidance_scale: float = 2.0  # classifier-free guidance weight w (1 = conditional only)
    # timestep frequencies 10000^(-i / (128 - shift)): 0 as the original DiT, 1 as diffusers'
    # DiTTransformer2DModel (only then can `ckpt export --format diffusers` express the model)
    time_freq_shift: Literal[0, 1] = 0
    samples_per_class: int = 8  # eval grid: one row per class
    # eval grid of a latent set: decode through the diffusers AutoencoderKL the set was encoded
    # with (`data build latents --vae`: a save_pretrained folder, or a .safetensors file plus
    # vae_config); checked against the manifest's VAE identity. Empty: latent channels 0-2
    vae: str = ""
    vae_config: str = ""

    def __post_init__(self) -> None:
        require_positive("model.dit", self, "image_size", "patch_size", "in_channels",
                         "num_classes", "ddpm_steps", "sample_steps")
        if self.image_size % self.patch_size:
            raise ValueError(f"model.dit.image_size={self.image_size} is not divisible by "
                             f"model.dit.patch_size={self.patch_size}")
        if self.learn_sigma and self.objective != "ddpm":
            raise ValueError(f"model.dit.learn_sigma needs model.dit.objective=ddpm (a learned "
                             f"variance has no meaning for {self.objective!r})")
        if self.learn_sigma and self.sample_steps > self.ddpm_steps:
            raise ValueError(f"model.dit.sample_steps={self.sample_steps} exceeds ddpm_steps="
                             f"{self.ddpm_steps}: the respaced chain would repeat a step")


@dataclass
class LMConfig:
    """Decoder-only language model (causal attention, RoPE, tied or untied readout)."""

    vocab_size: int = 256  # byte-level by default
    seq_len: int = 64  # context length; used for FLOPs and as the generation window
    rope_theta: float = 10000.0
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        require_positive("model.lm", self, "seq_len", "rope_theta")
        if self.vocab_size < 0:
            raise ValueError(f"model.lm.vocab_size must be >= 0 (0: read from the data's "
                             f"manifest), got {self.vocab_size}")


@dataclass
class ModelConfig:
    family: str = "vit"  # a key of pretrain.models.MODEL_REGISTRY
    width: int = 64  # residual stream width d_model
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0  # swiglu uses 2/3 of it per matrix, keeping the parameter count
    mlp: Literal["auto", "gelu", "swiglu"] = "auto"  # auto: swiglu for lm, gelu otherwise
    bias: bool = True  # biases in the blocks' linear layers
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    # eps of every affine norm (blocks, qk_norm, the final norm); DiT's adaLN norms keep 1e-6.
    # 1e-6 is timm's ViT / DeiT value (`ckpt export --format timm` needs it)
    norm_eps: float = 1e-5
    norm_placement: Literal["pre", "peri"] = "pre"  # peri: also normalise each sublayer's output
    qk_norm: bool = False  # normalise queries and keys per head before the dot product
    sigma_reparam: bool = False  # block linears use W' = (gamma / sigma(W)) W (Zhai et al. 2023)
    # σReparam's gamma at init: "sigma" = σ(W₀), so wrapping leaves the initial function (and
    # the init std's scale) unchanged, as the paper's released code; "one": spectral norm 1
    sigma_reparam_gamma_init: Literal["sigma", "one"] = "sigma"
    attn_entropy: bool = False  # log each layer's attention entropy at evaluation
    dropout: float = 0.0
    init_std: float = 0.02
    vit: ViTConfig = field(default_factory=ViTConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    mup: MupConfig = field(default_factory=MupConfig)

    def __post_init__(self) -> None:
        require_positive("model", self, "width", "depth", "num_heads", "mlp_ratio", "norm_eps")
        if self.width % self.num_heads:
            raise ValueError(f"model.width={self.width} is not divisible by "
                             f"model.num_heads={self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.init_std < 0:
            raise ValueError(f"model.init_std must be >= 0, got {self.init_std}")


def require_positive(section: str, values: object, *names: str) -> None:
    """ValueError naming `section.name` for the first of `names` that is not > 0."""
    for name in names:
        value = getattr(values, name)
        if not value > 0:
            raise ValueError(f"{section}.{name} must be > 0, got {value}")
