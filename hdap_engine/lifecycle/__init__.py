"""After the first model ships: variants per cohort of clusters, and whether re-optimising pays.

    rollout.py     `plan_rollout`: K' model variants, one per cohort of clusters, against one model
    reoptimise.py  a deployed bundle against a model re-optimised for the latest snapshot

Fleet drift between snapshots (who moved, which clusters changed) is
`hdap_engine.fleet.drift`; this room decides what to do about it.
"""
