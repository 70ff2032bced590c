"""Raw timed runs (long format): the same fleet as one row per device, and one clear line for bad runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from hdap_engine import cli
from hdap_engine.errors import HdapError
from hdap_engine.fleet import longformat
from hdap_engine.fleet.bench_data import LONG_PROBES_MS, synthetic_fleet, write_fleet, write_runs
from hdap_engine.fleet.clustering import Clustering
from hdap_engine.fleet.longformat import (
    aggregate_frame,
    is_long_format,
    read_runs,
    read_wide_parquet,
)
from hdap_engine.fleet.telemetry import load_fleet
from hdap_engine.options import LongFormatOptions

PROBES = list(LONG_PROBES_MS)


def _wide(n: int = 300, seed: int = 0) -> pd.DataFrame:
    frame, _ = synthetic_fleet(n, seed=seed, nominal=LONG_PROBES_MS)
    return frame


def _runs(wide: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Three runs per device and probe at x * 0.98, x, x * 1.02 (median exactly x), rows shuffled."""
    rows = []
    for factor, hour in ((0.98, 0), (1.0, 1), (1.02, 2)):
        for c in PROBES:
            rows.append(pd.DataFrame({
                "device_id": wide["device_id"],
                "probe": c[len("probe_"):-len("_ms")],
                "latency_ms": wide[c] * factor,
                "timestamp": pd.Timestamp("2026-11-01") + pd.Timedelta(hours=hour),
                "sku": wide["sku"],
                "firmware": wide["firmware"] if hour < 2 else "2.0.0",
                "ambient_c": wide["ambient_c"],
            }))
    runs = pd.concat(rows, ignore_index=True)
    return runs.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _write(frame: pd.DataFrame, path) -> str:
    write_fleet(frame, path)
    return str(path)


def test_long_format_is_detected_by_its_columns():
    assert is_long_format(["device_id", "probe", "latency_ms", "timestamp"])
    assert is_long_format(["\ufeffdevice_id ", "probe", "latency_ms"])
    assert not is_long_format(["device_id", "probe_conv_ms", "probe_copy_ms"])
    assert not is_long_format(["device_id", "probe", "latency_ms", "probe_conv_ms"])


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_runs_give_the_same_fleet_as_one_row_per_device(tmp_path, suffix):
    wide = _wide()
    runs = _runs(wide)
    a = load_fleet(_write(wide, tmp_path / "wide.csv"))
    b = load_fleet(_write(runs, tmp_path / f"runs.{suffix}"))
    assert b.n_devices == a.n_devices and b.sku == a.sku == "edge-a"
    assert sorted(b.probe_columns) == sorted(a.probe_columns)
    merged = a.frame.merge(b.frame, on="device_id", suffixes=("", "_long"))
    assert len(merged) == a.n_devices
    for c in PROBES:
        np.testing.assert_allclose(merged[c + "_long"], merged[c], rtol=1e-9)
    assert (b.frame["runs"] == 3).all()
    np.testing.assert_allclose(b.frame["spread"], 0.02, rtol=1e-6)  # (1.01 - 0.99) / 1
    # The latest run's context: every device's last run has firmware 2.0.0.
    assert (b.frame["firmware"] == "2.0.0").all()
    assert "105 runs" not in b.notes[0] and f"{len(runs):,} runs of 7 probes" in b.notes[0]
    la = Clustering().fit(a).assignments()
    lb = Clustering().fit(b).assignments().set_index("device_id").loc[la["device_id"]]
    assert adjusted_rand_score(la["cluster"], lb["cluster"]) == 1.0


def test_a_glob_of_parquet_parts_and_an_upload_give_the_same_fleet(tmp_path):
    wide = _wide(120)
    one = tmp_path / "runs.parquet"
    write_runs(wide, one, runs=4)
    whole = load_fleet(str(one))
    # The same runs split over three files, read by a glob and by the folder.
    table = pd.read_parquet(one)
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(table)), 3)):
        table.iloc[part].to_parquet(folder / f"part-{i}.parquet", index=False)
    for source in (str(folder / "*.parquet"), str(folder)):
        parts = load_fleet(source)
        pd.testing.assert_frame_equal(parts.frame, whole.frame)
    upload = load_fleet(one.read_bytes(), name="upload.parquet")
    pd.testing.assert_frame_equal(upload.frame, whole.frame)


