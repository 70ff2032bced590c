"""The twin prior's worth where the surrogate was not trained (docs/results.md, fourth pass).

On the 400-device simulated Jetson Nano test fleet (`simulate_fleet(seed=3)`), 160 sampled
candidates are measured on the representatives (twin backend); the surrogate is trained on
those below half the model's MACs and judged on those above 0.6 of it, against the twin's
noiseless latency, three ways: no prior, the fleet's own twin prior, and a Raspberry Pi's
twin (the wrong SKU, which the surrogate's check should drop).

    python -m benchmarks.fleet_twin_prior
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from hdap_engine.latency.prior import TwinPrior, twin_prior_for
from hdap_engine.latency.sampling import sample_candidates
from hdap_engine.latency.store import Store
from hdap_engine.latency.surrogate import Surrogate
from hdap_engine.options import StudyOptions, SurrogatePlan
from hdap_engine.pruning.space import PruningSpace
from hdap_engine.study.prepare import prepare
from hdap_engine.twin.simulate import simulate_fleet, write_fleet


def main() -> None:
    work = Path(tempfile.mkdtemp())
    telemetry, states = simulate_fleet("jetson-nano", 400, seed=3)
    fleet_csv, _ = write_fleet(work / "small", telemetry, states)
    for model in ("mobilenet_v1", "resnet50"):
        space = PruningSpace.for_model(model)
        ctx = prepare(StudyOptions.of(model=model, budget="0.5", method="uniform"), fleet_csv,
                      store=Store(work / f"{model}.sqlite"))
        widths = sample_candidates(space, 160, seed=1)
        ms = ctx.backend.measure(space, widths, ctx.rep_devices, repeats=3).median_ms
        truth = ctx.backend.expected_ms(space, widths, ctx.rep_devices)
        macs = space.macs(widths) / space.base_macs
        train, test = macs < 0.5, macs >= 0.6
        right = twin_prior_for(ctx.fleet)
        wrong = TwinPrior("rpi4", right.probe_columns)
        for name, prior in (("no prior", None), ("twin prior", right),
                            ("wrong-SKU twin (rpi4)", wrong)):
            sur = Surrogate(space, SurrogatePlan(), prior).fit(
                widths[train], ms[train], ctx.rep_features, ctx.rep_clusters)
            pred, _ = sur.predict(widths[test], ctx.rep_features, ctx.rep_clusters)
            r = np.log(pred / truth[test])
            used = (sur.report_.get("twin_prior") or {}).get("used")
            print(f"{model:13s} {name:22s} median {np.median(np.abs(np.expm1(r))):6.2%}  "
                  f"bias {r.mean():+6.2%}  RMS {np.sqrt((r ** 2).mean()):6.2%}  "
                  f"prior used: {used}")


if __name__ == "__main__":
    main()
