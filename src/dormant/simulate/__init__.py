"""The policy simulator: what each idle policy costs on a trace, against the offline optimum.

A trace (:mod:`~dormant.simulate.trace`; recorded, imported from the Azure Functions 2019 layout,
or synthetic from :mod:`~dormant.simulate.generate`) is replayed through dormant's own engine and
``decide`` (:mod:`~dormant.simulate.simulator`) on a fake clock, an in-memory store
(:mod:`~dormant.store.memory`) and a runtime that only books running time and wakes
(:mod:`~dormant.simulate.accounting`). :mod:`~dormant.simulate.optimum` computes what knowing the
future would have cost; :mod:`~dormant.simulate.report` draws it. ``dormant simulate`` is the CLI.
"""

from dormant.simulate.generate import POPULATIONS, generate
from dormant.simulate.optimum import frontier, optimum
from dormant.simulate.policies import STANDARD, PolicySpec, Prices, WakeLatency, resolve
from dormant.simulate.simulator import PolicyResult, run_policies, simulate
from dormant.simulate.trace import Trace, TraceEvent, import_azure, read_trace, write_trace
from dormant.store.memory import MemoryStore

__all__ = [
    "POPULATIONS",
    "STANDARD",
    "MemoryStore",
    "PolicyResult",
    "PolicySpec",
    "Prices",
    "Trace",
    "TraceEvent",
    "WakeLatency",
    "frontier",
    "generate",
    "import_azure",
    "optimum",
    "read_trace",
    "resolve",
    "run_policies",
    "simulate",
    "write_trace",
]
