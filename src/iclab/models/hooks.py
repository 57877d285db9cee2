"""Named hook points (TransformerLens style): every intermediate worth probing passes through one.

A ``HookPoint`` is an identity module; its name is its path in the model (``blocks.0.attn.scores``).
:func:`run_with_cache` records every hook's value during one call, so probes never reach into internals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor, nn


class HookPoint(nn.Module):
    """Identity; forward hooks registered on it see the tensor under the module's name."""

    def forward(self, x: Tensor) -> Tensor:
        return x

    @property
    def listened(self) -> bool:
        """Whether a hook is registered (models may skip materialising an unobserved tensor)."""
        return bool(self._forward_hooks)


def hook_names(model: nn.Module) -> list[str]:
    """The names of all hook points of ``model``, in forward order of definition."""
    return [name for name, module in model.named_modules() if isinstance(module, HookPoint)]


def run_with_cache(
    model: nn.Module, fn: Callable[[], Any], names: str | Iterable[str] | None = None, detach: bool = True
) -> tuple[Any, dict[str, Tensor]]:
    """Call ``fn()`` (which runs ``model``) and return (its result, {hook name: tensor}).

    ``names`` restricts the cache to those hooks: one name (``"blocks.1.attn.scores"``) or several (default:
    all). Tensors are detached unless ``detach`` is False (then gradients flow through them, e.g. to the
    inputs). Raises ValueError naming any unknown hook and listing the model's hooks.
    """
    cache: dict[str, Tensor] = {}
    handles = []
    known = hook_names(model)
    wanted = known if names is None else [names] if isinstance(names, str) else list(names)
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise ValueError(f"unknown hook name(s) {unknown}; the model has {known}")
    for name, module in model.named_modules():
        if isinstance(module, HookPoint) and name in wanted:
            handles.append(
                module.register_forward_hook(
                    lambda _m, _inp, out, name=name: cache.__setitem__(name, out.detach() if detach else out)
                )
            )
    try:
        result = fn()
    finally:
        for handle in handles:
            handle.remove()
    return result, cache
