"""A study, orchestrated: the steps of the method called in order, as the CLI, the app and jobs call them.

    prepare.py   fleet, clusters, backend, sampled measurements, surrogate -> `StudyContext`
    run.py       `optimize` (a query on a prepared study) and `run_study` (end to end)
    verify.py    the chosen candidate measured again, per cluster and on every device
    compare.py   every method on one fleet (`hdap bench`), budget sweeps, the clustering check

The steps themselves live in their own rooms (fleet/, latency/, search/,
pruning/, accuracy/, export/); this room only calls them.
"""
