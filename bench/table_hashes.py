"""Fingerprints every table of a pitwall lake, every column, read with PyIceberg (not
pitwall): per table the row count and, per column, an order-free hash of its values
(DuckDB's hash of each value, summed), and one of whole rows. Two runs that wrote the
same rows in any order and any files print the same lines.

Columns that hold the wall clock (when pitwall received a payload) are left out, and
so are the rows of raw.events' and quarantine.rejects' ingest_time; everything else
follows from the input.

Usage: python table_hashes.py DATA_DIR
Prints "table column hash" lines, sorted.
"""

import os
import sys

import duckdb
from pyiceberg.catalog.sql import SqlCatalog

# Set by the wall clock when a payload arrived, not by the input.
WALL_CLOCK = {"ingest_time"}


def main(data_dir):
    data_dir = os.path.abspath(data_dir)
    catalog = SqlCatalog(
        "pitwall",
        uri=f"sqlite:///{data_dir}/catalog.db",
        warehouse=f"file://{data_dir}/warehouse",
    )
    con = duckdb.connect()
    lines = []
    for namespace in sorted(n[0] for n in catalog.list_namespaces()):
        for _, name in sorted(catalog.list_tables(namespace)):
            table = f"{namespace}.{name}"
            arrow = catalog.load_table(table).scan().to_arrow()
            columns = [c for c in arrow.column_names if c not in WALL_CLOCK]
            con.register("t", arrow)
            quoted = [f'"{c}"' for c in columns]
            sums = ", ".join(f"coalesce(sum(hash({q})), 0)" for q in quoted)
            row = f"coalesce(sum(hash(struct_pack({', '.join(f'{q} := {q}' for q in quoted)}))), 0)"
            got = con.execute(f"SELECT count(*), {row}{', ' + sums if sums else ''} FROM t").fetchone()
            con.unregister("t")
            lines.append(f"{table} rows {got[0]}")
            lines.append(f"{table} * {int(got[1]) % (1 << 64):016x}")
            for c, h in zip(columns, got[2:]):
                lines.append(f"{table} {c} {int(h) % (1 << 64):016x}")
    print("\n".join(sorted(lines)))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
