"""The one check of a number given at a boundary (a learner's hyper-parameter, a theory input, a command-line
flag): finite, of the right kind, within its bounds, or a one-line ``ValueError`` naming it. Config keys are
declared with the same bounds in :mod:`iclab.config` (pydantic)."""

from __future__ import annotations

import math
import numbers

from iclab.errors import UsageError


def check_number(
    name: str,
    value: object,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    integer: bool = False,
) -> int | float:
    """``value`` as an int (``integer``) or float if it is a finite real number within the bounds; raises
    ``ValueError("NAME must be a finite number >= 0, got -1")`` otherwise (booleans are not numbers)."""
    kind = "an integer" if integer else "a finite number"
    ops = ((">=", ge), (">", gt), ("<=", le), ("<", lt))
    wanted = " and ".join(f"{op} {bound:g}" for op, bound in ops if bound is not None)
    message = f"{name} must be {kind}{' ' + wanted if wanted else ''}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
        raise ValueError(message)
    if not math.isfinite(float(value)):
        raise ValueError(message)
    holds = {">=": value >= (ge or 0), ">": value > (gt or 0), "<=": value <= (le or 0), "<": value < (lt or 0)}
    if not all(holds[op] for op, bound in ops if bound is not None):
        raise ValueError(message)
    return int(value) if integer else float(value)


def check_flag(flag: str, value: object, **bounds: float | bool) -> int | float:
    """:func:`check_number` for a command-line flag: a bad value is a :class:`~iclab.errors.UsageError`
    (exit code 2, one line naming the flag)."""
    try:
        return check_number(flag, value, **bounds)
    except ValueError as err:
        raise UsageError(str(err)) from None
