"""LR schedules at their key steps."""

import math

import pytest

from trainframe.optim.schedules import (ConstantConfig, CosineConfig, WSDConfig, build_constant, build_cosine,
                                        build_wsd, wsd_phases)


def test_constant_with_warmup():
    f = build_constant(ConstantConfig(warmup_steps=4), 100)
    assert [f(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert build_constant(ConstantConfig(), 10)(0) == 1.0


def test_cosine_key_steps():
    f = build_cosine(CosineConfig(warmup_steps=10, min_lr_ratio=0.1), 110)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert f(110) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)  # past the end it stays at the floor
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("shape,mid", [("linear", 0.5), ("cosine", 0.5), ("sqrt", 1 - math.sqrt(0.5))])
def test_wsd_key_steps(shape, mid):
    cfg = WSDConfig(warmup_fraction=0.1, decay_fraction=0.2, decay_shape=shape, min_lr_ratio=0.0)
    f = build_wsd(cfg, 100)
    assert wsd_phases(cfg, 100) == (10, 80)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert all(f(s) == 1.0 for s in range(10, 80))  # stable
    assert f(89) == pytest.approx(mid)  # 10 of 20 decay steps done
    assert f(99) == pytest.approx(0.0)  # the last step trains at min lr


def test_wsd_min_lr_ratio_floor():
    f = build_wsd(WSDConfig(warmup_fraction=0.0, decay_fraction=0.5, min_lr_ratio=0.1), 10)
    assert f(0) == 1.0 and f(9) == pytest.approx(0.1)


def test_wsd_longer_run_moves_the_decay():
    """A stable-phase step has the same lr under the old and the new length; the decay moves."""
    cfg = WSDConfig(warmup_fraction=0.01, decay_fraction=0.2)
    short, long = build_wsd(cfg, 1000), build_wsd(cfg, 2000)
    assert short(500) == long(500) == 1.0
    assert short(900) < 1.0 and long(900) == 1.0
    assert wsd_phases(cfg, 2000) == (20, 1600)
