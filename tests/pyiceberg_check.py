"""Reads pitwall's lake with PyIceberg and DuckDB, independently of pitwall, and checks
it against what pitwall reported (a JSON file written by the Rust integration test).
PyIceberg goes through the catalog (SQLite, PostgreSQL or a REST catalog) and reads the tables from
wherever they are (local or S3); DuckDB is given the Parquet data files of each table's
current snapshot and must agree on row counts and sums.

Usage: python pyiceberg_check.py EXPECTED.json
Exits non-zero, with every disagreement listed, if PyIceberg sees anything else.
"""

import json
import math
import os
import sys
import tempfile
from collections import defaultdict

import datetime
import decimal

import duckdb

import pyarrow.compute as pc
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.transforms import DayTransform

PARTITION_COLUMN = {
    "raw.events": "ingest_time",
    "clean.car": "time",
    "clean.sensor": "time",
    "metrics.windows": "window_start",
    "anomalies.events": "time",
    "quarantine.rejects": "ingest_time",
    "quarantine.late": "time",
}


def main(path):
    expected = json.load(open(path))
    props = {k: v for k, v in expected["catalog"].items() if k not in ("schema_queries", "type")}
    if expected["catalog"].get("type") == "rest":
        catalog = RestCatalog("pitwall", **props)
    else:
        catalog = SqlCatalog("pitwall", **props)
    problems = []

    def check(what, got, want):
        if got != want:
            problems.append(f"{what}: pyiceberg sees {got!r}, pitwall wrote {want!r}")

    namespaces = sorted(ns[0] for ns in catalog.list_namespaces())
    check("namespaces", namespaces, ["anomalies", "clean", "metrics", "quarantine", "raw"])

    tables = {}
    for name, want in expected["counts"].items():
        table = catalog.load_table(name)
        data = table.scan().to_arrow()
        tables[name] = data
        check(f"{name} row count", data.num_rows, want)
        spec = table.spec()
        col = PARTITION_COLUMN[name]
        fields = [(table.schema().find_field(f.source_id).name, type(f.transform)) for f in spec.fields]
        check(f"{name} partitioning", fields, [(col, DayTransform)])

    # Values: per-driver counts and sums in the clean car table.
    car = tables["clean.car"].to_pydict()
    by_driver = defaultdict(lambda: {"n": 0, "rpm_sum": 0, "temp_max": float("-inf")})
    for driver, rpm, temp in zip(car["driver"], car["rpm"], car["engine_temp_c"]):
        d = by_driver[driver]
        d["n"] += 1
        d["rpm_sum"] += rpm
        d["temp_max"] = max(d["temp_max"], temp)
    for row in expected["car_by_driver"]:
        got = by_driver.get(row["driver"])
        check(f"clean.car driver {row['driver']}", got, {k: row[k] for k in ("n", "rpm_sum", "temp_max")})

    # Anomalies, row by row.
    a = tables["anomalies.events"]
    times = pc.cast(a["time"], "int64").to_pylist()
    got = sorted(
        (
            {"id": i, "phase": ph, "rule": r, "source_id": s, "time_us": t, "observed": o}
            for i, ph, r, s, t, o in zip(
                a["id"].to_pylist(), a["phase"].to_pylist(), a["rule"].to_pylist(), a["source_id"].to_pylist(),
                times, a["observed"].to_pylist()
            )
        ),
        key=lambda x: (x["id"], x["phase"]),
    )
    check("anomalies.events rows", got, expected["anomalies"])

    # Rejects with their reasons.
    r = tables["quarantine.rejects"]
    got = sorted(
        ({"partition": p, "offset": o, "reason": why} for p, o, why in zip(
            r["partition"].to_pylist(), r["offset"].to_pylist(), r["reason"].to_pylist())),
        key=lambda x: (x["partition"], x["offset"]),
    )
    check("quarantine.rejects rows", got, expected["rejects"])

    # The snapshot summary records the bus offsets the newest commit covers.
    raw = catalog.load_table("raw.events")
    summary = raw.current_snapshot().summary
    offsets = json.loads(summary["pitwall.offsets"])
    want = {f"telemetry.raw/{row['partition']}": row["next"] for row in expected["raw_next_offsets"]}
    check("raw.events pitwall.offsets", offsets, want)
    check("raw.events total offsets", sum(offsets.values()), expected["produced"])

    if problems:
        print("pyiceberg disagrees with pitwall:")
        for p in problems:
            print("  " + p)
        return 1
    print(f"pyiceberg agrees: {len(expected['counts'])} tables, {sum(expected['counts'].values())} rows")
    return duckdb_check(catalog, expected)


