"""Learners named on the command line: ``name[:key=value[:key=value…]]``, e.g. ``gd:steps=2:lr=0.5``.

Defaults that depend on the task come from it: ``gd``/``pgd`` with one step take the optimal isotropic
step size n/(n + d + 1 + σ²), ``pgd`` preconditions with Λ⁻¹, ``ridge`` and ``kernel_ridge`` take α = σ² (the
Bayes choice for w ~ N(0, I); 1e-3 for a noiseless task), ``fgd`` and ``kernel_ridge`` use the GP task's
kernel (or the one named by ``kernel=linear|relu|exp``), ``gp_posterior`` the GP task's kernel and noise;
``newton`` takes 10 Newton–Schulz steps.
"""

from __future__ import annotations

import torch

from iclab.errors import UserError
from iclab.kernels import Kernel
from iclab.learners.base import Learner
from iclab.learners.kernel import FunctionalGD, GPPosterior, KernelRidge
from iclab.learners.reference import (
    Averaging,
    GradientDescent,
    KNearest,
    LeastSquares,
    NewtonSchulz,
    PreconditionedGD,
    Ridge,
    Zero,
)
from iclab.tasks import Task
from iclab.theory import isotropic_gd_optimum

SPEC_KEYS: dict[str, set[str]] = {
    "least_squares": set(),
    "ols": set(),
    "ridge": {"alpha"},
    "gd": {"steps", "lr"},
    "pgd": {"steps", "lr"},
    "newton": {"steps"},
    "averaging": set(),
    "knn": {"k"},
    "zero": set(),
    "fgd": {"kernel", "steps", "lr"},
    "kernel_ridge": {"kernel", "alpha"},
    "gp_posterior": set(),
}
SPEC_NAMES = tuple(SPEC_KEYS)


class LearnerSpecError(UserError):
    """A learner spec that names an unknown learner or hyper-parameter, or a bad value."""


def _number(spec: str, key: str, raw: str, kind: type) -> float | int:
    try:
        return kind(raw)
    except ValueError:
        raise LearnerSpecError(
            f"learner {spec!r}: {key} must be {'an integer' if kind is int else 'a number'}, got {raw!r}"
        ) from None


def _kernel(spec: str, values: dict[str, str], task: Task) -> Kernel:
    """The kernel a spec names, with the task's scale when it is the task's own kernel (default)."""
    own = getattr(task, "kernel", Kernel("linear"))
    name = values.get("kernel", own.name)
    return Kernel(name, own.scale if name == own.name else 1.0)


def _gd_step(spec: str, values: dict[str, str], task: Task) -> tuple[int, float]:
    steps = _number(spec, "steps", values.get("steps", "1"), int)
    if "lr" in values:
        return steps, _number(spec, "lr", values["lr"], float)
    if steps != 1:
        raise LearnerSpecError(f"learner {spec!r}: give lr=… for {steps} steps (the default is the one-step optimum)")
    return steps, isotropic_gd_optimum(task.d, task.n, task.cfg.noise_std).lr


def _build(name: str, spec: str, values: dict[str, str], task: Task) -> Learner:
    noise = task.cfg.noise_std
    alpha = _number(spec, "alpha", values["alpha"], float) if "alpha" in values else (noise**2 or 1e-3)
    if name in ("least_squares", "ols"):
        return LeastSquares()
    if name == "ridge":
        return Ridge(alpha)
    if name == "gd":
        return GradientDescent(*_gd_step(spec, values, task))
    if name == "pgd":
        if not hasattr(task, "x_cov"):
            raise LearnerSpecError(f"learner {spec!r}: pgd preconditions with the task's x covariance; "
                                   f"task.name={task.cfg.name} has none")  # fmt: skip
        return PreconditionedGD(*_gd_step(spec, values, task), torch.linalg.inv(task.x_cov))
    if name == "newton":
        return NewtonSchulz(_number(spec, "steps", values.get("steps", "10"), int))
    if name == "knn":
        return KNearest(_number(spec, "k", values.get("k", "3"), int))
    if name == "fgd":
        steps = _number(spec, "steps", values.get("steps", "1"), int)
        return FunctionalGD(_kernel(spec, values, task), steps, _number(spec, "lr", values.get("lr", "1"), float))
    if name == "kernel_ridge":
        return KernelRidge(_kernel(spec, values, task), alpha)
    if name == "gp_posterior":
        if not hasattr(task, "kernel"):
            raise LearnerSpecError(f"learner {spec!r}: gp_posterior needs task.name=gp, got {task.cfg.name}")
        return GPPosterior(task.kernel, noise)
    return Averaging() if name == "averaging" else Zero()


def parse_learner(spec: str, task: Task) -> Learner:
    """The learner that ``spec`` names, with task-dependent defaults (see the module docstring)."""
    name, *params = spec.strip().split(":")
    if name not in SPEC_KEYS:
        raise LearnerSpecError(f"unknown learner {name!r} in {spec!r}; choose from {', '.join(SPEC_NAMES)}")
    values: dict[str, str] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or key not in SPEC_KEYS[name]:
            allowed = ", ".join(sorted(SPEC_KEYS[name])) or "none"
            raise LearnerSpecError(f"learner {spec!r}: unknown parameter {item!r}; {name} takes {allowed}")
        values[key] = value
    try:
        return _build(name, spec, values, task)
    except LearnerSpecError:
        raise
    except ValueError as err:
        raise LearnerSpecError(f"learner {spec!r}: {err}") from None
