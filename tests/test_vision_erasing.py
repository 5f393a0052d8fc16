"""Random erasing (timm's RandomErasing semantics) and hue jitter (torchvision's adjust_hue):
the statistics of the erased boxes, the hue rotation against colorsys, and keyed draws."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
from PIL import Image

from data_pipeline.augment import Erasing, adjust_hue, color_jitter, parse_erasing, sample_rng

HEIGHT, WIDTH = 40, 50


def erase_many(erasing: Erasing, draws: int) -> list[tuple[np.ndarray, list]]:
    out = []
    for i in range(draws):
        arr = np.ones((3, HEIGHT, WIDTH), np.float32)
        out.append((arr, erasing(arr, sample_rng(0, 0, i, 7))))
    return out


def test_erased_share_area_and_aspect_stay_in_range():
    scale, ratio, draws = (0.02, 1 / 3), (0.3, 1 / 0.3), 4000
    results = erase_many(Erasing(0.25, scale, ratio, "const", 1), draws)
    erased = [(arr, boxes) for arr, boxes in results if boxes]
    rate = len(erased) / draws
    assert abs(rate - 0.25) < 4 * math.sqrt(0.25 * 0.75 / draws), rate
    areas = []
    for arr, ((left, top, right, bottom),) in erased:
        mask = np.zeros((HEIGHT, WIDTH), bool)
        mask[top:bottom, left:right] = True
        assert (arr[:, mask] == 0).all() and (arr[:, ~mask] == 1).all()  # const: exactly the box
        h, w = bottom - top, right - left
        # each side is the rounded sqrt(area * aspect) / sqrt(area / aspect): within half a pixel
        assert (h + 0.5) * (w + 0.5) >= scale[0] * HEIGHT * WIDTH
        assert (h - 0.5) * (w - 0.5) <= scale[1] * HEIGHT * WIDTH
        assert (h + 0.5) / max(w - 0.5, 1e-9) >= ratio[0]
        assert (h - 0.5) / (w + 0.5) <= ratio[1]
        assert h < HEIGHT and w < WIDTH
        areas.append(h * w / (HEIGHT * WIDTH))
    assert min(areas) < 0.03 and max(areas) > 0.3  # the range is covered


def test_count_splits_the_area_and_modes_fill_as_timm():
    results = erase_many(Erasing(1.0, (0.1, 0.2), (0.5, 2.0), "pixel", 3), 600)
    counts = [len(boxes) for _, boxes in results]
    assert set(counts) == {1, 2, 3}
    noise = []
    for arr, boxes in results:
        for left, top, right, bottom in boxes:  # each box holds 1/count of the drawn area
            assert (bottom - top - 0.5) * (right - left - 0.5) <= 0.2 * HEIGHT * WIDTH / len(boxes)
        noise.append(arr[arr != 1])
    values = np.concatenate(noise)  # pixel mode: per-pixel standard normal
    assert abs(values.mean()) < 0.02 and abs(values.std() - 1) < 0.02
    for arr, boxes in erase_many(Erasing(1.0, mode="rand"), 50):
        left, top, right, bottom = boxes[0]
        patch = arr[:, top:bottom, left:right].reshape(3, -1)
        assert (patch == patch[:, :1]).all()  # rand: one colour per channel in the box


def test_erasing_is_keyed_by_the_sample_and_bad_keys_are_named():
    erasing = Erasing(0.5, count=2)
    a, b = erase_many(erasing, 20), erase_many(erasing, 20)
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(a, b))
    assert parse_erasing(0.0, [0.02, 0.3], [0.3, 3.3], "pixel", 1) is None
    for args, key in [((1.5, [0.02, 0.3], [0.3, 3.3], "pixel", 1), "random_erasing"),
                      ((0.2, [0.3, 0.02], [0.3, 3.3], "pixel", 1), "erase_scale"),
                      ((0.2, [0.02, 0.3], [0.0, 3.3], "pixel", 1), "erase_ratio"),
                      ((0.2, [0.02, 0.3], [0.3, 3.3], "noise", 1), "erase_mode"),
                      ((0.2, [0.02, 0.3], [0.3, 3.3], "pixel", 0), "erase_count")]:
        with pytest.raises(ValueError, match=f"^data.{key}="):
            parse_erasing(*args)


def test_hue_rotation_equals_colorsys():
    primaries = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [90, 90, 90]]], np.uint8)
    rotated = np.asarray(adjust_hue(Image.fromarray(primaries), 1 / 3))
    assert rotated.tolist() == [[[0, 255, 0], [0, 0, 255], [255, 0, 0], [90, 90, 90]]]
    pixels = np.random.default_rng(0).integers(0, 256, (24, 24, 3)).astype(np.uint8)
    image = Image.fromarray(pixels)
    hsv = np.asarray(image.convert("HSV")).astype(int)  # PIL's 8-bit hue, saturation, value
    for factor in (0.1, -0.23, 0.5):
        out = np.asarray(adjust_hue(image, factor)).astype(float)
        steps = int(factor * 255)
        ref = np.array([[colorsys.hsv_to_rgb(((h + steps) % 256) / 255, s / 255, v / 255)
                         for h, s, v in row] for row in hsv]) * 255
        assert np.abs(out - ref).max() <= 0.5  # the same rotation, rounded to 8 bits
        # and close to rotating the exact hue (PIL keeps 8-bit hue and saturation)
        exact = np.array([[colorsys.hsv_to_rgb((colorsys.rgb_to_hsv(*(p / 255))[0]
                                                + steps / 255) % 1,
                                               *colorsys.rgb_to_hsv(*(p / 255))[1:])
                           for p in row] for row in pixels]) * 255
        assert np.abs(out - exact).mean() < 1.5
    gray = Image.fromarray(pixels[..., 0], "L")
    assert adjust_hue(gray, 0.3) is gray


def test_hue_jitter_draws_are_keyed_and_span_the_range():
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    shifts = []
    for i in range(400):
        out = color_jitter(red, 0.0, sample_rng(1, 0, i, 5), hue=0.2)
        assert out.tobytes() == color_jitter(red, 0.0, sample_rng(1, 0, i, 5), hue=0.2).tobytes()
        h = int(np.asarray(out.convert("HSV"))[0, 0, 0])
        shifts.append((h + 128) % 256 - 128)  # red is hue 0: the shift in PIL's steps
    assert min(shifts) >= -51 and max(shifts) <= 51  # int(0.2 * 255)
    assert min(shifts) < -45 and max(shifts) > 45 and abs(np.mean(shifts)) < 4
