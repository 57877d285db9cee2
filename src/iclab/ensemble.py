"""Batched ensembles (``train.ensemble=E``): E runs of one config that differ only in their seed (and, with
``train.ensemble_lrs``, their learning rate), trained in one process, each gradient step of all of them one
batched call.

Member i is the config with ``seed = seed + i``, ``train.lr = train.ensemble_lrs[i]`` (when given) and
``train.ensemble = 1`` (:func:`member_configs`): the very config that trains it alone. Each member is an ordinary
run (:class:`iclab.train.TrainingRun`) with its own run dir, task, model, AdamW optimiser, generator, held-out
set, metrics rows, checkpoints, summary and loggers; ``iclab train … train.ensemble=E --out DIR`` writes member i
to ``DIR/member-<i>``, a sweep to ``DIR/<run id of the member's config>``. Only the forward and backward passes
are shared: the members' parameters are stacked and ``torch.func.vmap`` runs ``grad(objective)`` of every member
on its own batch at once (:class:`BatchedGradient`); then each member's gradient is clipped by its own norm and
AdamW steps every member with its own state (one ``foreach`` update over all members' tensors per learning
rate). Each member draws its batches from its own generator, so member i's weights and metrics equal those of
the run trained alone to float rounding (tests/test_ensemble.py: to 1e-5).

A member that diverges stops as it would alone (its summary says so, with the advice) and the others go on; a
finished member is skipped and a diverged one reported as it is. Resuming, members whose checkpoints stand at
different steps are stepped in groups of equal step (the ones behind first) until they meet. SIGINT/SIGTERM
checkpoint every member, then stop (TrainingInterrupted). A model family whose forward pass ``vmap`` cannot run
is refused (one line naming train.ensemble) before anything is written.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap
from torch.optim.adamw import adamw
from tqdm import tqdm

from iclab.config import Config, config_to_dict, parse_config
from iclab.errors import UsageError, UserError
from iclab.interrupts import stop_requests
from iclab.limits import _model_keys, check_memory, prompt_bytes, training_memory
from iclab.models import InContextModel, build_model
from iclab.objectives import OBJECTIVES, Objective
from iclab.prompts import Prompts
from iclab.resume import config_differences, prepare_run_dir, refuse_unusable_out, write_checkpoint
from iclab.rundir import (
    CONFIG_FILE,
    SUMMARY_FILE,
    RunDirError,
    is_run_dir,
    locked_run_dir,
    read_config,
    read_summary,
)
from iclab.seeding import make_generator
from iclab.tasks import make_task
from iclab.tracking import check_loggers, close_callbacks
from iclab.train import (
    DTYPES,
    Callback,
    Checkpoints,
    TrainingRun,
    _diverged,
    _finish,
    _start,
    begin_step,
    default_callbacks,
    diverging,
    end_step,
    interrupted,
)

MEMBER_DIR = "member-{index}"  # member i's run dir under ``iclab train --out DIR``

__all__ = ["BatchedGradient", "check_batchable", "member_configs", "member_dirs", "train_ensemble"]


def member_configs(cfg: Config) -> list[Config]:
    """The config of each member of ``cfg``'s ensemble: seed + i, its learning rate, train.ensemble = 1 (a
    config with train.ensemble = 1 is its own only member)."""
    tc = cfg.train
    lrs = tc.ensemble_lrs or (tc.lr,) * tc.ensemble
    members = []
    for index, lr in enumerate(lrs):
        data = config_to_dict(cfg)
        data["seed"] = cfg.seed + index
        data["train"].update(lr=lr, ensemble=1, ensemble_lrs=None)
        members.append(parse_config(data))
    return members


def member_dirs(out: str | Path, count: int) -> list[Path]:
    """``out/member-0`` … ``out/member-<count-1>``: where ``iclab train --out out`` puts an ensemble's members."""
    return [Path(out) / MEMBER_DIR.format(index=index) for index in range(count)]


class _ObjectiveOf(nn.Module):
    """``objective(model, Prompts(**tensors))`` as a module, for ``functional_call``."""

    def __init__(self, model: InContextModel, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, tensors: dict[str, Tensor]) -> Tensor:
        return self.objective(self.model, Prompts(**tensors))


