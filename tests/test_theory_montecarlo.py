"""mc_loss: agrees with iclab.evaluate on the same prompts and with E y² for the zero predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import task_config
from iclab.evaluate import query_loss
from iclab.learners import Averaging, Zero
from iclab.tasks import make_task
from iclab.theory import mc_loss


def test_zero_predictor_loss_is_the_label_variance():
    cfg = task_config("w_diag", "task.noise_std=0.5")
    task = make_task(cfg, seed=0)
    est = mc_loss(Zero(), task, samples=50_000, seed=3)
    exact = float(np.trace(task.x_cov.numpy() @ task.w_cov.numpy())) + 0.25  # E y² = tr(Λ Σ_w) + σ²
    assert abs(est.z_score(exact)) < 4
    assert est.samples == 50_000


def test_one_chunk_equals_query_loss_on_the_same_prompts():
    task = make_task(task_config("many_queries"), seed=0)
    est = mc_loss(Averaging(), task, samples=3000, seed=7, chunk=3000)
    prompts = task.sample(3000, torch.Generator().manual_seed(7), dtype=torch.float64)
    mean, sem = query_loss(Averaging(), prompts)
    assert est.mean == pytest.approx(mean, rel=1e-12)
    assert est.sem == pytest.approx(sem, rel=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"samples": 1}, "samples must be an integer >= 2"), ({"chunk": 0}, "chunk must be an integer >= 1")],
)
def test_validation(kwargs, fragment):
    task = make_task(task_config("isotropic"), seed=0)
    with pytest.raises(ValueError, match=fragment):
        mc_loss(Zero(), task, **kwargs)
    with pytest.raises(ValueError, match="learner must be a Learner"):
        mc_loss(object(), task)
