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

Descriptor-aware (tasks with ``task.descriptor=mean|onehot``; :mod:`iclab.learners.descriptor`): ``centred_gd``
is one GD step on the centred inputs, ŷ = x_qᵀ (lr/k) Σ y_i (x_i − μ), with lr by default the step that is
optimal at ``n`` (default task.n; ``n=inf`` gives the n → ∞ step, 1 for Λ = I, where centred GD is the n → ∞
optimum) by the exact loss :func:`iclab.theory.descriptors.centred_gd_step`; ``descriptor_optimum`` is the
exact global minimiser B* of the one-layer LSA loss at ``n`` (default task.n; ``inf`` allowed) from
:func:`iclab.theory.descriptors.task_problem`, predicting ŷ = h_fᵀ B* f_q with f = (x, descriptor).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from iclab.errors import UserError
from iclab.kernels import Kernel
from iclab.learners.base import Learner
from iclab.learners.descriptor import Bilinear, CentredGD
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


def _descriptor_kind(c: SpecContext) -> str:
    """The task's descriptor (mean or onehot); a task without one is refused."""
    kind = getattr(c.task.cfg, "descriptor", "none")
    if kind == "none":
        name = c.spec.split(":")[0]
        raise LearnerSpecError(f"learner {c.spec!r}: {name} reads the prompts' descriptor, and task.descriptor=none "
                               "(set task.descriptor=mean or onehot)")  # fmt: skip
    return kind


def _context_length(c: SpecContext) -> float:
    """The spec's ``n`` (an integer >= 1 or inf; default task.n): the context length a theory default is for."""
    raw = c.values.get("n", str(c.task.n))
    n = math.inf if raw.strip().lower() in ("inf", "infinity") else c.number("n", raw, int)
    if n < 1:
        raise LearnerSpecError(f"learner {c.spec!r}: n must be an integer >= 1 or inf, got {raw!r}")
    return n


def _centred_gd(c: SpecContext) -> Learner:
    from iclab.theory.descriptors import centred_gd_step

    means = c.task.means if _descriptor_kind(c) == "onehot" else None
    n = _context_length(c)
    if "lr" in c.values:
        if "n" in c.values:
            raise LearnerSpecError(f"learner {c.spec!r}: give lr or n (the context length lr is optimal for), not both")
        return CentredGD(c.number("lr", ""), means)
    x_cov = c.task.x_covariance()
    if x_cov is None:
        raise LearnerSpecError(f"learner {c.spec!r}: give lr=… (the default step needs the task's fixed x "
                               "covariance; task.rotation=per_prompt has none)")  # fmt: skip
    cfg = c.task.cfg
    fixed = {"means": c.task.means.numpy()} if c.task.means is not None else {"tau": cfg.x_mean_std}
    lr = centred_gd_step(n, c.task.d, **fixed, noise_std=cfg.noise_std, x_cov=x_cov.numpy(),
                         w_cov=c.task.w_cov.numpy())  # fmt: skip
    return CentredGD(lr, means)


def _descriptor_optimum(c: SpecContext) -> Learner:
    from iclab.limits import check_memory
    from iclab.theory.descriptors import quadratic_form_bytes, task_problem

    _descriptor_kind(c)
    cfg = c.task.cfg
    if cfg.response != "identity":
        raise LearnerSpecError(f"learner {c.spec!r}: the exact theory covers task.response=identity, "
                               f"got {cfg.response}")  # fmt: skip
    n = _context_length(c)
    features = c.task.d + c.task.descriptor_dim
    check_memory(quadratic_form_bytes(features), f"learner {c.spec!r} (the exact loss over B: {features} × {features})",
                 "task.d or task.n_means")  # fmt: skip
    b, loss = task_problem(cfg, c.task.seed, n).optimum()
    return Bilinear(b, f"descriptor_optimum(n={n})", loss)


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
        LearnerSpec("centred_gd", ("lr", "n"), _centred_gd),
        LearnerSpec("descriptor_optimum", ("n",), _descriptor_optimum),
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
