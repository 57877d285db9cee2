"""``iclab theory …``: optimum, compare, flow, descriptors, nonlinear. Bad values exit with code 2."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from iclab.errors import UsageError, UserError
from iclab.validate import check_flag, check_number


def _parse_n(text: str) -> float:
    if text.strip().lower() in ("inf", "infinity"):
        return math.inf
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--n must be an integer >= 1 or inf, got {text!r}") from None
    if value < 1:
        raise UsageError(f"--n must be an integer >= 1 or inf, got {text!r}")
    return value


def _parse_list(text: str | None, flag: str, length: int | None = None) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [check_number(flag, float(v), gt=0.0) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated positive numbers, got {text!r}") from None
    if length is not None and len(values) != length:
        raise UsageError(f"{flag} needs {length} values (one per dimension), got {len(values)}")
    return values


def _n_json(n: float) -> float | str:
    return "inf" if n == math.inf else n


PRINTED_MATRIX_SIZE = 12  # a larger Γ* is summarised in the text output (all of it is in --json)


def _matrix_text(matrix: np.ndarray) -> str:
    return "\n".join("  " + " ".join(f"{v:9.5f}" for v in row) for row in matrix)


# What each verb holds at its peak, in float64 d × d matrices (measured: RSS at d = 1000–3000 less start-up).
DENSE_MATRICES = {"optimum": 12, "compare": 12, "descriptors": 36, "nonlinear": 8}


def _check_memory(verb: str, d: int, side: int | None = None) -> None:
    """Refuse (one line, exit 2) a theory verb whose float64 algebra needs more memory than is free, before
    anything is allocated: ``DENSE_MATRICES[verb]`` d × d matrices, or with ``side`` (the descriptor's length)
    the general exact loss over B: (F, F), F = d + side (:func:`~iclab.theory.descriptors.quadratic_form_bytes`)."""
    from iclab.limits import check_memory
    from iclab.theory.descriptors import quadratic_form_bytes

    if side is None:
        needed, lower = DENSE_MATRICES[verb] * d * d * 8, "--d"
    else:
        needed, lower = quadratic_form_bytes(d + side), "task.d (or the descriptor's length)"
    check_memory(needed, f"iclab theory {verb} at d={d}", lower)


def _run(func):
    """Turn the theory functions' ValueErrors into usage errors (exit code 2)."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except ValueError as err:
            if isinstance(err, UserError):
                raise
            raise UsageError(str(err)) from None

    return wrapped


@_run
def cmd_optimum(args: argparse.Namespace) -> int:
    from iclab.theory.lsa import lsa_optimum

    check_flag("--d", args.d, ge=1, integer=True)
    _check_memory("optimum", args.d)
    n = _parse_n(args.n)
    x_diag = _parse_list(args.x_cov_diag, "--x-cov-diag", args.d)
    w_diag = _parse_list(args.w_cov_diag, "--w-cov-diag", args.d)
    x_cov = np.diag(x_diag) if x_diag else np.eye(args.d)
    w_cov = np.diag(w_diag) if w_diag else None
    opt = lsa_optimum(n, x_cov, w_cov, args.noise)
    if args.json:
        payload = {
            "d": args.d,
            "n": _n_json(n),
            "noise_std": args.noise,
            "x_cov_diag": x_diag,
            "w_cov_diag": w_diag,
            "gamma": opt.gamma.tolist(),
            "loss": opt.loss,
            "step_size": opt.step_size,
        }
        print(json.dumps(payload))
        return 0
    print(f"optimal one-layer LSA, d={args.d}, n={n}, noise_std={args.noise}: ŷ = x_qᵀ Γ* (1/n) Σ y_i x_i")
    if args.d <= PRINTED_MATRIX_SIZE:
        print("Γ* = Σ_w Λ M⁻¹ =")
        print(_matrix_text(opt.gamma))
    else:
        diagonal, off = np.diag(opt.gamma), opt.gamma - np.diag(np.diag(opt.gamma))
        print(
            f"Γ* = Σ_w Λ M⁻¹ ({args.d} × {args.d}; --json prints it): diagonal {diagonal.min():.6g} to "
            f"{diagonal.max():.6g}, largest |off-diagonal| {np.abs(off).max():.3g}"
        )
    if opt.step_size is not None:
        print(f"Γ* = η I: one GD step with step size η = {opt.step_size:.6g}")
    print(f"optimal loss L* = {opt.loss:.6g}")
    return 0


@_run
def cmd_compare(args: argparse.Namespace) -> int:
    from iclab.rundir import SUMMARY_FILE, read_json
    from iclab.runs import load_model
    from iclab.theory.compare import compare_with_theory, theory_kind

    model, cfg, step = load_model(Path(args.run_dir))
    if cfg.model.name != "lsa" or model.num_layers != 1 or cfg.task.name != "linear":
        raise UsageError(
            f"compare needs a one-layer LSA run on a linear task, got {cfg.model.name} with {model.num_layers} "
            f"layer(s) on task.name={cfg.task.name}"
        )
    summary = read_json(Path(args.run_dir) / SUMMARY_FILE)
    task = cfg.task
    kind = theory_kind(task)
    if kind == "linear":
        _check_memory("compare", task.d)
    elif kind == "descriptor":
        _check_memory("compare", task.d, task.descriptor_dim)
    comparison = compare_with_theory(model, task, cfg.seed)
    weights, optimum_weights, name = comparison.weights, comparison.optimum, comparison.name
    model_loss, optimal, distance = comparison.model_loss, comparison.optimal_loss, comparison.distance
    trained, sem = summary.get("final_eval_loss"), summary.get("final_eval_sem")
    result = {
        "run_dir": str(args.run_dir),
        "step": step,
        "trained_loss": trained,
        "trained_loss_sem": sem,
        "model_exact_loss": model_loss,
        "optimal_loss": optimal,
        "gap": None if trained is None else trained - optimal,
        "relative_distance": distance,
        "weights": name,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    sem_text = f" ± {sem:.2g} s.e." if sem is not None else ""
    print(f"run {args.run_dir} (step {step}), task d={task.d}, n={task.n}, noise_std={task.noise_std}")
    lines = {
        "trained loss (summary.json)": "n/a" if trained is None else f"{trained:.6g}{sem_text}",
        f"exact loss of the model's {name}": f"{model_loss:.6g}",
        "optimal loss (theory)": f"{optimal:.6g}",
        "gap trained − optimal": "n/a"
        if trained is None
        else f"{result['gap']:+.4g} ({100 * result['gap'] / optimal:+.2f} %)",
        f"‖{name} − {name}*‖_F / ‖{name}*‖_F": f"{distance:.4g}",
    }
    for label, value in lines.items():
        print(f"  {label:<34} {value}")
    print(f"{name} of the model:")
    print(_matrix_text(weights))
    print(f"{name}* (theory):")
    print(_matrix_text(optimum_weights))
    return 0


@_run
def cmd_flow(args: argparse.Namespace) -> int:
    from iclab.config import parse_config
    from iclab.theory.descriptors import task_problem
    from iclab.theory.figures import plot_flow
    from iclab.theory.gradient_flow import gradient_flow, initial_weights, sgd_run

    cfg = parse_config({}, args.overrides)
    n = math.inf if args.n_infinite else cfg.task.n
    if args.n_infinite and args.sgd_steps > 0:
        raise UsageError("--sgd-steps needs a finite n (SGD samples prompts of task.n examples)")
    _check_memory("flow", cfg.task.d, cfg.task.descriptor_dim)
    problem = task_problem(cfg.task, cfg.seed, n=n)
    a0, v0 = initial_weights(problem.features, args.init, args.init_scale, args.seed)
    t_max = args.t_max if args.sgd_steps == 0 else max(args.t_max, args.sgd_lr * args.sgd_steps)
    flow = gradient_flow(problem, a0, v0, t_max=t_max)
    sgd = None
    if args.sgd_steps > 0:
        every = max(1, args.sgd_steps // 100)
        sgd = sgd_run(cfg.task, problem, a0, v0, args.sgd_lr, args.sgd_steps, args.sgd_batch, cfg.seed, every)
    gap = flow.loss - flow.optimal_loss
    reached = {tol: (float(flow.t[np.argmax(gap < tol)]) if np.any(gap < tol) else None) for tol in (1e-3, 1e-6)}
    title = f"d={cfg.task.d}, n={n}, descriptor={cfg.task.descriptor}, tau={cfg.task.x_mean_std}, init={args.init}"
    path = None if args.out is None else plot_flow(flow, Path(args.out), sgd, title, caption_text=_flow_caption(args))
    result = {
        "n": _n_json(n),
        "init": args.init,
        "initial_loss": float(flow.loss[0]),
        "final_loss": float(flow.loss[-1]),
        "optimal_loss": flow.optimal_loss,
        "final_gap": flow.final_gap,
        "t_max": t_max,
        "time_to_1e-3": reached[1e-3],
        "time_to_1e-6": reached[1e-6],
        "sgd_final_loss": None if sgd is None else float(sgd.loss[-1]),
        "figure": None if path is None else str(path),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"gradient flow on the exact loss ({title})")
    print(f"  loss {result['initial_loss']:.6g} → {result['final_loss']:.10g} at t = {t_max:g}")
    print(f"  global minimum {flow.optimal_loss:.10g}; final gap {flow.final_gap:.3g}")
    for tol, t in reached.items():
        print(f"  within {tol:g} of the minimum from t = {t:.4g}" if t is not None else f"  never within {tol:g}")
    if sgd is not None:
        at = float(np.interp(sgd.t[-1], flow.t, flow.loss))
        print(f"  SGD (lr {args.sgd_lr:g}, {args.sgd_steps} steps): exact loss {sgd.loss[-1]:.6g}, flow {at:.6g}")
    print(f"figure: {path}" if path is not None else "figure: none written (--out PNG writes one)")
    return 0


def _flow_caption(args: argparse.Namespace) -> str:
    """What a flow figure shows: its command line."""
    flags = [
        f"--init {args.init}",
        f"--init-scale {args.init_scale:g}",
        f"--seed {args.seed}",
        f"--t-max {args.t_max:g}",
    ]
    if args.n_infinite:
        flags.insert(0, "--n-infinite")
    if args.sgd_steps:
        flags += [f"--sgd-steps {args.sgd_steps}", f"--sgd-lr {args.sgd_lr:g}", f"--sgd-batch {args.sgd_batch}"]
    return "iclab theory flow " + " ".join([*args.overrides, *flags])


def _descriptor_means(args: argparse.Namespace) -> np.ndarray | None:
    """The K fixed means of ``--means K`` as a run with ``seed=--seed task.n_means=K task.x_mean_std=--tau``
    draws them (None: μ ~ N(0, τ² I))."""
    from iclab.config import parse_config
    from iclab.tasks import make_task

    if args.descriptor not in ("mean", "onehot"):
        raise UsageError(f"--descriptor must be mean or onehot, got {args.descriptor!r}")
    check_flag("--means", args.means, ge=0, integer=True)
    if args.descriptor == "onehot" and args.means == 0:
        raise UsageError("--descriptor onehot needs --means K >= 1 (the one-hot index is over K fixed means)")
    if args.means == 0:
        return None
    if not args.tau > 0:
        raise UsageError(f"--tau must be > 0 with --means (the means are drawn from N(0, τ² I)), got {args.tau:g}")
    keys = {"d": args.d, "x_mean_std": args.tau, "n_means": args.means, "descriptor": args.descriptor}
    task = parse_config({}, [f"task.{key}={value}" for key, value in keys.items()]).task
    return make_task(task, args.seed).means.numpy()


def _block_coefficients(b: np.ndarray, d: int, key: np.ndarray) -> dict[str, float]:
    """The least-squares coefficients of B ≈ [[c_xx I, c_xs Kᵀ], [c_sx K, c_ss K Kᵀ]] with K: (k, d) the map
    μ = Kᵀs (the means M for one-hot; for the mean descriptor I, or with fixed means the projector on their
    span, the part of μ that varies): for Gaussian μ the blocks are exactly these multiples of I (tr(block)/d),
    and at n = ∞ the coefficients are (1, 0, −1, 0)."""

    def fit(block: np.ndarray, pattern: np.ndarray) -> float:
        return float(np.sum(block * pattern) / np.sum(pattern * pattern))

    return {
        "xx": fit(b[:d, :d], np.eye(d)),
        "xs": fit(b[:d, d:], key.T),
        "sx": fit(b[d:, :d], key),
        "ss": fit(b[d:, d:], key @ key.T),
    }


@_run
def cmd_descriptors(args: argparse.Namespace) -> int:
    from iclab.theory.descriptors import descriptor_problem
    from iclab.theory.quadratic import snap_zero

    check_flag("--d", args.d, ge=1, integer=True)
    _check_memory("descriptors", args.d)
    check_flag("--tau", args.tau, ge=0.0)
    means = _descriptor_means(args)
    side = args.d if args.descriptor == "mean" else args.means
    _check_memory("descriptors", args.d, side)
    ns = [_parse_n(v) for v in args.n.split(",")]
    common = {"tau": args.tau, "means": means, "noise_std": args.noise}
    if args.descriptor == "onehot":
        key = means
    else:  # μ itself; with K fixed means only its part in their span is seen, so fit to that projector
        key = np.eye(args.d) if means is None else np.linalg.pinv(means) @ means
    rows = []
    for n in ns:
        without = descriptor_problem(n, args.d, descriptor="none", **common)
        problem = descriptor_problem(n, args.d, descriptor=args.descriptor, **common)
        b, with_side = problem.optimum()
        scale = problem.c  # E y_q², the loss of predicting 0
        loss_without, loss_with = snap_zero(without.optimum()[1], scale), snap_zero(with_side, scale)
        blocks = {name: snap_zero(value, 1.0) for name, value in _block_coefficients(b, args.d, key).items()}
        rows.append({"n": _n_json(n), "without": loss_without, "with": loss_with,
                     "gap": snap_zero(loss_without - loss_with, scale), **blocks})  # fmt: skip
    if args.json:
        print(json.dumps(rows))
        return 0
    if means is None:
        where = f"μ ~ N(0, τ² I), tau={args.tau}"
    else:
        where = f"μ one of K={args.means} means drawn from N(0, τ² I) (tau={args.tau}, seed {args.seed})"
    print(f"optimal one-layer LSA loss, mean-shifted regression d={args.d}, {where}, noise_std={args.noise}")
    if args.descriptor == "mean":
        print("B* blocks (multiples of I for Gaussian μ): ŷ = h_xᵀ(B_xx x_q + B_xs μ) + ȳ μᵀ(B_sx x_q + B_ss μ)")
        label = "with μ"
    else:
        print("B* blocks fitted as B_xx = c I, B_xs = c Mᵀ, B_sx = c M, B_ss = c M Mᵀ (M: the K × d means);")
        print("  one-hot s, μ = Mᵀs: ŷ = h_xᵀ(B_xx x_q + B_xs s) + ȳ sᵀ(B_sx x_q + B_ss s)")
        label = "one-hot"
    print(f"{'n':>6} {'without':>10} {label:>10} {'gap':>10} {'B_xx':>8} {'B_xs':>8} {'B_sx':>8} {'B_ss':>8}")
    for r in rows:
        print(
            f"{r['n']!s:>6} {r['without']:10.5g} {r['with']:10.5g} {r['gap']:10.5g} "
            f"{r['xx']:8.4f} {r['xs']:8.4f} {r['sx']:8.4f} {r['ss']:8.4f}"
        )
    return 0


@_run
def cmd_nonlinear(args: argparse.Namespace) -> int:
    from iclab.theory.nonlinear import RESPONSES, nonlinear_loss, nonlinear_optimum

    check_flag("--d", args.d, ge=1, integer=True)
    _check_memory("nonlinear", args.d)
    n = _parse_n(args.n)
    rows = []
    for response in RESPONSES:
        opt = nonlinear_optimum(response, n, args.d, args.noise)
        linear_eta = nonlinear_optimum("identity", n, args.d, args.noise).step_size
        naive = nonlinear_loss(linear_eta * np.eye(args.d), response, n, args.d, args.noise)
        rows.append({"response": response, "step_size": opt.step_size, "loss": opt.loss, "loss_linear_step": naive})
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"y = f(wᵀx) + ε, x, w ~ N(0, I), d={args.d}, n={n}, noise_std={args.noise}: Γ* = η I")
    print(f"{'f':>8} {'η*':>10} {'L*':>12} {'L at the linear η':>18}")
    for r in rows:
        print(f"{r['response']:>8} {r['step_size']:10.6g} {r['loss']:12.6g} {r['loss_linear_step']:18.6g}")
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``iclab theory`` and its sub-commands to the iclab parser's verbs."""
    theory = verbs.add_parser(
        "theory",
        allow_abbrev=False,
        help="exact theory of one-layer LSA: optima, trained-vs-optimal, gradient flow",
        description="Exact population losses and optima of one-layer linear self-attention (docs/theory.md).",
    )
    sub = theory.add_subparsers(dest="theory_verb", required=True, metavar="COMMAND")

    opt = sub.add_parser(
        "optimum", allow_abbrev=False, help="Γ* and L* for x ~ N(0, Λ), w ~ N(0, Σ_w)", description="Γ* = Σ_w Λ M⁻¹."
    )
    opt.add_argument("--d", type=int, required=True, help="input dimension")
    opt.add_argument("--n", required=True, help="context length (an integer or inf)")
    opt.add_argument("--noise", type=float, default=0.0, help="label noise std σ (default 0)")
    opt.add_argument("--x-cov-diag", help="diagonal of Λ, comma-separated (default I)")
    opt.add_argument("--w-cov-diag", help="diagonal of Σ_w, comma-separated (default I)")
    opt.add_argument("--json", action="store_true", help="print JSON")
    opt.set_defaults(func=cmd_optimum)

    cmp = sub.add_parser(
        "compare",
        allow_abbrev=False,
        help="a trained one-layer run vs the exact optimum",
        description="Trained loss, optimal loss, gap, ‖Γ − Γ*‖/‖Γ*‖.",
    )
    cmp.add_argument("run_dir", help="a run dir made by iclab train (model.layers=1)")
    cmp.add_argument("--json", action="store_true", help="print JSON")
    cmp.set_defaults(func=cmd_compare)

    flow = sub.add_parser(
        "flow",
        allow_abbrev=False,
        help="gradient flow of the exact loss (and SGD beside it): loss vs time plot",
        description="Gradient flow over sparse one-layer LSA weights (A, v) on the exact population loss of the "
        "task given by key=value overrides (e.g. task.d=5 task.n=20 task.x_mean_std=1 task.descriptor=mean).",
    )
    flow.add_argument("overrides", nargs="*", metavar="key=value", help="task config overrides")
    flow.add_argument("--n-infinite", action="store_true", help="the n → ∞ loss instead of task.n")
    flow.add_argument("--init", default="balanced", help="balanced (default), gaussian, wrong_sign, zero")
    flow.add_argument("--init-scale", type=float, default=0.1, help="init scale s (default 0.1)")
    flow.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    flow.add_argument("--t-max", type=float, default=100.0, help="integration time (default 100)")
    flow.add_argument("--sgd-steps", type=int, default=0, help="also run SGD for this many steps (default 0)")
    flow.add_argument("--sgd-lr", type=float, default=0.005, help="SGD step size (default 0.005)")
    flow.add_argument("--sgd-batch", type=int, default=1000, help="SGD prompts per step (default 1000)")
    flow.add_argument("--out", metavar="PNG", help="write the figure here (default: no figure)")
    flow.add_argument("--json", action="store_true", help="print JSON")
    flow.set_defaults(func=cmd_flow)

    desc = sub.add_parser(
        "descriptors",
        allow_abbrev=False,
        help="optimal loss with vs without a task descriptor (the mean, or a one-hot index of K means)",
        description="x ~ N(μ, I), w ~ N(0, I) with μ ~ N(0, τ² I) or one of K fixed means (--means K, drawn "
        "from N(0, τ² I) as a run with seed=--seed task.n_means=K draws them): optimal one-layer LSA with and "
        "without the descriptor (--descriptor mean: μ; onehot: the index of μ, needs --means). Losses within "
        "1e-9 of E y² of 0 print as 0.",
    )
    desc.add_argument("--d", type=int, default=5, help="input dimension (default 5)")
    desc.add_argument("--tau", type=float, default=1.0, help="std τ of the task mean (default 1)")
    desc.add_argument("--descriptor", default="mean", help="mean (default) or onehot: what the model is given")
    desc.add_argument("--means", type=int, default=0, help="K fixed means (default 0: Gaussian μ)")
    desc.add_argument("--seed", type=int, default=0, help="seed of the K fixed means (default 0)")
    desc.add_argument("--n", default="5,10,20,40,80,inf", help="context lengths, comma-separated (inf allowed)")
    desc.add_argument("--noise", type=float, default=0.0, help="label noise std σ (default 0)")
    desc.add_argument("--json", action="store_true", help="print JSON")
    desc.set_defaults(func=cmd_descriptors)

    nonlin = sub.add_parser(
        "nonlinear",
        allow_abbrev=False,
        help="optimal step size for y = f(wᵀx) + ε",
        description="Optimal one-layer LSA (Γ* = η I) for ReLU, tanh, x³ and linear responses, isotropic x and w.",
    )
    nonlin.add_argument("--d", type=int, default=5, help="input dimension (default 5)")
    nonlin.add_argument("--n", default="20", help="context length (default 20; inf allowed)")
    nonlin.add_argument("--noise", type=float, default=0.0, help="label noise std σ (default 0)")
    nonlin.add_argument("--json", action="store_true", help="print JSON")
    nonlin.set_defaults(func=cmd_nonlinear)
