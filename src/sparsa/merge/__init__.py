"""Task-vector compression and routed merging (T-Switch, Auto-Switch, FlexSwitch) and static merging baselines."""

from sparsa.merge import methods  # noqa: E402,F401  (registers the built-in methods on first import of the engine)
