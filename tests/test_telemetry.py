"""Fleet telemetry: every bad input gets one clear message, shared by the engine and the CLI."""

from __future__ import annotations

import gzip
import io
import zipfile

import numpy as np
import pandas as pd
import pytest

from hdap_engine import cli
from hdap_engine.errors import HdapError
from hdap_engine.fleet.bench_data import synthetic_fleet, write_fleet
from hdap_engine.fleet.telemetry import Fleet, fleet_from_frame, load_fleet

HEADER = b"device_id,probe_conv_ms,probe_copy_ms\n"
GOOD = HEADER + b"d1,2.5,3.1\nd2,2.6,3.0\nd3,2.4,3.3\n"


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def _xlsx_bytes() -> bytes:
    # The parts of a real .xlsx that a sniffer sees: a zip with xl/ members.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/workbook.xml", "<workbook/>")
        z.writestr("xl/worksheets/sheet1.xml", "<worksheet/>")
    return buf.getvalue()


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("fleet.csv", GOOD)
    return buf.getvalue()


def _random_csv_gz(rows: int = 3000) -> bytes:
    rng = np.random.default_rng(0)
    lines = [HEADER] + [b"d%d,%.6f,%.6f\n" % (i, *rng.uniform(1, 9, 2)) for i in range(rows)]
    return gzip.compress(b"".join(lines))


# (case, file content, fragments the message must contain)
BAD_FILES = [
    ("empty", b"", ["the file is empty"]),
    ("whitespace only", b"\n \n", ["the file is empty"]),
    ("header only", HEADER, ["has a header line but no device rows"]),
    ("header only, no newline", HEADER.rstrip(), ["has a header line but no device rows"]),
    ("no device_id", b"serial,probe_conv_ms,probe_copy_ms\nA,1,2\n", ["no device_id column", "'serial'", "rename"]),
    ("no device_id, no hint", b"x,probe_conv_ms,probe_copy_ms\nA,1,2\n", ["no device_id column (columns: x, probe_conv_ms"]),
    ("header missing", b"d1,1.5,2.5\nd2,1.6,2.4\n", ["the first line looks like data, not a header", "add the header line"]),
    ("empty id", HEADER + b"d1,1,2\n,1,2\n", ["column device_id is empty at line 3", "fill them in"]),
    ("blank id", HEADER + b"d1,1,2\n  ,1,2\n", ["column device_id is empty at line 3"]),
    ("duplicate ids", HEADER + b"d1,1,2\nd2,1,2\nd1,1,2\n", ["1 duplicated id", "'d1' at lines 2, 4", "must be unique"]),
    ("text probe", HEADER + b"d1,1,2\nd2,fast,2\n", ["column probe_conv_ms has 1 non-numeric value", "'fast' at line 3"]),
    ("NaN probe", HEADER + b"d1,1,2\nd2,NaN,2\nd3,,2\n", ["column probe_conv_ms has 2 missing or NaN values at lines 3, 4"]),
    ("inf probe", HEADER + b"d1,1,2\nd2,1,inf\n", ["column probe_copy_ms has 1 infinite value at line 3"]),
    ("zero and negative probe", HEADER + b"d1,1,2\nd2,0,2\nd3,-1.5,2\n",
     ["column probe_conv_ms has 2 non-positive values at lines 3, 4", "> 0 ms", "fix or remove those rows"]),
    ("one probe", b"device_id,probe_conv_ms,copy_ms\nd1,1,2\n",
     ["needs at least 2 probe columns named probe_<name>_ms", "found 1 (probe_conv_ms)", "copy_ms"]),
    ("no probes", b"device_id,temp\nd1,20\n", ["needs at least 2 probe columns", "found none"]),
    ("several SKUs", b"device_id,sku,probe_conv_ms,probe_copy_ms\nd1,nano,1,2\nd2,pi4,1,2\nd3,pi4,1,2\n",
     ["holds 2 SKUs (pi4: 2 devices, nano: 1 device)", "--sku"]),
    ("empty sku", b"device_id,sku,probe_conv_ms,probe_copy_ms\nd1,nano,1,2\nd2,,1,2\n", ["column sku is empty at line 3"]),
    ("non-UTF-8", HEADER + b"d1,1,2\nM\xfcnchen-7,1,2\n", ["is not UTF-8 text (byte 0xFC on line 3)", "CSV UTF-8"]),
    ("UTF-16", "device_id,probe_a_ms\n".encode("utf-16"), ["is UTF-16 text"]),
    ("binary", bytes(range(256)) * 8, ["is a binary file, not CSV or Parquet"]),
    ("xlsx named .csv", _xlsx_bytes(), ["is an Excel workbook (.xlsx), not CSV", "CSV UTF-8"]),
    ("xls named .csv", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600, ["is a legacy Excel workbook (.xls)"]),
    ("zip", _zip_bytes(), ["is a zip archive", "unzip it"]),
    ("HTML error page", b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head></html>",
     ["is an HTML page", "download the raw telemetry file again"]),
    ("HTML without doctype", b"  <html>\n<body>Sign in</body></html>", ["is an HTML page"]),
    ("JSON", b'[{"device_id": "d1"}]', ["looks like JSON"]),
    ("truncated gzip", _random_csv_gz()[:1500], ["the gzip data is truncated", "download the file again"]),
    ("corrupt gzip", b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"not deflate data at all" * 5, ["the gzip data is corrupt"]),
    ("corrupt parquet", b"PAR1" + b"\x13garbage bytes" * 20 + b"PAR1", ["is not a readable Parquet file"]),
    ("truncated parquet", _parquet_bytes(pd.DataFrame({"device_id": ["a"], "probe_a_ms": [1.0]}))[:-30],
     ["the Parquet file is truncated"]),
    ("ragged row", HEADER + b"d1,1,2\nd2,1,2,7\n", ["line 3 has 4 fields but the header has 3"]),
    ("duplicate column", b"device_id,probe_a_ms,probe_a_ms\nd1,1,2\n", ["column probe_a_ms appears 2 times"]),
    ("unnamed column with values", b"device_id,probe_a_ms,,probe_b_ms\nd1,1,x,2\n", ["column 3 has no name"]),
]


