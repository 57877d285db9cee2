"""Which algorithm does each layer run? Compare a layer's read-out with every candidate on the same prompts.

Measures (on the read-outs after every prefix k = k₀..n of the context and at every query of a prompt; k₀ = 1
compares a layer as a learner across sample sizes, k₀ = n only where the model was trained):

- ``difference``: ‖ŷ_layer − ŷ_alg‖² / ‖ŷ_layer‖², summed over prompts, prefixes and queries;
- ``sime``: Fu et al.'s similarity of errors, the cosine between the two error vectors (ŷ − y_q) of one
  prompt over its prefixes and queries, averaged over prompts (with one query and k₀ = 1 exactly Fu et al.'s
  vector over positions);
- ``sensitivity``: von Oswald et al.'s input sensitivity, the cosine between ∂ŷ/∂x_q of the layer and of the
  algorithm with the full context, averaged over prompts and queries.

Hyper-parameters (step size, ridge α) are fitted per layer and iteration count by the chosen ``metric``
(difference: minimised; sime: maximised), first on a log grid, then, for the best iteration count of each
family, by a bounded Brent search between the grid neighbours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

from iclab.learners import Learner
from iclab.probe.candidates import Family
from iclab.prompts import Prompts

METRICS = ("difference", "sime")


def relative_difference(values: Tensor, reference: Tensor) -> Tensor:
    """‖values − reference‖² / ‖reference‖² over the last three dimensions (B, n, m); leading dimensions of
    either broadcast: (..., B, n, m) → (...,). Non-finite results give inf. The probe's ``difference`` takes
    the layer's read-out as the reference."""
    squares = ((values - reference) ** 2).sum((-3, -2, -1))
    value = squares / (reference**2).sum((-3, -2, -1)).clamp_min(1e-300)
    return torch.nan_to_num(value, nan=math.inf, posinf=math.inf)


def similarity_of_errors(predictions: Tensor, readout: Tensor, yq: Tensor) -> Tensor:
    """Mean over prompts of the cosine between error vectors over prefixes and queries: (..., B, n, m) and
    yq: (B, m) → (...,)."""
    return torch.nan_to_num(error_cosines(predictions, readout, yq).mean(-1), nan=-math.inf)


def error_cosines(predictions: Tensor, readout: Tensor, yq: Tensor) -> Tensor:
    """Each prompt's cosine between the two error vectors over its prefixes and queries, which SimE averages:
    (..., B, n, m) and yq: (B, m) → (..., B); paired tests over prompts take them."""
    mine = predictions - yq.unsqueeze(-2)
    theirs = readout - yq.unsqueeze(-2)
    dot = (mine * theirs).sum((-2, -1))
    return dot / (mine.norm(dim=(-2, -1)) * theirs.norm(dim=(-2, -1))).clamp_min(1e-300)


def cost(metric: str, predictions: Tensor, readout: Tensor, yq: Tensor) -> Tensor:
    """What the fit minimises: the difference, or minus SimE."""
    if metric == "difference":
        return relative_difference(predictions, readout)
    return -similarity_of_errors(predictions, readout, yq)


def input_sensitivity(predict, prompts: Prompts) -> Tensor:
    """∂ŷ_j/∂x_qj for ``predict(xs, ys, xq, descriptor) -> (B, m)`` (queries do not see each other): (B, m, d)."""
    xq = prompts.xq.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = predict(prompts.xs, prompts.ys, xq, prompts.descriptor)
        (grad,) = torch.autograd.grad(out.sum(), xq)
    return grad


def sensitivity_cosine(a: Tensor, b: Tensor) -> float:
    """Mean cosine between two (B, m, d) sensitivities."""
    return float(((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)).mean())


REFINED = 3  # iteration counts of a family refined before its best is chosen


@dataclass
class Match:
    """A candidate (family, iteration count, hyper-parameter) against one layer."""

    layer: int
    family: str
    iterations: int | None
    hyper: str | None
    value: float | None
    difference: float
    sime: float
    sensitivity: float = math.nan

    def label(self) -> str:
        parts = [] if self.iterations is None else [f"k={self.iterations}"]
        if self.hyper is not None:
            parts.append(f"{self.hyper}={self.value:.4g}")
        return f"{self.family}({', '.join(parts)})" if parts else self.family


