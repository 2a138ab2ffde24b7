"""Small queries at interactive speed: one question over a table of a few thousand rows,
asked again and again as a dashboard refreshing every few seconds would, through
pitwall's HTTP SQL API (a kept-alive connection) and its PostgreSQL wire protocol (one
psycopg2 session), beside DuckDB over the same Parquet files (the lake's current
snapshot, listed through PyIceberg, as duckdb_queries.py does).

Usage: small_queries.py DATA_DIR HTTP_URL PG_HOST:PORT RUNS [SQL]
  SQL defaults to the anomalies question of deploy/trino/schema.sql's shape:
  episodes per rule and severity with their latest start.
Prints p50 and p99 in ms per door, and each answer's row count (checked equal).
The first run of each door is reported apart: it loads the table into pitwall's cache.
"""

import statistics
import sys
import time

import psycopg2
import requests

from duckdb_queries import lake_views

SQL = (
    "SELECT rule, severity, count(*) AS episodes, max(time) AS latest "
    "FROM anomalies.events WHERE phase = 'start' GROUP BY rule, severity ORDER BY episodes DESC"
)


def timed(run, runs):
    first_t = time.perf_counter()
    first = run()
    first_ms = (time.perf_counter() - first_t) * 1e3
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        rows = run()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return first_ms, statistics.median(times), p99, rows


def main():
    data_dir, url, pg, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    sql = sys.argv[5] if len(sys.argv) > 5 else SQL
    http = requests.Session()

    def over_http():
        r = http.post(f"{url}/api/v1/query?format=csv", data=sql)
        r.raise_for_status()
        return r.text.count("\n") - 1

    host, port = pg.split(":")
    conn = psycopg2.connect(host=host, port=int(port), user="bench", dbname="pitwall")
    conn.autocommit = True
    cur = conn.cursor()

    def over_pg():
        cur.execute(sql)
        return len(cur.fetchall())

    duck = lake_views(data_dir)

    def in_duckdb():
        return len(duck.execute(sql).fetchall())

    print(f"small query, {runs} runs each: {sql}")
    answers = {}
    for name, run in [("pitwall HTTP", over_http), ("pitwall PostgreSQL", over_pg), ("DuckDB (in process)", in_duckdb)]:
        first, p50, p99, rows = timed(run, runs)
        answers[name] = rows
        print(f"{name:<20} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  first {first:7.1f} ms  {rows} rows")
    if len(set(answers.values())) != 1:
        raise SystemExit(f"the answers differ: {answers}")


if __name__ == "__main__":
    main()
