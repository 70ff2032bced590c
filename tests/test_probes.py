"""The standard probe suite: one definition for the twin and for real hardware."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from hdap_engine.cli import main
from hdap_engine.errors import HdapError
from hdap_engine.fleet.probes import (
    PROBE_COLUMNS,
    PROBE_ROWS,
    STANDARD_PROBES,
    build_layer,
    host_context,
    probe_column,
    probe_tables,
    run_probe_suite,
    write_probe_row,
)


def test_every_standard_probe_has_a_table_and_a_column():
    tables = probe_tables()
    assert tuple(tables) == STANDARD_PROBES
    assert PROBE_COLUMNS == tuple(f"probe_{n}_ms" for n in STANDARD_PROBES)
    for name in ("conv3x3", "conv1x1", "dwconv3x3", "linear", "copy_small", "copy_large",
                 "tiny", "conv3x3_odd"):
        assert name in STANDARD_PROBES
    assert probe_column("tiny") == "probe_tiny_ms"


@pytest.mark.parametrize("name", STANDARD_PROBES)
def test_host_op_computes_the_workload_of_the_table(name):
    import torch

    table = probe_tables()[name]
    for i, row in enumerate(PROBE_ROWS[name]):
        fn, x = build_layer(row)
        with torch.inference_mode():
            y = fn(x)
        expected_out = table.output_elems()[0, i]
        assert y.numel() == expected_out
        if row["op"] in ("conv", "dwconv", "linear"):
            weight = fn.weight.numel() + (fn.bias.numel() if fn.bias is not None else 0)
            assert weight == table.weight_elems()[0, i]


def test_host_probe_suite_runs_and_orders_sensibly():
    out = run_probe_suite(repeats=3, warmup=1, threads=1)
    assert tuple(out) == PROBE_COLUMNS
    assert all(np.isfinite(v) and v > 0 for v in out.values())
    # orderings that hold on any machine, however loaded
    assert out["probe_copy_large_ms"] > out["probe_copy_small_ms"]
    assert out["probe_conv3x3_ms"] > out["probe_conv3x3_small_ms"]


def test_host_context_describes_the_machine():
    ctx = host_context(1)
    assert ctx["threads"] == 1 and ctx["cpu_count"] >= 1
    assert isinstance(ctx["cpu_model"], str) and ctx["torch_version"]


def test_cli_probe_writes_one_telemetry_row(tmp_path, capsys):
    out = tmp_path / "host.csv"
    args = ["probe", "--out", str(out), "--repeats", "2", "--warmup", "0", "--threads", "1",
            "--device-id", "bench-1"]
    assert main(args) == 0
    df = pd.read_csv(out)
    assert len(df) == 1 and df.loc[0, "device_id"] == "bench-1" and df.loc[0, "sku"] == "host"
    assert set(PROBE_COLUMNS) <= set(df.columns)
    assert {"threads", "cpu_model", "torch_version"} <= set(df.columns)
    assert "probe_conv3x3_ms" in capsys.readouterr().out
    assert main([*args, "--append"]) == 2
    assert "bench-1" in capsys.readouterr().err


def test_cli_probe_refuses_bad_flags(capsys):
    assert main(["probe", "--repeats", "0"]) == 2
    assert capsys.readouterr().err.startswith("error:")


def test_a_probe_row_is_appended_once_per_device(tmp_path):
    out = tmp_path / "fleet.csv"
    write_probe_row({"device_id": "a", "sku": "host", "probe_tiny_ms": 0.5}, out, append=True)
    write_probe_row({"device_id": "b", "sku": "host", "probe_tiny_ms": 0.25}, out, append=True)
    df = pd.read_csv(out)
    assert list(df["device_id"]) == ["a", "b"] and list(df["probe_tiny_ms"]) == [0.5, 0.25]
    with pytest.raises(HdapError, match="already has device_id 'a'; pass another --device-id"):
        write_probe_row({"device_id": "a", "sku": "host", "probe_tiny_ms": 0.5}, out, append=True)
    write_probe_row({"device_id": "c", "sku": "host", "probe_tiny_ms": 1.0}, out)  # replaces
    assert list(pd.read_csv(out)["device_id"]) == ["c"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator")
def test_a_probe_session_times_the_depthwise_kernel_not_page_faults():
    import resource

    import torch

    from hdap_engine.fleet.probes import ProbeSession

    session = ProbeSession(("dwconv3x3",))  # sets up the steady allocator
    run = session.ops["dwconv3x3"]
    with torch.inference_mode():
        run()
        run()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            run()
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
    # without it, each call faults in ~1,500 fresh pages for oneDNN's reorders
    assert faults < 100