class Matcher:
    """Candidate paths computed once on ``prompts`` (every grid value, every iteration count of each family:
    its own counts where it has them, else 0..``max_iterations``; the prefixes ``first_prefix``..n) and matched
    against any number of layer read-outs (B, n − first_prefix + 1, m)."""

    def __init__(
        self, families: list[Family], prompts: Prompts, max_iterations: int, metric: str, first_prefix: int = 1
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
        if not 1 <= first_prefix <= prompts.n:
            raise ValueError(f"first_prefix must be in 1..{prompts.n}, got {first_prefix}")
        self.families, self.prompts, self.metric = families, prompts, metric
        self.by_name = {family.name: family for family in families}
        self.max_iterations, self.first_prefix = max_iterations, first_prefix
        self.paths = {family.name: self._grid_paths(family) for family in families}

    def _grid_paths(self, family: Family) -> Tensor:
        """Every grid value's path: (G, counts or 1, B, n − first_prefix + 1, m)."""
        counts = self._counts(family)
        return torch.stack([self._path(family, value, counts) for value in (family.grid or (None,))])

    def _path(self, family: Family, value: float | None, counts: tuple[int, ...]) -> Tensor:
        return family.path(value, counts)[..., self.first_prefix - 1 :, :]

    def _counts(self, family: Family) -> tuple[int, ...]:
        """The iteration counts ``family`` is tried at: its own, else 0..max_iterations."""
        return family.counts if family.counts is not None else tuple(range(self.max_iterations + 1))

    def _iterations(self, family: Family) -> list[int | None]:
        return list(self._counts(family)) if family.iterative else [None]

    def grid_matches(self, layer: int, readout: Tensor) -> list[Match]:
        """For every family and iteration count, the grid value that fits ``readout`` (B, n, m) best."""
        yq = self.prompts.yq
        matches = []
        for family in self.families:
            paths = self.paths[family.name]
            difference = relative_difference(paths, readout)  # (G, K + 1)
            sime = similarity_of_errors(paths, readout, yq)
            chosen = difference if self.metric == "difference" else -sime
            for index, iterations in enumerate(self._iterations(family)):
                best = int(torch.argmin(chosen[:, index]))
                value = family.grid[best] if family.grid else None
                matches.append(Match(layer, family.name, iterations, family.hyper, value,
                                     float(difference[best, index]), float(sime[best, index])))  # fmt: skip
        return matches

    def refine(self, match: Match, readout: Tensor) -> Match:
        """Brent search on log(value) between the grid neighbours of ``match.value``."""
        family = self.by_name[match.family]
        if family.hyper is None or not math.isfinite(match.difference):
            return match
        steps = match.iterations or 0
        grid = np.log(family.grid)
        at = int(np.argmin(np.abs(grid - math.log(match.value))))
        bounds = (grid[max(at - 1, 0)], grid[min(at + 1, len(grid) - 1)])

        def objective(log_value: float) -> float:
            prediction = self._path(family, math.exp(log_value), (steps,))[-1]
            return float(cost(self.metric, prediction, readout, self.prompts.yq))

        result = minimize_scalar(objective, bounds=bounds, method="bounded", options={"xatol": 1e-7})
        if not result.fun < objective(math.log(match.value)):
            return match
        prediction = self._path(family, math.exp(result.x), (steps,))[-1]
        return Match(match.layer, match.family, match.iterations, match.hyper, math.exp(result.x),
                     float(relative_difference(prediction, readout)),
                     float(similarity_of_errors(prediction, readout, self.prompts.yq)))  # fmt: skip

    def predictions(self, match: Match) -> Tensor:
        """The matched candidate's predictions on the probe's prompts: (B, n − first_prefix + 1, m)."""
        family = self.by_name[match.family]
        return self._path(family, match.value, (match.iterations or 0,))[-1]

    def learner(self, match: Match) -> Learner:
        return self.by_name[match.family].learner(match.iterations, match.value)

    def best_per_family(self, matches: list[Match], readout: Tensor) -> list[Match]:
        """The best iteration count of each family, best first by the metric: the ``REFINED`` counts that fit
        best on the grid are each refined and the best of them kept (on the grid alone a count next to the right
        one can win by sitting nearer a grid value: a 2-step GD construction at seed 9 of the newton recipe was
        named 3 steps)."""
        key = (lambda m: m.difference) if self.metric == "difference" else (lambda m: -m.sime)
        by_family: dict[str, list[Match]] = {}
        for match in matches:
            by_family.setdefault(match.family, []).append(match)
        refined = [min((self.refine(m, readout) for m in sorted(group, key=key)[:REFINED]), key=key)
                   for group in by_family.values()]  # fmt: skip
        return sorted(refined, key=key)
