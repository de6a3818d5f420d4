"""Task-vector compression and routed merging (T-Switch, Auto-Switch, FlexSwitch) and static merging baselines."""
