"""After the first model ships: is re-optimising worth it, and would a few variants pay off.

`reoptimise` compares a deployed bundle with a model re-optimised for the
latest snapshot; `rollout` plans one model variant per group of clusters.
Drift between snapshots (who moved, which clusters changed) is
`hdap_engine.fleet.drift`.
"""
