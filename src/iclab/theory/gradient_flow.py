"""Gradient flow dθ/dt = −∇L(θ) of the exact population loss over sparse one-layer LSA weights θ = (A, v),
and the SGD it approximates: iclab's LSA trained on sampled prompts with a small step (t = lr × steps).

The prediction is ŷ = h_fᵀ B f_q with B = −v A (:mod:`iclab.theory.lsa_weights`), so with G = ∇_B L:
dA/dt = v G, dv/dt = ⟨A, G⟩, and ‖A‖²_F − v² is conserved (balanced stays balanced).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp

from iclab.config import TaskConfig
from iclab.models.lsa import LSA, LSAShape
from iclab.tasks import make_task
from iclab.theory.lsa_weights import effective_bilinear
from iclab.theory.quadratic import QuadraticLoss
from iclab.validate import check_number

FLOW_INITS = ("balanced", "gaussian", "wrong_sign", "zero")


@dataclass(frozen=True)
class FlowResult:
    """A trajectory: times ``t`` (T,), exact ``loss`` (T,), weights ``a`` (T, F, F) and ``v`` (T,)."""

    t: np.ndarray
    loss: np.ndarray
    a: np.ndarray
    v: np.ndarray
    optimal_loss: float

    @property
    def final_gap(self) -> float:
        """L(θ(t_end)) − L*."""
        return float(self.loss[-1] - self.optimal_loss)


def initial_weights(
    features: int, init: str = "balanced", scale: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, float]:
    """(A (F, F), v) as iclab's ``LSA.initialise`` sets them for a sparse one-head LSA (``balanced``:
    A = s ΘΘᵀ/‖ΘΘᵀ‖_F, v = −s; ``gaussian``: all N(0, s²)), or ``wrong_sign`` (balanced A, v = +s: the
    initial predictor points the wrong way) or ``zero`` (A = 0, v = 0, a stationary point)."""
    if init not in FLOW_INITS:
        raise ValueError(f"init must be one of {', '.join(FLOW_INITS)}; got {init!r}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0):
        raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
    if init == "zero":
        return np.zeros((features, features)), 0.0
    model = LSA(LSAShape(d=features, param="sparse"))  # width − 1 = F features in the key-query block
    model.initialise("gaussian" if init == "gaussian" else "balanced", scale, torch.Generator().manual_seed(seed))
    attn = model.blocks[0].attn
    a = attn.kq_block.detach().double()[0].numpy()
    v = float(attn.value.detach()[0])
    return a, (-v if init == "wrong_sign" else v)


def _rhs(problem: QuadraticLoss):
    q, r, f = problem.q, problem.r, problem.features

    def field(_t: float, theta: np.ndarray) -> np.ndarray:
        a, v = theta[:-1], theta[-1]
        g = 2 * (q @ (-v * a) - r)  # ∇_B L at B = −vA
        return np.concatenate([v * g, [a @ g]])

    def jacobian(_t: float, theta: np.ndarray) -> np.ndarray:
        a, v = theta[:-1], theta[-1]
        qa = q @ a
        mixed = -4 * v * qa - 2 * r
        jac = np.empty((f * f + 1, f * f + 1))
        jac[:-1, :-1] = -2 * v * v * q
        jac[:-1, -1] = mixed
        jac[-1, :-1] = mixed
        jac[-1, -1] = -2 * a @ qa
        return jac

    return field, jacobian


def gradient_flow(
    problem: QuadraticLoss,
    a0: np.ndarray,
    v0: float,
    t_max: float = 1e4,
    points: int = 200,
    method: str = "LSODA",
    rtol: float = 1e-10,
    atol: float = 1e-13,
) -> FlowResult:
    """Integrate the flow from (A0 (F, F), v0) to ``t_max`` (stiff-capable solver, analytic Jacobian);
    the trajectory is stored at t = 0 and ``points`` log-spaced times in [t_max·1e-6, t_max]."""
    if method not in ("LSODA", "BDF", "Radau"):
        raise ValueError(f"method must be one of LSODA, BDF, Radau; got {method!r}")
    check_number("t_max", t_max, gt=0.0)
    f = problem.features
    a0 = np.asarray(a0, dtype=np.float64)
    if a0.shape != (f, f):
        raise ValueError(f"a0 must have shape ({f}, {f}), got {a0.shape}")
    field, jacobian = _rhs(problem)
    times = np.concatenate([[0.0], np.geomspace(t_max * 1e-6, t_max, points)])
    sol = solve_ivp(
        field, (0.0, t_max), np.append(a0.ravel(), v0), method=method, t_eval=times, jac=jacobian, rtol=rtol, atol=atol
    )
    if not sol.success:
        raise RuntimeError(f"gradient flow integration failed: {sol.message}")
    a = sol.y[:-1].T.reshape(-1, f, f)
    v = sol.y[-1]
    loss = np.array([problem.loss(-vi * ai) for ai, vi in zip(a, v, strict=True)])
    return FlowResult(t=sol.t, loss=loss, a=a, v=v, optimal_loss=problem.optimum()[1])


@dataclass(frozen=True)
class SGDResult:
    """SGD on sampled prompts: ``t`` = lr × step (T,), the exact population ``loss`` of the iterate and the
    mean ``batch_loss`` of the minibatches since the previous record (T,)."""

    t: np.ndarray
    loss: np.ndarray
    batch_loss: np.ndarray


def sgd_run(
    task: TaskConfig,
    problem: QuadraticLoss,
    a0: np.ndarray,
    v0: float,
    lr: float,
    steps: int,
    batch: int = 1000,
    seed: int = 0,
    record_every: int = 10,
) -> SGDResult:
    """Plain SGD (float64) of iclab's sparse one-layer LSA from (A0, v0) on fresh prompts of ``task``
    (loss mean (ŷ − y_q)², no ½); ``problem`` (the task's exact loss) scores each recorded iterate."""
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if steps < 0 or batch < 1 or record_every < 1:
        raise ValueError(f"need steps >= 0, batch >= 1, record_every >= 1; got {steps}, {batch}, {record_every}")
    sampler = make_task(task, seed)
    model = LSA(LSAShape(d=task.d, descriptor_dim=sampler.descriptor_dim, param="sparse")).double()
    attn = model.blocks[0].attn
    with torch.no_grad():
        attn.kq_block.copy_(torch.from_numpy(np.asarray(a0, dtype=np.float64)).unsqueeze(0))
        attn.value.fill_(v0)
    generator = torch.Generator().manual_seed(seed)
    ts, losses, batch_losses, window = [0.0], [problem.loss(effective_bilinear(model))], [float("nan")], []
    for step in range(1, steps + 1):
        p = sampler.sample(batch, generator, dtype=torch.float64)
        loss = ((model.predict(p.xs, p.ys, p.xq, p.descriptor) - p.yq) ** 2).mean()
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for param in model.parameters():
                param -= lr * param.grad
        window.append(float(loss.detach()))
        if step % record_every == 0 or step == steps:
            ts.append(lr * step)
            losses.append(problem.loss(effective_bilinear(model)))
            batch_losses.append(float(np.mean(window)))
            window = []
    return SGDResult(t=np.array(ts), loss=np.array(losses), batch_loss=np.array(batch_losses))
