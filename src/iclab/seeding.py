"""Explicit randomness: every draw in iclab goes through a ``torch.Generator`` made here."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for the named ``stream`` ("train", "eval", "init", …) of the run seed ``seed``.

    Different streams are independent; the same (seed, stream) always gives the same number.
    """
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_generator(seed: int, stream: str = "", device: str | torch.device = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded from (seed, stream)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, stream) if stream else seed)
    return gen
