"""Mechanism probing: which algorithm does a trained model run, layer by layer (``iclab probe RUN_DIR``).

- :mod:`~iclab.probe.readout`: each layer's read-out and a linear probe on its residual stream;
- :mod:`~iclab.probe.candidates` and :mod:`~iclab.probe.matching`: GD-k, preconditioned GD-k,
  Newton–Schulz-k, ridge, least squares, functional GD-k and, with a task descriptor, centred GD and the
  exact one-layer optimum, matched to each layer (prediction difference, Fu et al.'s similarity of errors,
  input-sensitivity cosine);
- :mod:`~iclab.probe.weights`: W_KQ and W_PV beside the GD construction;
- :mod:`~iclab.probe.piecewise`: plateaus of the prediction along a line of queries (Nath et al.);
- :mod:`~iclab.probe.run`: all of it on one model, written as CSVs, figures and report.md.
"""

from iclab.probe.readout import LayerReadout, LinearProbe, ProbeReadout, fit_linear_probes
from iclab.probe.run import ProbeResult, ProbeSettings, probe_model, probe_run, write_probe

__all__ = [
    "LayerReadout",
    "LinearProbe",
    "ProbeReadout",
    "ProbeResult",
    "ProbeSettings",
    "fit_linear_probes",
    "probe_model",
    "probe_run",
    "write_probe",
]
