"""The process launcher of real-server tests lives in ``devstack.processes`` (benchmarks use it too)."""

from devstack.processes import ROOT, Proc, Stack, settings_env

__all__ = ["ROOT", "Proc", "Stack", "settings_env"]