def test_latest_context_without_timestamps_is_the_last_row_in_file_order(tmp_path):
    runs = pd.DataFrame({
        "device_id": ["a"] * 6 + ["b"] * 6,
        "probe": ["x", "y"] * 6,
        "latency_ms": [1.0, 2.0, 1.1, 2.1, 1.2, 2.2] * 2,
        "firmware": ["1", "1", "1", "1", "2", "2", "7", "7", "7", "7", "8", "8"],
    })
    for name in ("runs.csv", "runs.parquet"):
        fleet = load_fleet(_write(runs, tmp_path / name))
        assert dict(zip(fleet.frame["device_id"], fleet.frame["firmware"].astype(str), strict=True)) == {
            "a": "2", "b": "8"}
        assert list(fleet.frame["probe_x_ms"]) == pytest.approx([1.1, 1.1])


def test_devices_with_too_few_or_unstable_runs_are_left_out_and_counted(tmp_path):
    wide = _wide(50)
    runs = _runs(wide)
    # Device 0 loses two runs of linear; device 1's memcopy runs scatter widely.
    drop = runs.index[(runs["device_id"] == wide["device_id"][0]) & (runs["probe"] == "linear")][:2]
    runs = runs.drop(index=drop)
    wild = (runs["device_id"] == wide["device_id"][1]) & (runs["probe"] == "memcopy")
    runs.loc[wild, "latency_ms"] = [1.0, 3.0, 9.0]
    fleet = load_fleet(_write(runs, tmp_path / "runs.parquet"))
    assert fleet.n_devices == 48
    notes = " | ".join(fleet.notes)
    assert "left out 1 device with fewer than 3 runs of a probe (linear 1; e.g. dev-000000)" in notes
    assert "left out 1 device with an unstable probe" in notes and "memcopy 1" in notes
    relaxed = load_fleet(_write(runs, tmp_path / "runs.csv"))
    assert relaxed.n_devices == 48
    kept = aggregate_frame(runs, options=LongFormatOptions(min_runs=1, max_spread=10.0))
    assert len(kept.frame) == 50


def _bad(runs: pd.DataFrame, tmp_path, name="runs.csv") -> str:
    path = tmp_path / name
    runs.to_csv(path, index=False) if name.endswith(".csv") else runs.to_parquet(path, index=False)
    with pytest.raises(HdapError) as info:
        load_fleet(str(path))
    message = str(info.value)
    assert "\n" not in message and message.startswith(name + ":")
    return message


GOOD = pd.DataFrame({
    "device_id": ["a", "a", "a", "b", "b", "b"] * 2,
    "probe": ["conv3x3"] * 6 + ["copy_large"] * 6,
    "latency_ms": [1.0, 1.1, 1.05, 1.2, 1.3, 1.25, 2.0, 2.1, 2.05, 2.2, 2.3, 2.25],
})


def _with(**columns) -> pd.DataFrame:
    frame = GOOD.copy()
    for k, v in columns.items():
        frame[k] = v
    return frame


