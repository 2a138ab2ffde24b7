"""The InfluxDB 1.x peer for `pitwall bench query`: the same rows loaded into InfluxDB
as line protocol, then the questions of deploy/trino/schema.sql that InfluxQL can ask.

Usage: influxdb_queries.py DATA_DIR INFLUX_URL RUNS

Loading (timed apart, not part of any query): the rows of clean.car, metrics.windows and
anomalies.events, read from the lake's current Parquet files through DuckDB (as
duckdb_queries.py lists them), are written to database `bench` as line protocol in
batches of 5,000 lines. The schema is the one an InfluxDB user would pick for these
questions: what they group by is a tag (car: driver, team, lap, sector, session, track;
windows: measurement, source_id, window, field; anomalies: rule, severity, phase,
source_id, id, ...), everything else a field. Every loaded point is counted back.

Queries: InfluxQL has no joins (question 2) and groups only by time and tags, never by
an expression (question 3's speed bands), so those two are reported as not expressible.
Question 4's mean of the four tyre temperatures is the mean of their four means (the
same number: no column has a null). Question 6 sorts its few groups in the client
(InfluxQL orders by time only). Each answer's row count is checked against DuckDB's
for the same SQL over the same files, so both did the same work.

Prints "query N  MS ms  R rows  ..." per query (the median of RUNS runs) as
duckdb_queries.py does, or "query N  n/a  REASON".
"""

import json
import statistics
import sys
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from duckdb_queries import lake_views, schema_queries

BATCH = 5_000
# Per question: the column holding a count in DuckDB's answer and in InfluxDB's (after
# the time column); their sums over the answer must agree.
COUNTS = {1: (5, 4), 5: (5, 3), 6: (2, 1)}


def esc_tag(col):
    """SQL for a line-protocol tag value (spaces, commas and '=' escaped)."""
    return f"replace(replace(replace(replace({col}, '\\', '\\\\'), ' ', '\\ '), ',', '\\,'), '=', '\\=')"


def build_line_sql(con, table, measurement, tags, time_col, extra_fields=()):
    """DuckDB SQL that turns every row of `table` into one line of line protocol."""
    cols = con.execute(f"DESCRIBE {table}").fetchall()
    parts = [f"'{measurement}'"]
    for t in tags:
        value = esc_tag(f'CAST("{t}" AS VARCHAR)')
        parts.append(f"CASE WHEN \"{t}\" IS NULL THEN NULL ELSE '{t}=' || {value} END")
    key = "concat_ws(',', " + ", ".join(parts) + ")"
    fields = []
    for name, kind, *_ in cols:
        if name in tags or name == time_col:
            continue
        c = f'"{name}"'
        if kind in ("DOUBLE", "FLOAT"):
            v = f"CASE WHEN isfinite({c}) THEN CAST({c} AS VARCHAR) END"
        elif kind in ("BIGINT", "INTEGER", "SMALLINT"):
            v = f"CAST({c} AS VARCHAR) || 'i'"
        elif kind == "BOOLEAN":
            v = f"CAST({c} AS VARCHAR)"
        elif kind.startswith("TIMESTAMP"):
            v = f"CAST(epoch_us({c}) AS VARCHAR) || 'i'"
        else:
            v = f"'\"' || replace(replace(CAST({c} AS VARCHAR), '\\', '\\\\'), '\"', '\\\"') || '\"'"
        fields.append(f"'{name}=' || {v}")
    for name, expr in extra_fields:
        fields.append(f"'{name}=' || {expr}")
    values = "concat_ws(',', " + ", ".join(fields) + ")"
    return f"SELECT {key} || ' ' || {values} || ' ' || CAST(epoch_us(\"{time_col}\") AS VARCHAR) FROM {table}"


class Influx:
    def __init__(self, url):
        self.url = url.rstrip("/")

    def write(self, body):
        req = urllib.request.Request(f"{self.url}/write?db=bench&precision=u", data=body, method="POST")
        try:
            with urllib.request.urlopen(req) as r:
                if r.status != 204:
                    raise SystemExit(f"InfluxDB /write answered {r.status}: {r.read()[:300]!r}")
        except urllib.error.HTTPError as e:
            raise SystemExit(f"InfluxDB /write answered {e.code}: {e.read()[:300]!r}")

    def query(self, q):
        url = f"{self.url}/query?" + urllib.parse.urlencode({"db": "bench", "q": q, "epoch": "u"})
        try:
            with urllib.request.urlopen(url) as r:
                answer = json.load(r)
        except urllib.error.HTTPError as e:
            raise SystemExit(f"InfluxDB /query answered {e.code} to {q}: {e.read()[:300]!r}")
        rows = []
        for result in answer.get("results", []):
            if "error" in result:
                raise SystemExit(f"InfluxDB: {result['error']} in {q}")
            for series in result.get("series", []):
                tags = series.get("tags", {})
                rows.extend((tags, v) for v in series["values"])
        return rows