class BatchedGradient:
    """The loss and gradient of several models of one family and shape, each on its own batch, in one call:
    ``vmap(grad_and_value(objective))`` over their stacked parameters (``functional_call`` on ``template``, one
    of them). Buffers equal in every model of ``models`` are shared, the others stacked. ``unreached``: the
    parameters :func:`check_batchable` found without a gradient."""

    def __init__(
        self,
        template: InContextModel,
        objective: Objective,
        models: Sequence[InContextModel],
        unreached: frozenset[str] = frozenset(),
    ) -> None:
        self.module = _ObjectiveOf(template, objective)
        self.unreached = unreached  # parameters the objective does not reach: their gradient stays None, as alone
        self.names = [name for name, _ in template.named_parameters()]
        buffers = [dict(model.named_buffers()) for model in models]
        self.stacked = [name for name in buffers[0] if not all(torch.equal(b[name], buffers[0][name]) for b in buffers)]
        self.shared = {f"model.{name}": value for name, value in buffers[0].items() if name not in self.stacked}
        self._tensors: dict[int, tuple[list[Tensor], list[Tensor]]] = {}

        def loss(params: dict[str, Tensor], buffers: dict[str, Tensor], tensors: dict[str, Tensor]) -> Tensor:
            return functional_call(self.module, ({**params, **buffers, **self.shared},), (tensors,))

        self._call = vmap(grad_and_value(loss))

    def parameters(self, model: InContextModel) -> list[Tensor]:
        """``model``'s parameters in the order of :attr:`names` (looked up once per model)."""
        return self._own(model)[0]

    def _own(self, model: InContextModel) -> tuple[list[Tensor], list[Tensor]]:
        if id(model) not in self._tensors:
            params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
            self._tensors[id(model)] = [params[name] for name in self.names], [buffers[name] for name in self.stacked]
        return self._tensors[id(model)]

    def __call__(
        self, models: Sequence[InContextModel], batches: Sequence[Prompts]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(losses (G,), {parameter name: gradients (G, …)}) of ``models[g]`` on ``batches[g]``."""
        own = [self._own(model) for model in models]
        params = {f"model.{name}": torch.stack([p[0][k].detach() for p in own]) for k, name in enumerate(self.names)}
        buffers = {f"model.{name}": torch.stack([p[1][k] for p in own]) for k, name in enumerate(self.stacked)}
        keys = [key for key, value in vars(batches[0]).items() if value is not None]
        tensors = {key: torch.stack([getattr(batch, key) for batch in batches]) for key in keys}
        with warnings.catch_warnings():  # an op vmap loops over (GPT-2's CPU attention) is still correct
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
            grads, losses = self._call(params, buffers, tensors)
        return losses, {name: grads[f"model.{name}"] for name in self.names}


def check_batchable(cfg: Config, objective: Objective, members: int = 2) -> frozenset[str]:
    """UserError (one line, naming train.ensemble) when the model family of ``cfg`` (a member's config) cannot
    be trained as a batched ensemble of ``members``: ``vmap`` fails on its forward or backward pass (tried on two
    copies and two prompts). Returns the names of the parameters the objective does not reach (no gradient
    alone, so AdamW leaves them alone; ``grad`` under vmap gives them zeros)."""
    task = make_task(cfg.task, cfg.seed)
    model = build_model(cfg.model, task, make_generator(cfg.seed, "init")).to(DTYPES[cfg.train.dtype])
    batch = task.sample(2, make_generator(cfg.seed, "batchable"), dtype=DTYPES[cfg.train.dtype])
    objective(model, batch).backward()
    unreached = frozenset(name for name, param in model.named_parameters() if param.grad is None)
    try:
        BatchedGradient(model, objective, [model, model])([model, model], [batch, batch])
    except Exception as err:  # any failure of vmap on this family's code
        reason = (str(err).splitlines() or [type(err).__name__])[0].split(". ")[0][:200]
        raise UserError(
            f"train.ensemble={members}: model.name={cfg.model.name} cannot be trained as a batched ensemble "
            f"(torch.func.vmap: {reason}); train each seed alone (train.ensemble=1)"
        ) from None
    return unreached


def check_ensemble_memory(cfg: Config, members: int, device: str, objective: Objective) -> None:
    """ResourceError when ``members`` runs of ``cfg`` (one member's config) trained at once need more memory
    than ``device`` has free: each holds what a run alone holds."""
    dtype_size = 8 if cfg.train.dtype == "float64" else 4
    lower = f"train.ensemble, train.batch_size, eval.batch_size, task.n, task.d or {'/'.join(_model_keys(cfg))}"
    floor = members * prompt_bytes(cfg.task, cfg.train.batch_size + cfg.eval.batch_size, dtype_size)
    check_memory(floor, f"the prompts of {members} ensemble members", lower, device)
    needed, phase = training_memory(cfg, objective)
    check_memory(members * needed, f"{members} ensemble members ({phase} at its peak)", lower, device)


def _ended(cfg: Config, out: Path) -> dict | None:
    """The summary of a member found finished (every file current) or diverged with this config; None for one
    to train (or to decide under its lock: another process may be writing it)."""
    try:
        setup = prepare_run_dir(cfg, out)
        return setup.summary if setup.status == "done" else None
    except RunDirError:
        try:
            if (out / SUMMARY_FILE).is_file() and not config_differences(read_config(out), cfg):
                summary = read_summary(out)
                return summary if summary.get("status") == "diverged" else None
        except RunDirError:
            pass
        return None


def train_ensemble(
    cfg: Config,
    out: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] = print,
    *,
    outs: Sequence[str | Path] | None = None,
    objective: Objective | None = None,
    callbacks: Sequence[Callback] | None = None,
    wait: bool = False,
) -> list[dict]:
    """Train every member of ``cfg``'s ensemble (:func:`member_configs`) into ``out/member-<i>`` (or the run
    dirs ``outs``, one per member), resuming, skipping finished members; return each member's summary (status
    finished or diverged), in member order.

    ``objective`` (default ``OBJECTIVES[cfg.train.objective]``) and ``callbacks`` (default: each member's
    :func:`iclab.train.default_callbacks`; a given list is called for every member) are the seams of
    :func:`iclab.train.train`. A member that diverges is reported (its summary, and its advice through ``log``)
    while the others train on. Raises TrainingInterrupted (SIGINT/SIGTERM, every member checkpointed),
    UserError (a model family vmap cannot batch), ResourceError or RunDirError (a member's run dir, as train).
    """
    members = member_configs(cfg)
    if outs is None:
        if out is None:
            raise UsageError("train_ensemble needs out (a folder for the members) or outs (one run dir each)")
        if is_run_dir(Path(out)):
            raise RunDirError(
                f"--out {out} holds a single run ({CONFIG_FILE}); train.ensemble={len(members)} writes its members "
                f"to {Path(out) / MEMBER_DIR.format(index='<i>')}: choose another --out"
            )
        outs = member_dirs(out, len(members))
    outs = [Path(path) for path in outs]
    if len(outs) != len(members):
        raise UsageError(f"train.ensemble={len(members)} members need as many run dirs, got {len(outs)}")
    objective = OBJECTIVES[cfg.train.objective] if objective is None else objective
    check_loggers(cfg)
    for path in outs:
        refuse_unusable_out(path)
    summaries: dict[int, dict] = {}
    for index, (member, path) in enumerate(zip(members, outs, strict=True)):
        ended = _ended(member, path)
        if ended is not None:
            summaries[index] = ended
            log(f"already {'done' if ended.get('status') == 'finished' else 'diverged'}: {path}")
    todo = [index for index in range(len(members)) if index not in summaries]
    if todo:
        unreached = check_batchable(members[todo[0]], objective, len(members))
        check_ensemble_memory(members[todo[0]], len(todo), device, objective)
        with ExitStack() as locks:
            setups = {}
            for index in todo:  # every member's run dir checked (under its lock) before any is written
                locks.enter_context(locked_run_dir(outs[index], wait, log))
                setups[index] = prepare_run_dir(members[index], outs[index])
            runs: dict[int, TrainingRun] = {}
            for index, setup in setups.items():
                if setup.status == "done":
                    summaries[index] = setup.summary
                    log(f"already done: {outs[index]}")
                else:
                    runs[index] = _start(members[index], outs[index], setup, device, None, None, log)
            if runs:
                summaries.update(_train_members(runs, device, progress, log, objective, callbacks, unreached))
    return [summaries[index] for index in range(len(members))]


def _train_members(
    runs: dict[int, TrainingRun],
    device: str,
    progress: bool,
    log: Callable[[str], None],
    objective: Objective,
    callbacks: Sequence[Callback] | None,
    unreached: frozenset[str] = frozenset(),
) -> dict[int, dict]:
    """Train ``runs`` ({member index: run}) to their last step in groups of equal step, then finish each; the
    summaries of the members that finished or diverged. Parameters named in ``unreached`` get no gradient."""
    calls = {index: default_callbacks(run.cfg) if callbacks is None else list(callbacks) for index, run in runs.items()}
    first = next(iter(runs.values()))
    batched = BatchedGradient(first.model, objective, [run.model for run in runs.values()], unreached)
    steps = first.cfg.train.steps
    started = time.time()
    summaries: dict[int, dict] = {}
    bar = tqdm(total=steps * len(runs), initial=sum(run.state.step for run in runs.values()), disable=not progress,
               desc=f"train ×{len(runs)}", mininterval=0.5)  # fmt: skip
    try:
        with stop_requests() as request:
            for run in runs.values():
                run.stop_request = request
            while True:
                active = {index: run for index, run in runs.items() if not run.finished and index not in summaries}
                if not active:
                    break
                step = min(run.state.step for run in active.values())
                group = {index: run for index, run in active.items() if run.state.step == step}
                losses = _step(group, calls, batched, device, started, log, summaries)
                if losses:
                    bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}", refresh=False)
                bar.update(len(group))
                if request:
                    for index, run in active.items():
                        if index not in summaries and run.checkpoint_step != run.state.step:
                            if any(isinstance(callback, Checkpoints) for callback in calls[index]):
                                write_checkpoint(run.files, run.cfg, run.model, run.optimizer, run.generator,
                                                 run.state)  # fmt: skip
                                run.checkpoint_step = run.state.step
                    bar.close()
                    raise interrupted(request, step + 1)
    finally:
        bar.close()
        for index in runs:
            close_callbacks(calls[index])
    for index, run in runs.items():
        if index not in summaries:
            summaries[index] = _finish(run, device, started)
    return summaries


def _step(
    group: dict[int, TrainingRun],
    calls: dict[int, list[Callback]],
    batched: BatchedGradient,
    device: str,
    started: float,
    log: Callable[[str], None],
    summaries: dict[int, dict],
) -> list[float]:
    """One optimiser step of every run of ``group`` (all at one step): their batches, one batched forward and
    backward, then each member's divergence check, clipping and AdamW step as alone, then its callbacks. A
    member that diverges is recorded in ``summaries`` (and its message logged). The losses of the step."""
    indices, runs = list(group), list(group.values())
    batches = [begin_step(run, device) for run in runs]
    losses, grads = batched([run.model for run in runs], batches)
    norms = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads.values()], dim=1), dim=1
    )  # (G,): each member's gradient norm, as clip_grad_norm_ computes it
    loss_values, grad_norms = torch.stack([losses.detach(), norms]).tolist()
    clip = runs[0].cfg.train.grad_clip
    if clip is not None:
        scale = torch.clamp(clip / (norms + 1e-6), max=1.0)  # clip_grad_norm_'s coefficient
        for g in grads.values():
            g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))
    stepping = []
    for position, (index, run) in enumerate(zip(indices, runs, strict=True)):
        if diverging(run.cfg, loss_values[position], grad_norms[position]):
            error = _diverged(run, batches[position], loss_values[position], grad_norms[position], started)
            summaries[index] = read_summary(run.out)
            log(f"{run.out}: {error}")
            continue
        for name, param in zip(batched.names, batched.parameters(run.model), strict=True):
            param.grad = None if name in batched.unreached else grads[name][position]
        stepping.append(position)
    adamw_steps([runs[position].optimizer for position in stepping])
    for position in stepping:
        end_step(runs[position], loss_values[position], calls[indices[position]])
    return [loss_values[position] for position in stepping]


def adamw_steps(optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """``optimizer.step()`` of every AdamW of ``optimizers`` (one parameter group each, gradients set), as one
    ``foreach`` update over all their tensors per learning rate; an optimiser without state yet (its first
    step) steps by itself, creating it."""
    by_lr: dict[tuple, list[torch.optim.Optimizer]] = {}
    for optimizer in optimizers:
        group = optimizer.param_groups[0]
        if len(optimizer.param_groups) != 1 or any(
            p not in optimizer.state for p in group["params"] if p.grad is not None
        ):
            optimizer.step()
            continue
        key = (group["lr"], group["betas"], group["eps"], group["weight_decay"], group["amsgrad"], group["maximize"])
        by_lr.setdefault(key, []).append(optimizer)
    for (lr, (beta1, beta2), eps, weight_decay, amsgrad, maximize), same in by_lr.items():
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], [], [], []
        for optimizer in same:
            for param in optimizer.param_groups[0]["params"]:
                if param.grad is None:  # as AdamW alone: a parameter without a gradient is left alone
                    continue
                state = optimizer.state[param]
                params.append(param)
                grads.append(param.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
                if amsgrad:
                    max_exp_avg_sqs.append(state["max_exp_avg_sq"])
        with torch.no_grad():
            adamw(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, foreach=True, amsgrad=amsgrad,
                  beta1=beta1, beta2=beta2, lr=lr, weight_decay=weight_decay, eps=eps, maximize=maximize)  # fmt: skip
