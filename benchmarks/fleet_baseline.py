"""The yardstick for `hdap cluster`: a plain pandas + MiniBatchKMeans script, no checks.

It reads the CSV, log-scales and standardises the probe columns, runs
MiniBatchKMeans with a fixed k and writes ``device_id,cluster``. The engine
does much more (validation, automatic k, profiles, representatives) and
must not be much slower for it; `benchmarks/fleet.py` runs both.

    python benchmarks/fleet_baseline.py /tmp/big.csv /tmp/baseline.csv
"""

import sys

import numpy as np
import pandas as pd
from sklearn.cluster import MiniBatchKMeans


def main(src: str, out: str, k: int = 5) -> None:
    frame = pd.read_csv(src, engine="pyarrow")
    probes = [c for c in frame.columns if c.startswith("probe_") and c.endswith("_ms")]
    X = np.log(frame[probes].to_numpy(dtype=np.float64))
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    labels = MiniBatchKMeans(n_clusters=k, batch_size=4096, random_state=0, n_init=3).fit_predict(X)
    pd.DataFrame({"device_id": frame["device_id"], "cluster": labels}).to_csv(out, index=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