def load(con, influx, table, sql):
    """Writes every line of `sql`'s answer; returns (lines, seconds)."""
    started = time.perf_counter()
    cur = con.execute(sql)
    inflight = threading.Semaphore(4)
    sent = 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = []

        def post(body):
            try:
                influx.write(body)
            finally:
                inflight.release()

        while True:
            chunk = cur.fetchmany(BATCH)
            if not chunk:
                break
            lines = [r[0] for r in chunk]
            if any(l is None for l in lines):
                raise SystemExit(f"{table}: a row could not be written as line protocol")
            inflight.acquire()
            futures.append(pool.submit(post, "\n".join(lines).encode()))
            sent += len(lines)
        for f in futures:
            f.result()
    return sent, time.perf_counter() - started


def main():
    data_dir, url, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    con = lake_views(data_dir)
    influx = Influx(url)
    # Per table: measurement, tags, time column, extra fields, and a field every point
    # has (to count the points back).
    schemas = {
        "clean.car": ("car", ["driver", "lap", "sector", "session", "team", "track"], "time", (), "speed_kph"),
        "metrics.windows": ("windows", ["field", "measurement", "source_id", "window"], "window_start", (), '"count"'),
        # source_id once more as a field: count(DISTINCT) in InfluxQL works on fields only.
        "anomalies.events": (
            "anomalies",
            ["field", "id", "kind", "measurement", "phase", "rule", "severity", "source_id"],
            "time",
            (("source", "'\"' || source_id || '\"'"),),
            "observed",
        ),
    }
    for table, (measurement, tags, time_col, extra, always) in schemas.items():
        sent, secs = load(con, influx, table, build_line_sql(con, table, measurement, tags, time_col, extra))
        stored = influx.query(f"SELECT count({always}) FROM {measurement}")
        n = stored[0][1][1] if stored else 0
        if n != sent:
            raise SystemExit(f"{table}: wrote {sent} points, InfluxDB holds {n} (points overwritten by a duplicate series and time?)")
        print(f"loaded {table}: {sent} points in {secs:.1f} s ({sent / secs:,.0f} points/s), all {n} counted back")

    t0, t1 = con.execute("SELECT epoch_us(min(\"time\")), epoch_us(max(\"time\")) FROM clean.car").fetchone()
    w0, w1 = con.execute("SELECT epoch_us(min(window_start)), epoch_us(max(window_start)) FROM metrics.windows").fetchone()
    # InfluxQL's GROUP BY time needs a bounded range (a dashboard's time picker gives one).
    car_range = f"time >= {t0}u AND time <= {t1}u"
    win_range = f"time >= {w0}u AND time <= {w1}u"
    influxql = [
        "SELECT mean(speed_kph) AS avg_speed_kph, max(speed_kph) AS top_speed_kph, mean(throttle_pct) AS avg_throttle_pct,"
        f" count(speed_kph) AS samples FROM car WHERE {car_range} GROUP BY time(1m), driver fill(none)",
        "n/a  InfluxQL has no joins (anomalies started within each lap's time span)",
        "n/a  InfluxQL groups by time and tags only, not by an expression (50 km/h speed bands)",
        "SELECT mean(engine_temp_c) AS engine_temp_c, max(engine_temp_c) AS engine_temp_max_c, mean(oil_temp_c) AS oil_temp_c,"
        " (mean(tyre_temp_fl_c) + mean(tyre_temp_fr_c) + mean(tyre_temp_rl_c) + mean(tyre_temp_rr_c)) / 4 AS tyre_temp_c,"
        " mean(ers_pct) AS ers_pct FROM car GROUP BY driver, lap",
        "SELECT mean(\"mean\") AS mean, max(p99) AS p99_max, sum(\"count\") AS samples FROM windows"
        f" WHERE \"window\" = 'car_5s' AND {win_range} GROUP BY time(1m), source_id, \"field\" fill(none)",
        "SELECT count(observed) AS episodes, count(distinct(source)) AS sources FROM anomalies"
        " WHERE phase = 'start' GROUP BY rule, severity",
    ]
    print(f"InfluxDB at {url}: the six questions as InfluxQL, median of {runs} runs")
    for i, (sql, q) in enumerate(zip(schema_queries(), influxql), 1):
        if q.startswith("n/a"):
            print(f"query {i} {q}")
            continue
        expected = con.execute(sql).fetchall()
        times = []
        for _ in range(max(runs, 1)):
            t = time.perf_counter()
            rows = influx.query(q)
            if i == 6:
                rows.sort(key=lambda r: (-r[1][1], r[0]["rule"], r[0]["severity"]))
            times.append(time.perf_counter() - t)
        if len(rows) != len(expected):
            raise SystemExit(f"query {i}: InfluxDB answered {len(rows)} rows, DuckDB {len(expected)} for the same question")
        if i in COUNTS:
            duck, flux = COUNTS[i]
            a, b = sum(r[duck] for r in expected), sum(r[1][flux] for r in rows)
            if a != b:
                raise SystemExit(f"query {i}: InfluxDB counted {b} in all, DuckDB {a} for the same question")
        print(f"query {i} {statistics.median(times) * 1e3:>9.1f} ms  {len(rows)} rows  {q[:60]}")


if __name__ == "__main__":
    main()
