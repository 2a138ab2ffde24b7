"""The peer for `pitwall bench query`: DuckDB running the seeds' typical queries
(deploy/trino/schema.sql) over the very Parquet files of the lake's current snapshots,
listed through PyIceberg from pitwall's SQLite catalog.

Usage: duckdb_queries.py DATA_DIR RUNS
Prints "query N  MS ms  FIRST_LINE" per query (the median of RUNS runs), as pitwall
bench query does.
"""

import os
import statistics
import sys
import time

import duckdb
from pyiceberg.catalog.sql import SqlCatalog

TABLES = ["clean.car", "clean.sensor", "metrics.windows", "anomalies.events"]


def lake_views(data_dir):
    """A DuckDB connection with a view per lake table over its current Parquet files."""
    data_dir = os.path.abspath(data_dir)
    catalog = SqlCatalog("pitwall", uri=f"sqlite:///{data_dir}/catalog.db", warehouse=f"file://{data_dir}/warehouse")
    con = duckdb.connect()
    for name in TABLES:
        files = [t.file.file_path.removeprefix("file://") for t in catalog.load_table(name).scan().plan_files()]
        schema = name.split(".")[0]
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        if files:
            listed = ", ".join(f"'{f}'" for f in files)
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{listed}], union_by_name = true)")
    return con


def schema_queries():
    """The queries of deploy/trino/schema.sql, in order, without their comments."""
    here = os.path.dirname(os.path.abspath(__file__))
    text = open(os.path.join(here, "..", "deploy", "trino", "schema.sql")).read()
    sql = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("--"))
    return [q.strip() for q in sql.split(";") if q.strip()]


def main():
    data_dir, runs = sys.argv[1], int(sys.argv[2])
    con = lake_views(data_dir)
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    print(f"duckdb {duckdb.__version__}, {threads} threads")
    for i, q in enumerate(schema_queries(), 1):
        times = []
        for _ in range(max(runs, 1)):
            t = time.perf_counter()
            rows = con.execute(q).fetchall()
            times.append(time.perf_counter() - t)
            if not rows:
                raise SystemExit(f"query {i} returned nothing")
        print(f"query {i} {statistics.median(times) * 1e3:>9.1f} ms  {len(rows)} rows  {q.splitlines()[0]}")


if __name__ == "__main__":
    main()
