"""Writing a fitted clustering's ``device_id,cluster`` table as CSV (`hdap cluster --out`)."""

from __future__ import annotations

import io
from pathlib import Path

from hdap_engine.errors import HdapError
from hdap_engine.fleet.clustering import Clustering


def write_assignments(clustering: Clustering, path: str | Path) -> Path:
    """Write ``device_id,cluster`` for every device of the fitted fleet as CSV.

    Parameters
    ----------
    clustering:
        A fitted `Clustering`.
    path:
        The CSV file to write (its folder must exist).

    Returns
    -------
    The path written.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    path = Path(path)
    table = pa.table(
        {"device_id": pa.Array.from_pandas(clustering.device_ids_), "cluster": clustering.labels_}
    )
    try:
        with open(path, "wb") as sink:
            # pyarrow quotes the header; write a plain one. Ids that need
            # quotes (a comma inside) get them.
            sink.write(b"device_id,cluster\n")
            body = io.BytesIO()
            try:
                pacsv.write_csv(table, body, pacsv.WriteOptions(include_header=False, quoting_style="none"))
            except pa.ArrowInvalid:
                body = io.BytesIO()
                pacsv.write_csv(table, body, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
            sink.write(body.getbuffer())
    except (OSError, pa.ArrowException) as exc:
        reason = getattr(exc, "strerror", None) or _first_line(exc)
        raise HdapError(f"{path}: cannot write the assignments ({reason}); check the folder exists and is writable") from None
    return path


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:160] if lines else type(exc).__name__
