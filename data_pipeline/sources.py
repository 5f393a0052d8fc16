"""Raw inputs turned into samples for the writers: the bundled digits, image folders (one class
per subfolder), NumPy arrays, JSONL text, and synthetic data for tests and benchmarks.

Each source yields (split, sample) pairs; the split of a sample is a fixed function of its index
(the same held-out set as the in-memory digits loader, so metrics are comparable).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image

from data_pipeline.order import held_out
from data_pipeline.text import VOCAB_SIZE, pack_documents
from data_pipeline.writers import EncodedFile

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".ppm", ".gif", ".tif", ".tiff")


def image_samples(images: np.ndarray, labels: np.ndarray, val_fraction: float
                  ) -> Iterator[tuple[str, dict[str, Any]]]:
    is_val = held_out(len(images), val_fraction)
    for i in range(len(images)):
        yield ("val" if is_val[i] else "train"), {"image": images[i], "label": int(labels[i])}


def digits(val_fraction: float = 0.2) -> tuple[Iterator, dict]:
    """scikit-learn's 8x8 digits (1797 samples, bundled) as grayscale PNGs, 0..16 -> 0..255."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)
    meta = {"kind": "images", "name": "digits", "num_classes": 10, "image_shape": [1, 8, 8]}
    return image_samples(images, data.target, val_fraction), meta


def synthetic_images(num: int, size: int = 32, channels: int = 3, classes: int = 10,
                     val_fraction: float = 0.0, seed: int = 0) -> tuple[Iterator, dict]:
    rng = np.random.Generator(np.random.PCG64(seed))
    labels = rng.integers(0, classes, num)
    shape = (num, size, size, channels) if channels > 1 else (num, size, size)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    meta = {"kind": "images", "name": "synthetic", "num_classes": classes,
            "image_shape": [channels, size, size]}
    return image_samples(images, labels, val_fraction), meta


def numpy_arrays(images_path: str, labels_path: str, val_fraction: float) -> tuple[Iterator, dict]:
    """uint8 images [N,H,W] or [N,H,W,C] and integer labels [N] from .npy files (no pickle)."""
    images = np.load(images_path, allow_pickle=False, mmap_mode="r")
    labels = np.load(labels_path, allow_pickle=False)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
        raise ValueError(
            f"{images_path}: need uint8 [N,H,W(,C)] images matching {len(labels)} labels,"
            f" got {images.dtype} {images.shape}"
        )
    c = 1 if images.ndim == 3 else images.shape[3]
    meta = {
        "kind": "images",
        "name": os.path.basename(images_path),
        "num_classes": int(labels.max()) + 1,
        "image_shape": [c, *images.shape[1:3]],
    }
    return image_samples(np.asarray(images), labels, val_fraction), meta


def image_folder(
    root: str, val_fraction: float, size: int = 0, mode: str = "RGB"
) -> tuple[Iterator, dict]:
    """root/<class>/<image>: classes sorted by name -> labels 0..K-1. JPEG files already in
    `mode` are kept as their bytes (no re-encode, no quality loss) unless `size` asks for a
    resize; anything else is decoded, converted and stored as PNG."""
    classes, files = list_folder(root)
    is_val = held_out(len(files), val_fraction)

    def gen() -> Iterator[tuple[str, dict[str, Any]]]:
        for i, (path, label) in enumerate(files):
            yield (
                ("val" if is_val[i] else "train"),
                {"image": folder_image(path, size, mode), "label": label},
            )

    meta = {
        "kind": "images",
        "name": os.path.basename(root.rstrip("/")),
        "classes": classes,
        "num_classes": len(classes),
    }
    return gen(), meta


def list_folder(root: str) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names (sorted subfolders) and (path, label) of every image file, sorted."""
    if not os.path.isdir(root):
        raise ValueError(f"{root}: not a folder")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(f"{root}: no class subfolders")
    files = [
        (os.path.join(root, c, f), label)
        for label, c in enumerate(classes)
        for f in sorted(os.listdir(os.path.join(root, c)))
        if f.lower().endswith(IMAGE_SUFFIXES)
    ]
    if not files:
        raise ValueError(f"{root}: no image files in its class subfolders")
    return classes, files


def folder_image(path: str, size: int, mode: str) -> Image.Image | EncodedFile:
    """One file of an image folder: the file itself when it is a JPEG in `mode` and no resize is
    asked (kept byte for byte), else the decoded, converted (and resized) image."""
    try:
        with Image.open(path) as opened:
            if opened.format == "JPEG" and opened.mode == mode and not size:
                return EncodedFile(path, "jpg")
            image = opened.convert(mode)
    except Exception as e:
        raise ValueError(f"{path}: cannot read image: {e}") from e
    if size:
        image = image.resize((size, size), Image.BILINEAR)
    return image


def _split_docs(docs: Iterator[str], val_fraction: float) -> tuple[list[str], list[str]]:
    docs = list(docs)
    is_val = held_out(len(docs), val_fraction)
    return [d for d, v in zip(docs, is_val) if not v], [d for d, v in zip(docs, is_val) if v]


def packed_text(
    docs: Iterator[str], seq_len: int, val_fraction: float, name: str
) -> tuple[Iterator, dict]:
    """Documents split by document (not by sequence), tokenized to bytes and packed."""
    train, val = _split_docs(docs, val_fraction)

    def gen() -> Iterator[tuple[str, dict[str, Any]]]:
        for split, part in (("train", train), ("val", val)):
            for seq in pack_documents(part, seq_len):
                yield split, seq

    meta = {
        "kind": "tokens",
        "name": name,
        "seq_len": seq_len,
        "tokenizer": "bytes",
        "vocab_size": VOCAB_SIZE,
        "eos_id": 256,
    }
    return gen(), meta


def jsonl_text(
    path: str, seq_len: int, val_fraction: float, field: str = "text"
) -> tuple[Iterator, dict]:
    from data_pipeline.tokenizer import jsonl_documents

    docs = jsonl_documents(path, field)
    return packed_text(docs, seq_len, val_fraction, os.path.basename(path))


def synthetic_text(
    num_docs: int, seq_len: int, val_fraction: float = 0.0, seed: int = 0
) -> tuple[Iterator, dict]:
    rng = np.random.Generator(np.random.PCG64(seed))
    words = ["alpha", "beta", "gamma", "delta", "data", "shard", "token", "loader", "order", "seed"]
    docs = (" ".join(rng.choice(words, int(rng.integers(5, 80)))) for _ in range(num_docs))
    return packed_text(docs, seq_len, val_fraction, "synthetic_text")
