"""Image augmentation: each transform does what its parameters say, and every draw is a pure
function of (seed, epoch, sample id)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from data_pipeline.augment import (
    center_crop_box,
    color_jitter,
    draft_for,
    parse_policy,
    random_resized_crop_box,
    sample_rng,
)
from data_pipeline.config import IGNORE_INDEX
from data_pipeline.mixup import MixConfig, mix_batch, mix_pair, smoothed_one_hot


def test_random_resized_crop_area_and_ratio_stay_in_range():
    width, height, scale, ratio = 1000, 800, (0.2, 0.6), (0.5, 2.0)
    areas, aspects = [], []
    for i in range(3000):
        left, top, right, bottom = random_resized_crop_box(width, height, scale, ratio,
                                                           sample_rng(0, 0, i, 1))
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        w, h = right - left, bottom - top
        areas.append(w * h / (width * height))
        aspects.append(w / h)
    tol = 2.0 / 400  # rounding each side to whole pixels
    assert scale[0] - tol <= min(areas) and max(areas) <= scale[1] + tol
    assert ratio[0] - 0.02 <= min(aspects) and max(aspects) <= ratio[1] + 0.02
    # the draws cover the ranges (rejected tries make them not quite uniform, as torchvision's)
    assert min(areas) < scale[0] + 0.01 and max(areas) > scale[1] - 0.01
    log_aspect = np.log(aspects)
    assert log_aspect.min() < math.log(0.55) and log_aspect.max() > math.log(1.8)


def test_random_resized_crop_falls_back_to_the_clipped_center():
    # a 10:1 strip can never hold a crop of ratio <= 2 and area >= 90%: center, clipped to ratio 2
    box = random_resized_crop_box(1000, 100, (0.9, 1.0), (0.5, 2.0), sample_rng(0, 0, 0, 1))
    assert box == (400, 0, 600, 100)


def test_eval_center_crop_is_the_centered_share_of_the_short_side():
    assert center_crop_box(200, 100, 0.875) == (56.25, 6.25, 143.75, 93.75)


def _jpeg(width: int, height: int) -> bytes:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    arr = np.concatenate([np.broadcast_to(x, (height, width, 1)),
                          np.broadcast_to(y, (height, width, 1)),
                          np.broadcast_to((x + y) / 2, (height, width, 1))], axis=2)
    out = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(out, format="JPEG", quality=95)
    return out.getvalue()


def test_jpeg_draft_decodes_at_reduced_scale_when_the_crop_allows():
    data = _jpeg(800, 600)
    image = Image.open(io.BytesIO(data))
    box = draft_for(image, (0, 0, 800, 600), 224)
    assert image.size == (400, 300)  # 1/2 scale: 1/4 would leave the crop under 224 px
    assert box == (0, 0, 400, 300)
    fast = np.asarray(image.resize((224, 224), Image.BILINEAR, box=box), np.float32)
    full = np.asarray(Image.open(io.BytesIO(data)).resize((224, 224), Image.BILINEAR), np.float32)
    assert np.abs(fast - full).mean() < 2.0  # the same picture, within JPEG noise
    small = Image.open(io.BytesIO(data))
    assert draft_for(small, (0, 0, 300, 300), 224) == (0, 0, 300, 300)  # crop too small to reduce
    assert small.size == (800, 600)


def test_policies_parse_and_refuse_bad_spellings():
    policy = parse_policy("rand-m7-n3-mstd0.5")
    assert (policy.kind, policy.num_ops, policy.magnitude, policy.magnitude_std) == (
        "rand", 3, 7.0, 0.5)
    assert parse_policy("3aug").kind == "3aug" and parse_policy("") is None
    for bad in ("rand-m11", "rand-x3", "autoaug"):
        with pytest.raises(ValueError, match="data.auto_augment"):
            parse_policy(bad)


@pytest.mark.parametrize("spec", ["rand-m9-n2-mstd0.5", "3aug"])
def test_policy_and_jitter_are_pure_functions_of_the_sample(spec):
    image = Image.open(io.BytesIO(_jpeg(64, 48))).convert("RGB")
    policy = parse_policy(spec)

    def augmented(epoch: int, sample_id: int) -> np.ndarray:
        out = policy(image, sample_rng(5, epoch, sample_id, 4))
        return np.asarray(color_jitter(out, 0.4, sample_rng(5, epoch, sample_id, 5)))

    outs = [augmented(0, i) for i in range(12)]
    assert all(np.array_equal(augmented(0, i), outs[i]) for i in range(12))
    assert len({o.tobytes() for o in outs}) > 6  # different samples, different augmentations
    assert not np.array_equal(augmented(1, 0), outs[0]) or not np.array_equal(
        augmented(1, 1), outs[1])


def _pair(mix: MixConfig, seed: int) -> tuple[np.ndarray, float]:
    images = np.stack([np.ones((1, 16, 20), np.float32), np.zeros((1, 16, 20), np.float32)])
    lam = mix_pair(images, 0, 1, mix, sample_rng(0, 0, seed, 6))
    return images, lam


def test_mixup_weights_follow_the_beta_distribution():
    mix = MixConfig(0.8, 0.0, 1.0, 0.5, 0.0, 10)
    lams = []
    for i in range(2000):
        images, lam = _pair(mix, i)
        assert np.allclose(images[0], lam) and np.allclose(images[1], 1 - lam)
        lams.append(lam)
    assert stats.kstest(lams, stats.beta(0.8, 0.8).cdf).pvalue > 1e-3


def test_cutmix_area_equals_its_lambda():
    mix = MixConfig(0.0, 1.0, 1.0, 0.5, 0.0, 10)
    pasted = 0
    for i in range(500):
        images, lam = _pair(mix, i)
        # row 0 was all ones: the pasted box of row 1's zeros covers exactly 1 - lam of it
        assert images[0].mean() == pytest.approx(lam, abs=1e-6)
        assert images[1].mean() == pytest.approx(1 - lam, abs=1e-6)
        pasted += lam < 1
    assert pasted > 400


def test_label_smoothing_mass_and_mixed_soft_labels():
    eps, classes = 0.1, 5
    labels = np.array([0, 3, 2, IGNORE_INDEX])
    soft = smoothed_one_hot(labels, classes, eps)
    assert np.allclose(soft[:3].sum(1), 1.0) and soft[3].sum() == 0
    assert soft[1, 3] == pytest.approx(1 - eps + eps / classes)
    assert soft[1, 0] == pytest.approx(eps / classes)

    mix = MixConfig(0.8, 0.0, 1.0, 0.5, eps, classes)
    images = np.stack([np.full((1, 4, 4), v, np.float32) for v in (1, 0, 1, 0)])
    labels = np.array([0, 3, 1, 2])
    soft = mix_batch(images, labels, np.arange(10, 14), np.arange(4), np.zeros(4, np.int64), 0,
                     mix)
    assert np.allclose(soft.sum(1), 1.0)
    lam = float(images[0, 0, 0, 0])  # row 0 (ones) mixed with row 1 (zeros)
    assert soft[0, 0] == pytest.approx(lam * (1 - eps) + eps / classes, abs=1e-6)
    assert soft[0, 3] == pytest.approx((1 - lam) * (1 - eps) + eps / classes, abs=1e-6)
    assert soft[1, 3] == pytest.approx(lam * (1 - eps) + eps / classes, abs=1e-6)


def test_mixing_refuses_a_partner_on_another_rank():
    mix = MixConfig(0.8, 0.0, 1.0, 0.5, 0.0, 3)
    images = np.zeros((3, 1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="micro-batch even"):
        mix_batch(images, np.zeros(3, np.int64), np.arange(3), np.arange(3),
                  np.zeros(3, np.int64), 0, mix)


def test_vit_loss_on_smoothed_soft_labels_equals_torch_label_smoothing():
    import torch
    import torch.nn.functional as F

    from pretrain.models.vit import vit_loss

    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 4, 2, IGNORE_INDEX, 1, 3])
    soft = torch.from_numpy(smoothed_one_hot(labels.numpy(), 5, 0.1))
    batch = {"image": logits, "label": labels, "soft_label": soft}
    loss, stats = vit_loss(lambda x: x, batch)
    reference = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, label_smoothing=0.1)
    assert torch.allclose(loss, reference, atol=1e-6) and int(stats["count"]) == 5


def test_augmentation_keys_where_they_would_be_ignored_are_refused():
    from data_pipeline import DataConfig, build_loader

    with pytest.raises(ValueError, match=r"^data.mixup_alpha applies to wds/mds image shards"):
        build_loader(DataConfig(format="memory", name="digits", mixup_alpha=0.8), 0, 1)
