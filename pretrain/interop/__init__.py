"""Weights that leave and enter the ecosystem: a checkpoint <-> a transformers / diffusers /
timm model folder, through one small adapter per (family, format).

    hf_lm.py      lm  -> Llama / Qwen3 / GPTNeoX (pre-norm), Gemma2 / Gemma3 (Peri-LN)
                  ...ForCausalLM; imports GQA folders too                       (--format hf)
    hf_vit.py     vit -> ViTForImageClassification                                  (--format hf)
    diffusers_dit.py  dit -> DiTTransformer2DModel                           (--format diffusers)
    timm_vit.py   vit -> timm's VisionTransformer, create_model("local-dir:...")    (--format timm)
    plan.py       the tensor table both directions read (split, fuse, permute, fold a multiplier)
    folder.py     config.json + sharded safetensors + index, written aside then renamed; reader
    adapters.py   which adapter serves (family, format), config checks on import
    tokenizer.py  the run's tokenizer.json + tokenizer_config.json for an exported LM

Export reads the checkpoint one tensor at a time (any format `ckpt convert` reads) and writes
one output tensor at a time, so memory follows the largest tensor. Neither direction needs
transformers, diffusers or timm installed: config.json is written from the model config, and the
tests load the folders with the real libraries and compare outputs. Import writes a step-0
checkpoint with fresh optimizer state, exactly as `ckpt import` of a .safetensors file does.
"""

from pretrain.interop.adapters import (
    checkpoint_config,
    export_folder,
    folder_format,
    import_folder,
)
from pretrain.interop.plan import ExportRefused

__all__ = ["ExportRefused", "checkpoint_config", "export_folder", "folder_format", "import_folder"]