def canonical(v):
    """A value as both engines can be compared on: timestamps as epoch microseconds."""
    if isinstance(v, datetime.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=datetime.timezone.utc)
        return round(v.timestamp() * 1_000_000)
    if isinstance(v, str) and len(v) >= 19 and v[4] == "-" and v[10] in "T ":
        try:
            return canonical(datetime.datetime.fromisoformat(v.replace("Z", "+00:00")))
        except ValueError:
            return v
    if isinstance(v, decimal.Decimal):
        return float(v)
    return v


def close(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)
    return a == b


def duckdb_check(catalog, expected):
    """DuckDB over the Parquet files each table's current snapshot lists (fetched through
    the table's own FileIO, so S3 needs no DuckDB extension)."""
    problems = []
    con = duckdb.connect()
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name in expected["counts"]:
            table = catalog.load_table(name)
            local = []
            for i, task in enumerate(table.scan().plan_files()):
                path = os.path.join(tmp, f"{name}-{i}.parquet")
                with table.io.new_input(task.file.file_path).open() as src, open(path, "wb") as dst:
                    dst.write(src.read())
                local.append(path)
            files[name] = local

        def scan(name):
            if not files[name]:
                return None
            return "read_parquet([" + ", ".join(f"'{p}'" for p in files[name]) + "], union_by_name = true)"

        for name, want in expected["counts"].items():
            src = scan(name)
            got = con.execute(f"SELECT count(*) FROM {src}").fetchone()[0] if src else 0
            if got != want:
                problems.append(f"{name} row count: duckdb sees {got}, pitwall wrote {want}")
        for row in expected["car_by_driver"]:
            got = con.execute(
                f"SELECT count(*), sum(rpm), max(engine_temp_c) FROM {scan('clean.car')} WHERE driver = ?",
                [row["driver"]],
            ).fetchone()
            want = (row["n"], row["rpm_sum"], row["temp_max"])
            if not all(close(g, w) for g, w in zip(got, want)):
                problems.append(f"clean.car driver {row['driver']}: duckdb sees {got}, pitwall wrote {want}")
        if expected.get("window_sums"):
            got = {
                (w, f): (n, c, s)
                for w, f, n, c, s in con.execute(
                    f'SELECT "window", field, count(*), sum("count"), sum("sum") FROM {scan("metrics.windows")} GROUP BY 1, 2'
                ).fetchall()
            }
            for row in expected["window_sums"]:
                g = got.get((row["window"], row["field"]))
                want = (row["n"], row["count_sum"], row["sum_sum"])
                if g is None or not all(close(a, b) for a, b in zip(g, want)):
                    problems.append(f"metrics.windows {row['window']}/{row['field']}: duckdb sees {g}, pitwall wrote {want}")
            if len(got) != len(expected["window_sums"]):
                problems.append(f"metrics.windows: duckdb sees {len(got)} window/field pairs, pitwall wrote {len(expected['window_sums'])}")
        queries = expected["catalog"].get("schema_queries", [])
        for schema in {name.split(".")[0] for name in files}:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        for name in files:
            if files[name]:
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM {scan(name)}")
        for q in queries:
            cur = con.execute(q["sql"])
            cols = [d[0] for d in cur.description]
            got = [[canonical(v) for v in row] for row in cur.fetchall()]
            want = [[canonical(r.get(c)) for c in cols] for r in q["rows"]]
            first = q["sql"].splitlines()[0]
            if len(got) != len(want):
                problems.append(f"schema.sql query {first!r}: duckdb gives {len(got)} rows, pitwall query {len(want)}")
                continue
            for i, (g, w) in enumerate(zip(got, want)):
                if not all(close(a, b) for a, b in zip(g, w)):
                    problems.append(f"schema.sql query {first!r} row {i}: duckdb {g}, pitwall query {w} ({cols})")
                    break
        if queries:
            print(f"duckdb agrees on the {len(queries)} queries of schema.sql")
    if problems:
        print("duckdb disagrees with pitwall:")
        for p in problems:
            print("  " + p)
        return 1
    print(f"duckdb agrees: {sum(len(v) for v in files.values())} data files, {sum(expected['counts'].values())} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