@pytest.mark.parametrize("name", ["runs.csv", "runs.parquet"])
@pytest.mark.parametrize("case, frame, fragments", [
    ("not a probe name", _with(probe=["conv3x3"] * 6 + ["copy large"] * 6),
     ["column probe has 1 value that is not a probe name ('copy large' (6 rows))", "letters, digits and _"]),
    ("a shifted column", _with(probe=["conv3x3"] * 6 + ["2.5"] * 6), ["'2.5' (6 rows)", "not shifted"]),
    ("negative latency", _with(latency_ms=[1.0, -1.1, 1.05] + [1.2] * 9),
     ["latency_ms has 1 zero or negative value (e.g. device 'a', probe conv3x3: -1.1 ms)", "> 0 ms"]),
    ("zero latency", _with(latency_ms=[1.0] * 11 + [0.0]), ["1 zero or negative value", "probe copy_large: 0 ms"]),
    ("infinite latency", _with(latency_ms=[1.0] * 5 + [np.inf] + [2.0] * 6),
     ["1 infinite or NaN value (e.g. device 'b', probe conv3x3)", "finite"]),
    ("text latency", _with(latency_ms=["1.0"] * 5 + ["fast"] + ["2.0"] * 6),
     ["latency_ms has 1 non-numeric value (e.g. 'fast', probe conv3x3)"]),
    ("one probe only", _with(probe=["conv3x3"] * 12), ["name 1 probe (conv3x3)", "at least 2 probes"]),
    ("no device id", _with(device_id=["a"] * 5 + [""] + ["b"] * 6), ["column device_id is empty in 1 row"]),
    ("mixed SKUs", _with(sku=["nano"] * 3 + ["pi4"] * 3 + ["nano"] * 3 + ["pi4"] * 3),
     ["holds 2 SKUs (nano: 1 device, pi4: 1 device)", "--sku"]),
    ("a device under two SKUs", _with(sku=["nano"] * 11 + ["pi4"]),
     ["1 device has runs under more than one SKU ('b')"]),
])
def test_bad_runs_get_one_clear_line(tmp_path, name, case, frame, fragments):
    if case == "text latency" and name.endswith(".parquet"):
        frame = frame.astype({"latency_ms": str})
    message = _bad(frame, tmp_path, name)
    for fragment in fragments:
        assert fragment in message, (case, message)


def test_a_device_listed_without_runs_is_refused(tmp_path):
    runs = pd.concat([GOOD, pd.DataFrame({"device_id": ["c"], "probe": [None], "latency_ms": [np.nan]})])
    message = _bad(runs, tmp_path)
    assert "1 device has no runs ('c')" in message and "measure them again or remove" in message
    message = _bad(runs, tmp_path, "runs.parquet")
    assert "1 device has no runs ('c')" in message


def test_a_sku_can_be_picked_from_runs_of_several(tmp_path):
    runs = _with(sku=["nano"] * 3 + ["pi4"] * 3 + ["nano"] * 3 + ["pi4"] * 3)
    path = tmp_path / "runs.parquet"
    runs.to_parquet(path, index=False)
    fleet = load_fleet(str(path), sku="pi4")
    assert list(fleet.frame["device_id"]) == ["b"] and fleet.sku == "pi4"


def test_a_glob_that_matches_nothing_or_a_csv_is_refused(tmp_path):
    with pytest.raises(HdapError, match="no file matches this pattern"):
        load_fleet(str(tmp_path / "*.parquet"))
    GOOD.to_parquet(tmp_path / "a.parquet", index=False)
    GOOD.to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(HdapError, match="b.csv is not a Parquet file"):
        load_fleet(str(tmp_path / "*"))


def test_large_wide_parquet_read_through_duckdb_is_the_same_fleet(tmp_path):
    wide = _wide(500)
    path = _write(wide, tmp_path / "wide.parquet")
    direct = load_fleet(path)
    via = read_wide_parquet([path])  # the checked table load_fleet makes a Fleet of
    pd.testing.assert_frame_equal(via.frame, direct.frame, check_dtype=False)
    assert via.probe_columns == direct.probe_columns and via.sku == direct.sku


def test_wide_parquet_streamed_in_many_batches_keeps_the_file_order(tmp_path, monkeypatch):
    # Ten-million-device files come from DuckDB a batch at a time; batches must
    # join in file order, or the rows named in messages would be wrong.
    monkeypatch.setattr(longformat, "_BATCH_ROWS", 37)
    wide = _wide(500)
    path = _write(wide, tmp_path / "wide.parquet")
    via = read_wide_parquet([path])
    pd.testing.assert_frame_equal(via.frame, load_fleet(path).frame, check_dtype=False)
    bad = wide.assign(probe_linear_ms=wide["probe_linear_ms"].where(wide.index != 433, -1.0))
    with pytest.raises(HdapError, match="non-positive value at data row 434;"):
        read_wide_parquet([_write(bad, tmp_path / "bad.parquet")])
    # A glob of wide parts: the files in name order, rows counted across them.
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(bad)), 3)):
        bad.iloc[part].to_parquet(folder / f"part-{i}.parquet", index=False)
    with pytest.raises(HdapError, match="non-positive value at data row 434;"):
        load_fleet(str(folder / "*.parquet"))
    good = tmp_path / "good"
    good.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(wide)), 3)):
        wide.iloc[part].to_parquet(good / f"part-{i}.parquet", index=False)
    pd.testing.assert_frame_equal(load_fleet(str(good / "*.parquet")).frame, via.frame)


