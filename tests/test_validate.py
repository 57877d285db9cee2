"""The one number check at the boundaries (learner hyper-parameters, theory inputs, flags)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from iclab.kernels import Kernel
from iclab.learners import FunctionalGD, GPPosterior, GradientDescent, KernelRidge, Ridge
from iclab.validate import check_number


@pytest.mark.parametrize(
    ("value", "bounds", "message"),
    [
        (-1, {"ge": 0.0}, "x must be a finite number >= 0, got -1"),
        (math.inf, {"gt": 0.0}, "x must be a finite number > 0, got inf"),
        (math.nan, {}, "x must be a finite number, got nan"),
        (True, {}, "x must be a finite number, got True"),
        ("3", {}, "x must be a finite number, got '3'"),
        (2.0, {"integer": True, "ge": 1}, "x must be an integer >= 1, got 2.0"),
        (1.0, {"ge": 0.0, "lt": 1.0}, "x must be a finite number >= 0 and < 1, got 1.0"),
    ],
)
def test_bad_numbers_are_named(value, bounds, message):
    with pytest.raises(ValueError) as err:
        check_number("x", value, **bounds)
    assert str(err.value) == message


def test_good_numbers_come_back_typed():
    assert check_number("x", np.int64(3), ge=1, integer=True) == 3
    assert isinstance(check_number("x", np.float32(0.5), gt=0), float)
    assert check_number("x", 0, ge=0.0) == 0.0


def test_learners_refuse_non_finite_hyper_parameters():
    for make in (lambda: Ridge(math.inf), lambda: GradientDescent(1, math.inf), lambda: GradientDescent(1.5, 0.1)):
        with pytest.raises(ValueError, match="must be"):
            make()


def test_kernel_learners_take_the_kernel_by_name():
    xs, ys, xq = (
        torch.randn(4, 6, 3, dtype=torch.float64),
        torch.randn(4, 6, dtype=torch.float64),
        torch.randn(4, 2, 3, dtype=torch.float64),
    )
    for by_name, by_kernel in (
        (FunctionalGD("relu", 3, 0.4), FunctionalGD(Kernel("relu"), 3, 0.4)),
        (KernelRidge("exp", 0.1), KernelRidge(Kernel("exp"), 0.1)),
        (GPPosterior("linear", 0.1), GPPosterior(Kernel("linear"), 0.1)),
    ):
        assert torch.equal(by_name.predict(xs, ys, xq), by_kernel.predict(xs, ys, xq))
