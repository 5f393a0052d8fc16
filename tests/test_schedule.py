import math

import pytest

from pretrain.schedule import lr_at
from pretrain.schedule_config import ScheduleConfig


def test_warmup_then_cosine_to_floor():
    cfg = ScheduleConfig(name="cosine", steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, 1.0, cfg) == pytest.approx(0.1)
    assert lr_at(9, 1.0, cfg) == pytest.approx(1.0)
    assert lr_at(10, 1.0, cfg) == pytest.approx(1.0)
    mid = 10 + 99 / 2
    assert lr_at(int(mid), 1.0, cfg) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (int(mid) - 10) / 99))
    )
    assert lr_at(109, 1.0, cfg) == pytest.approx(0.1)


def test_wsd_is_flat_then_decays_linearly():
    cfg = ScheduleConfig(
        name="wsd", steps=100, warmup_steps=0, decay_fraction=0.2, min_lr_ratio=0.0
    )
    assert [lr_at(s, 2.0, cfg) for s in (0, 50, 79)] == [2.0, 2.0, 2.0]
    assert lr_at(80, 2.0, cfg) == pytest.approx(2.0 - 2.0 / 20)
    assert lr_at(99, 2.0, cfg) == pytest.approx(0.0)


def test_constant():
    cfg = ScheduleConfig(name="constant", steps=10, warmup_steps=0)
    assert {lr_at(s, 0.5, cfg) for s in range(10)} == {0.5}