def test_running_out_of_duckdbs_memory_limit_is_one_clear_line(tmp_path):
    # DuckDB runs a query when its rows are fetched: the limit is hit there,
    # not where the SQL is given, and must still be the one line.
    wide = _wide(300)
    runs = _write(_runs(wide), tmp_path / "runs.parquet")
    small = LongFormatOptions(memory_limit="1KB")
    for read in (lambda: read_runs([runs], options=small),
                 lambda: read_wide_parquet([_write(wide, tmp_path / "wide.parquet")], options=small)):
        with pytest.raises(HdapError, match=r"DuckDB ran out of its memory limit reading the file; "
                                            r"raise the limit \(LongFormatOptions.memory_limit\)"):
            read()


@pytest.mark.parametrize("change, fragment", [
    (lambda f: f.assign(probe_linear_ms=f["probe_linear_ms"].where(f.index != 7, -1.0)),
     "column probe_linear_ms has 1 non-positive value at data row 8"),
    (lambda f: f.assign(device_id=f["device_id"].where(f.index != 3, "dev-000001")),
     "column device_id has 1 duplicated id ('dev-000001' at data rows 2, 4"),
    (lambda f: f.assign(probe_launch_ms=f["probe_launch_ms"].where(f.index != 9, np.nan)),
     "column probe_launch_ms has 1 missing or NaN value at data row 10"),
])
def test_large_wide_parquet_errors_name_the_rows_like_a_small_file(tmp_path, change, fragment):
    path = _write(change(_wide(40)), tmp_path / "wide.parquet")
    for read in (lambda: load_fleet(path), lambda: read_wide_parquet([path])):
        with pytest.raises(HdapError) as info:
            read()
        assert fragment in str(info.value)


def test_cli_validate_and_cluster_accept_runs(tmp_path, capsys):
    wide = _wide(200)
    path = _write(_runs(wide), tmp_path / "runs.parquet")
    assert cli.main(["validate", path]) == 0
    out = capsys.readouterr().out
    assert "200 devices" in out and "probe columns (7)" in out and "raw runs: 4,200 runs" in out
    assert cli.main(["cluster", path, "--out", str(tmp_path / "a.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "a.csv")) == 200
    bad = tmp_path / "bad.csv"
    _with(latency_ms=[1.0, -1.1, 1.05] + [1.2] * 9).to_csv(bad, index=False)
    assert cli.main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: bad.csv: column latency_ms has 1 zero or negative")


def test_huge_fleets_refine_on_a_sample_and_smaller_ones_cluster_as_before():
    from hdap_engine.fleet.telemetry import fleet_from_frame
    from hdap_engine.options import ClusteringPlan

    frame, truth = synthetic_fleet(6000, seed=4, nominal=LONG_PROBES_MS)
    fleet = fleet_from_frame(frame)
    before = Clustering(ClusteringPlan()).fit(fleet)
    # The threshold lowered so a small fleet takes the ten-million-device path.
    sampled = Clustering(ClusteringPlan(sample_fit_above=5000, fit_sample=2000)).fit(fleet)
    assert sampled.k_ == before.k_ == 5
    assert adjusted_rand_score(truth, sampled.labels_) > 0.99
    assert "every device assigned to the nearest" in sampled.describe()
    assert "every device assigned" not in before.describe()
    np.testing.assert_array_equal(sampled.assign(fleet), sampled.labels_)
