"""Learners named on the command line: ``name[:key=value[:key=value…]]``, e.g. ``gd:steps=2:lr=0.5``.

:data:`LEARNER_SPECS` is the one table of spec names, their keys and builders (the CLI's help, the docs and
the conformance tests read it). Defaults that depend on the task come from it: ``pgd`` preconditions with
Λ⁻¹, ``ridge`` and ``kernel_ridge`` take α = σ² (the Bayes choice for w ~ N(0, I); 1e-3 for a noiseless
task), ``fgd`` and ``kernel_ridge`` use the task's kernel (or the one named by ``kernel=linear|relu|exp``),
``gp_posterior`` the task's kernel and noise; ``newton`` takes 10 Newton–Schulz steps; ``lasso`` α = 0.01
(Garg et al.'s best on sparse linear regression); ``net`` a width-100 ReLU network fitted by 1000 Adam
steps (lr 0.005); ``tree`` a greedy CART tree (``max_depth=0``: unlimited); ``boosted_trees`` 100 trees of
depth 6, learning rate 0.3 (XGBoost's defaults; scikit-learn, the ``iclab[baselines]`` extra). One-step ``gd`` and
``pgd`` without ``lr`` take ``default_lr``, which the caller derives (the CLI: the optimal isotropic step
n/(n + d + 1 + σ²) from :mod:`iclab.theory`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from iclab.errors import UserError
from iclab.kernels import Kernel
from iclab.learners.base import Learner
from iclab.learners.fitted import FittedNet, boosted_trees, greedy_tree
from iclab.learners.kernel import FunctionalGD, GPPosterior, KernelRidge
from iclab.learners.lasso import Lasso
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

if TYPE_CHECKING:
    from iclab.tasks import Sampler


class LearnerSpecError(UserError):
    """A learner spec that names an unknown learner or hyper-parameter, or a bad value."""


@dataclass(frozen=True)
class SpecContext:
    """What a spec's builder may use: the spec text (for messages), its key=value strings, the task, and the
    caller's default one-step learning rate."""

    spec: str
    values: dict[str, str]
    task: Sampler
    default_lr: float | None

    def number(self, key: str, default: str, kind: type = float) -> float | int:
        raw = self.values.get(key, default)
        try:
            return kind(raw)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise LearnerSpecError(f"learner {self.spec!r}: {key} must be {what}, got {raw!r}") from None

    def alpha(self) -> float:
        return self.number("alpha", repr(self.task.cfg.noise_std**2 or 1e-3))

    def gd_step(self) -> tuple[int, float]:
        steps = self.number("steps", "1", int)
        if "lr" in self.values:
            return steps, self.number("lr", "")
        if steps != 1 or self.default_lr is None:
            raise LearnerSpecError(f"learner {self.spec!r}: give lr=… (there is a default only for one step)")
        return steps, self.default_lr

    def kernel(self) -> Kernel:
        """The kernel a spec names, with the task's scale when it is the task's own kernel (default)."""
        own = self.task.kernel or Kernel("linear")
        name = self.values.get("kernel", own.name)
        return Kernel(name, own.scale if name == own.name else 1.0)


def _pgd(c: SpecContext) -> Learner:
    x_cov = c.task.x_covariance()
    if x_cov is None:
        raise LearnerSpecError(f"learner {c.spec!r}: pgd preconditions with the task's fixed x covariance; "
                               f"task.name={c.task.cfg.name} has none")  # fmt: skip
    return PreconditionedGD(*c.gd_step(), torch.linalg.inv(x_cov))


def _gp_posterior(c: SpecContext) -> Learner:
    if c.task.kernel is None:
        raise LearnerSpecError(f"learner {c.spec!r}: gp_posterior needs a task with a kernel, got {c.task.cfg.name}")
    return GPPosterior(c.task.kernel, c.task.cfg.noise_std)


@dataclass(frozen=True)
class LearnerSpec:
    """A spec name, the keys it takes and its builder."""

    name: str
    keys: tuple[str, ...]
    build: Callable[[SpecContext], Learner]


LEARNER_SPECS: dict[str, LearnerSpec] = {
    spec.name: spec
    for spec in [
        LearnerSpec("least_squares", (), lambda c: LeastSquares()),
        LearnerSpec("ols", (), lambda c: LeastSquares()),
        LearnerSpec("ridge", ("alpha",), lambda c: Ridge(c.alpha())),
        LearnerSpec("gd", ("steps", "lr"), lambda c: GradientDescent(*c.gd_step())),
        LearnerSpec("pgd", ("steps", "lr"), _pgd),
        LearnerSpec("newton", ("steps",), lambda c: NewtonSchulz(c.number("steps", "10", int))),
        LearnerSpec("averaging", (), lambda c: Averaging()),
        LearnerSpec("knn", ("k",), lambda c: KNearest(c.number("k", "3", int))),
        LearnerSpec("zero", (), lambda c: Zero()),
        LearnerSpec("fgd", ("kernel", "steps", "lr"),
                    lambda c: FunctionalGD(c.kernel(), c.number("steps", "1", int), c.number("lr", "1"))),
        LearnerSpec("kernel_ridge", ("kernel", "alpha"), lambda c: KernelRidge(c.kernel(), c.alpha())),
        LearnerSpec("gp_posterior", (), _gp_posterior),
        LearnerSpec("lasso", ("alpha",), lambda c: Lasso(c.number("alpha", "0.01"))),
        LearnerSpec("net", ("hidden", "steps", "lr"),
                    lambda c: FittedNet(c.number("hidden", "100", int), c.number("steps", "1000", int),
                                        c.number("lr", "0.005"))),
        LearnerSpec("tree", ("max_depth",),
                    lambda c: greedy_tree(c.number("max_depth", "0", int) or None)),
        LearnerSpec("boosted_trees", ("trees", "depth", "lr"),
                    lambda c: boosted_trees(c.number("trees", "100", int), c.number("depth", "6", int),
                                            c.number("lr", "0.3"))),
    ]
}  # fmt: skip
SPEC_NAMES = tuple(LEARNER_SPECS)


def parse_learner(spec: str, task: Sampler, default_lr: float | None = None) -> Learner:
    """The learner that ``spec`` names, with task-dependent defaults (see the module docstring)."""
    name, *params = spec.strip().split(":")
    if name not in LEARNER_SPECS:
        raise LearnerSpecError(f"unknown learner {name!r} in {spec!r}; choose from {', '.join(SPEC_NAMES)}")
    entry = LEARNER_SPECS[name]
    values: dict[str, str] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or key not in entry.keys:
            allowed = ", ".join(sorted(entry.keys)) or "none"
            raise LearnerSpecError(f"learner {spec!r}: unknown parameter {item!r}; {name} takes {allowed}")
        values[key] = value
    try:
        return entry.build(SpecContext(spec, values, task, default_lr))
    except LearnerSpecError:
        raise
    except ValueError as err:
        raise LearnerSpecError(f"learner {spec!r}: {err}") from None
