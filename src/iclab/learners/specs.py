"""Learners named on the command line: ``name[:key=value[:key=value…]]``, e.g. ``gd:steps=2:lr=0.5``.

Defaults that depend on the task come from it: ``gd``/``pgd`` with one step take the optimal isotropic
step size n/(n + d + 1 + σ²), ``pgd`` preconditions with Λ⁻¹, ``ridge`` takes α = σ² (the Bayes choice
for w ~ N(0, I); 1e-3 for a noiseless task).
"""

from __future__ import annotations

import torch

from iclab.learners.base import Learner
from iclab.learners.reference import (
    Averaging,
    GradientDescent,
    KNearest,
    LeastSquares,
    PreconditionedGD,
    Ridge,
    Zero,
)
from iclab.tasks import Task
from iclab.theory import isotropic_gd_optimum

SPEC_NAMES = ("least_squares", "ols", "ridge", "gd", "pgd", "averaging", "knn", "zero")
SPEC_KEYS = {"ridge": {"alpha"}, "gd": {"steps", "lr"}, "pgd": {"steps", "lr"}, "knn": {"k"}}


class LearnerSpecError(ValueError):
    """A learner spec that names an unknown learner or hyper-parameter, or a bad value."""


def _number(spec: str, key: str, raw: str, kind: type) -> float | int:
    try:
        return kind(raw)
    except ValueError:
        raise LearnerSpecError(
            f"learner {spec!r}: {key} must be {'an integer' if kind is int else 'a number'}, got {raw!r}"
        ) from None


def parse_learner(spec: str, task: Task) -> Learner:
    """The learner that ``spec`` names, with task-dependent defaults (see the module docstring)."""
    name, *params = spec.strip().split(":")
    if name not in SPEC_NAMES:
        raise LearnerSpecError(f"unknown learner {name!r} in {spec!r}; choose from {', '.join(SPEC_NAMES)}")
    values: dict[str, str] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or key not in SPEC_KEYS.get(name, set()):
            allowed = ", ".join(sorted(SPEC_KEYS.get(name, ()))) or "none"
            raise LearnerSpecError(f"learner {spec!r}: unknown parameter {item!r}; {name} takes {allowed}")
        values[key] = value
    noise = task.cfg.noise_std
    try:
        if name in ("least_squares", "ols"):
            return LeastSquares()
        if name == "ridge":
            return Ridge(_number(spec, "alpha", values["alpha"], float) if "alpha" in values else (noise**2 or 1e-3))
        if name in ("gd", "pgd"):
            steps = _number(spec, "steps", values.get("steps", "1"), int)
            if "lr" in values:
                lr = _number(spec, "lr", values["lr"], float)
            elif steps == 1:
                lr = isotropic_gd_optimum(task.d, task.n, noise).lr
            else:
                raise LearnerSpecError(
                    f"learner {spec!r}: give lr=… for {steps} steps (the default step size is the one-step optimum)"
                )
            if name == "gd":
                return GradientDescent(steps, lr)
            return PreconditionedGD(steps, lr, torch.linalg.inv(task.x_cov))
        if name == "knn":
            return KNearest(_number(spec, "k", values.get("k", "3"), int))
    except ValueError as err:
        if isinstance(err, LearnerSpecError):
            raise
        raise LearnerSpecError(f"learner {spec!r}: {err}") from None
    return Averaging() if name == "averaging" else Zero()
