"""After the first model ships: is re-optimising worth it?

`reoptimise` compares a deployed bundle with a model re-optimised for the
latest snapshot. Variants per group of clusters are `hdap_engine.rollout`.
Drift between snapshots (who moved, which clusters changed) is
`hdap_engine.fleet.drift`.
"""
