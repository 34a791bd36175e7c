"""The probe registry: every pitfall probe with the result columns it fills.

The results schema's `probe_*` columns, `probe_model`'s output and the probe table derive from
`PROBES`; a probe is its function (`pitfalls.probes.core`), its entry here, and its lines in
`probe_model`. Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    """A yes/no line of the probe table: `flag` (0/1) decides, `value` is the evidence."""

    title: str
    flag: str
    value: str
    yes: str
    no: str


@dataclass(frozen=True)
class Probe:
    name: str
    columns: tuple[str, ...]  # its `probe_*` results, in the results schema's order
    verdicts: tuple[Verdict, ...] = ()
    doc: str = ""


PROBES: dict[str, Probe] = {p.name: p for p in [
    Probe("leakage", ("probe_leak_train", "probe_leak_change_train", "probe_leak_eval",
                      "probe_leak_change_eval"),
          (Verdict("leakage (train mode)", "probe_leak_train", "probe_leak_change_train", "LEAKS", "clean"),
           Verdict("leakage (eval mode)", "probe_leak_eval", "probe_leak_change_eval", "LEAKS", "clean")),
          "outputs at times <= t move when only frames after t change"),
    Probe("batch_dependence", ("probe_batch_dependent_train", "probe_batch_change_train"),
          (Verdict("batch dependence (train)", "probe_batch_dependent_train",
                   "probe_batch_change_train", "DEPENDENT", "independent"),),
          "a sample's output moves when only the other samples of the batch change"),
    Probe("train_eval_gap", ("probe_train_eval_output_gap", "probe_train_eval_accuracy_gap"),
          doc="how far outputs and accuracy move between train- and eval-mode normalization"),
    Probe("stale_statistics", ("probe_stale_mean_shift", "probe_stale_var_ratio"),
          doc="running BN statistics against PreciseBN population statistics"),
]}
COLUMNS = tuple(c for p in PROBES.values() for c in p.columns)
LEAK_FLAG = "probe_leak_train"  # the verdict the comparison table counts (`leaks future`)