@pytest.mark.parametrize("case,content,fragments", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_file_is_refused_with_a_located_message(case, content, fragments, tmp_path, capsys):
    path = tmp_path / "fleet.csv"
    path.write_bytes(content)
    with pytest.raises(HdapError) as err:
        load_fleet(path)
    message = str(err.value)
    assert message.startswith("fleet.csv: "), message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    # The CLI prints the very same message, on one line, and exits 2.
    assert cli.main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {message}\n"
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.parametrize("case,content,fragments", BAD_FILES[:12], ids=[c[0] for c in BAD_FILES[:12]])
def test_uploaded_bytes_get_the_same_message_with_the_upload_name(case, content, fragments):
    with pytest.raises(HdapError) as err:
        load_fleet(content, name="upload.csv")
    assert str(err.value).startswith("upload.csv: ")
    for fragment in fragments:
        assert fragment in str(err.value)


def test_good_file_loads_into_a_typed_fleet(tmp_path):
    path = tmp_path / "fleet.csv"
    path.write_bytes(b"device_id,probe_conv_ms,mode,probe_copy_ms,temp,agent_url\n"
                     b"0042,2.5,eco,3,40.5,http://10.0.0.2:8080\n0043,2.6,perf,3.1,41,\n")
    fleet = load_fleet(path)
    assert isinstance(fleet, Fleet)
    assert fleet.n_devices == 2
    assert list(fleet.device_ids) == ["0042", "0043"]  # ids stay text: leading zeros kept
    assert fleet.probe_columns == ("probe_conv_ms", "probe_copy_ms")
    assert fleet.context_columns == ("mode", "temp", "agent_url")
    assert fleet.numeric_context_columns == ("temp",)
    assert fleet.categorical_context_columns == ("mode", "agent_url")
    assert fleet.sku is None
    assert fleet.source == "fleet.csv"
    assert fleet.probes().dtype == np.float64
    np.testing.assert_allclose(fleet.probes(), [[2.5, 3.0], [2.6, 3.1]])
    assert isinstance(fleet.frame.index, pd.RangeIndex)


def test_validate_prints_a_summary_and_exits_0(tmp_path, capsys):
    frame, _ = synthetic_fleet(50, seed=1)
    path = write_fleet(frame, tmp_path / "f.csv")
    assert cli.main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "f.csv: 50 devices" in out
    assert "probe columns (6): probe_conv3x3_ms" in out
    assert "numeric ambient_c, battery_health; categorical power_mode, firmware" in out
    assert "SKU: edge-a" in out


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_csv_gzip_and_parquet_load_the_same_fleet(tmp_path, suffix):
    frame, _ = synthetic_fleet(200, seed=3)
    fleet = load_fleet(write_fleet(frame, tmp_path / f"f{suffix}"))
    assert fleet.n_devices == 200
    assert list(fleet.device_ids) == list(frame["device_id"])
    np.testing.assert_allclose(fleet.probes(), frame[list(fleet.probe_columns)].to_numpy())
    assert fleet.sku == "edge-a"


def test_format_is_detected_from_content_not_name(tmp_path):
    frame, _ = synthetic_fleet(30, seed=4)
    gz = write_fleet(frame, tmp_path / "a.csv.gz").read_bytes()
    pq = write_fleet(frame, tmp_path / "a.parquet").read_bytes()
    assert load_fleet(gz, name="renamed.csv").n_devices == 30
    assert load_fleet(pq, name="renamed.csv").n_devices == 30
    (tmp_path / "b.txt").write_bytes(pq)
    assert load_fleet(tmp_path / "b.txt").n_devices == 30


def test_file_like_upload_is_read(tmp_path):
    fleet = load_fleet(io.BytesIO(GOOD), name="up.csv")
    assert fleet.n_devices == 3 and fleet.source == "up.csv"


def test_semicolon_file_with_decimal_commas_is_detected():
    content = b"device_id;probe_conv_ms;probe_copy_ms;temp\nd1;2,5;3,25;40,5\nd2;2,75;3;41\n"
    fleet = load_fleet(content, name="eu.csv")
    np.testing.assert_allclose(fleet.probes(), [[2.5, 3.25], [2.75, 3.0]])
    assert fleet.numeric_context_columns == ("temp",)
    assert "read as semicolon-separated" in fleet.notes


def test_tab_separated_file_is_detected():
    fleet = load_fleet(b"device_id\tprobe_a_ms\tprobe_b_ms\nd1\t1\t2\n", name="t.tsv")
    np.testing.assert_allclose(fleet.probes(), [[1.0, 2.0]])


def test_utf8_bom_and_windows_line_ends_are_tolerated():
    content = b"\xef\xbb\xbf" + GOOD.replace(b"\n", b"\r\n")
    fleet = load_fleet(content, name="win.csv")
    assert list(fleet.device_ids) == ["d1", "d2", "d3"]
    assert fleet.probe_columns == ("probe_conv_ms", "probe_copy_ms")
    np.testing.assert_allclose(fleet.probes()[:, 0], [2.5, 2.6, 2.4])


def test_line_numbers_count_blank_lines_as_the_file_does():
    content = HEADER + b"d1,1,2\n\nd2,1,2\n\nd3,bad,2\n"
    with pytest.raises(HdapError, match=r"'bad' at line 6\)"):
        load_fleet(content, name="gaps.csv")
    fleet = load_fleet(HEADER + b"d1,1,2\n\nd2,1,2\n\n", name="gaps.csv")
    assert fleet.n_devices == 2


def test_comment_and_blank_lines_before_the_header_are_skipped():
    content = b"# exported by fleetctl 2.1\n\n" + HEADER + b"d1,1,2\nd2,x,2\n"
    with pytest.raises(HdapError, match=r"'x' at line 5\)"):
        load_fleet(content, name="c.csv")
    fleet = load_fleet(content.replace(b"x", b"3"), name="c.csv")
    assert fleet.n_devices == 2
    assert "skipped 2 blank or # comment lines before the header" in fleet.notes


def test_many_offending_rows_are_summarised_on_one_line():
    rows = b"".join(b"d%d,0,2\n" % i for i in range(40))
    with pytest.raises(HdapError) as err:
        load_fleet(HEADER + rows, name="z.csv")
    assert "40 non-positive values at lines 2, 3, 4, 5, 6 and 35 more" in str(err.value)


def test_trailing_delimiter_column_is_ignored():
    fleet = load_fleet(b"device_id,probe_a_ms,probe_b_ms,\nd1,1,2,\nd2,1,3,\n", name="t.csv")
    assert fleet.context_columns == ()
    assert any("empty unnamed column" in n for n in fleet.notes)


def test_picking_a_sku_drops_the_others_and_says_so():
    content = b"device_id,sku,probe_conv_ms,probe_copy_ms\nd1,nano,1,2\nd2,pi4,1,2\nd3,pi4,x,2\n"
    fleet = load_fleet(content, name="m.csv", sku="nano")
    assert fleet.sku == "nano" and list(fleet.device_ids) == ["d1"]
    assert any("dropped 2 rows of other SKUs (pi4: 2)" in n for n in fleet.notes)
    # Offending rows of the picked SKU are still reported with their file line.
    with pytest.raises(HdapError, match=r"'x' at line 4"):
        load_fleet(content, name="m.csv", sku="pi4")


def test_unknown_or_pointless_sku_is_refused():
    content = b"device_id,sku,probe_conv_ms,probe_copy_ms\nd1,nano,1,2\n"
    with pytest.raises(HdapError, match=r"SKU 'tx2' is not in the file \(SKUs: nano: 1 device\)"):
        load_fleet(content, name="m.csv", sku="tx2")
    with pytest.raises(HdapError, match="has no sku column"):
        load_fleet(GOOD, name="g.csv", sku="nano")


def test_cli_validate_takes_sku(tmp_path, capsys):
    path = tmp_path / "m.csv"
    path.write_bytes(b"device_id,sku,probe_conv_ms,probe_copy_ms\nd1,nano,1,2\nd2,pi4,1,2\n")
    assert cli.main(["validate", str(path), "--sku", "pi4"]) == 0
    out = capsys.readouterr().out
    assert "1 devices" in out or "1 device" in out
    assert "SKU: pi4" in out and "dropped 1 row of other SKUs (nano: 1)" in out


def test_single_device_fleet_loads_with_a_note():
    fleet = load_fleet(HEADER + b"only,1,2\n", name="one.csv")
    assert fleet.n_devices == 1
    assert any("single device" in n for n in fleet.notes)


def test_identical_devices_load_with_a_note():
    fleet = load_fleet(HEADER + b"a,1,2\nb,1,2\nc,1,2\n", name="same.csv")
    assert fleet.n_devices == 3
    assert any("identical probe values" in n for n in fleet.notes)


def test_missing_path_and_folder_are_refused(tmp_path):
    with pytest.raises(HdapError, match="no such file"):
        load_fleet(tmp_path / "nope.csv")
    with pytest.raises(HdapError, match="is a folder"):
        load_fleet(tmp_path)


def test_fleet_from_frame_applies_the_same_checks():
    frame = pd.DataFrame({"device_id": [1, 2, 2], "probe_a_ms": [1.0, 2.0, 3.0], "probe_b_ms": ["1", "2", "3"]})
    with pytest.raises(HdapError, match=r"<frame>: column device_id has 1 duplicated id \('2' at data rows 2, 3"):
        fleet_from_frame(frame)
    frame.loc[2, "device_id"] = 3
    fleet = fleet_from_frame(frame, source="mem")
    assert list(fleet.device_ids) == ["1", "2", "3"]
    assert fleet.probes().dtype == np.float64
    with pytest.raises(HdapError, match="data row 2"):
        fleet_from_frame(frame.assign(probe_a_ms=[1.0, np.nan, 2.0]))


def test_parquet_errors_name_rows_not_lines(tmp_path):
    frame = pd.DataFrame({"device_id": ["a", "b"], "probe_a_ms": [1.0, -2.0], "probe_b_ms": [1.0, 1.0]})
    frame.to_parquet(tmp_path / "f.parquet")
    with pytest.raises(HdapError, match=r"f.parquet: column probe_a_ms has 1 non-positive value at data row 2;"):
        load_fleet(tmp_path / "f.parquet")


def test_subset_keeps_columns_and_resets_index():
    frame, _ = synthetic_fleet(20, seed=0)
    fleet = fleet_from_frame(frame)
    sub = fleet.subset(np.arange(20) % 2 == 1)
    assert sub.n_devices == 10 and list(sub.device_ids) == list(fleet.device_ids[1::2])
    assert isinstance(sub.frame.index, pd.RangeIndex)
    assert sub.probe_columns == fleet.probe_columns and sub.sku == fleet.sku
    assert list(fleet.subset([3, 1]).device_ids) == [fleet.device_ids[3], fleet.device_ids[1]]


def test_fingerprint_changes_with_content():
    frame, _ = synthetic_fleet(20, seed=0)
    a = fleet_from_frame(frame)
    b = fleet_from_frame(frame.assign(probe_launch_ms=frame["probe_launch_ms"] * 1.01))
    assert a.fingerprint() == fleet_from_frame(frame).fingerprint()
    assert a.fingerprint() != b.fingerprint()


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".csv"])
def test_a_million_devices_load_and_validate(tmp_path, suffix):
    # Its speed is measured by benchmarks/fleet.py, not here: this machine is shared.
    frame, _ = synthetic_fleet(1_000_000, seed=0)
    path = write_fleet(frame, tmp_path / f"big{suffix}")
    del frame
    fleet = load_fleet(path)
    assert fleet.n_devices == 1_000_000
