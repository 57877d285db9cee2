"""Exact theory of in-context learners (closed forms checked against Monte Carlo in the tests)."""

from iclab.theory.lsa import isotropic_gd_optimum, isotropic_reference

__all__ = ["isotropic_gd_optimum", "isotropic_reference"]
