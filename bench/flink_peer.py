"""The processing peer: Apache Flink (PyFlink's Table API, the local mini cluster,
parallelism 1) computing pitwall's default windows over a JSON lines file of the
simulators' events, with an event-time watermark 2 s behind the newest event (pitwall's
processor.out-of-orderness).

The windows are pitwall.toml's: car_1s (sliding 1 s every 500 ms) and car_5s (sliding
5 s every 1 s) over speed_kph, rpm, throttle_pct and brake (as 0/1) of each car, and
sensor_10s (tumbling 10 s) over temperature_c of each sensor; per source, window and
field: count, min, max, sum, mean, sample standard deviation, first, last and the 50th,
95th and 99th percentiles (Flink's built-in PERCENTILE, exact). First and last are the
values with the earliest and latest event time, as in pitwall: bench/flink/ (First and
Last over ByTime), compiled here with javac against PyFlink's own jars, since Flink's
FIRST_VALUE and LAST_VALUE take arrival order and cannot be merged, which sliding windows
need. What pitwall does besides (every other field of the points, its rules, the lake)
Flink does not do here.

Usage: flink_peer.py EVENTS.jsonl blackhole|filesystem [OUT_DIR]
Prints "flink: N events in W s wall, C CPU-s" for the whole run: from start to the job's
end, this Python process and the JVM it started (the local cluster) together.
"""

import glob
import os
import subprocess
import sys
import tempfile
import time

import pyflink

from pyflink.table import EnvironmentSettings, TableEnvironment

STARTED = time.monotonic()
CAR_FIELDS = ["speed_kph", "rpm", "throttle_pct", "brake"]


def aggregates(fields):
    """Every aggregate pitwall's windows compute, for each of `fields` (columns of v)."""
    out = []
    for f in fields:
        x = f"v.{f}"
        out += [
            f"COUNT({x}) AS {f}_count",
            f"MIN({x}) AS {f}_min",
            f"MAX({x}) AS {f}_max",
            f"SUM({x}) AS {f}_sum",
            f"AVG({x}) AS {f}_mean",
            f"STDDEV_SAMP({x}) AS {f}_stddev",
            f"first_at({x}, v.t) AS {f}_first",
            f"last_at({x}, v.t) AS {f}_last",
            f"PERCENTILE({x}, 0.5) AS {f}_p50",
            f"PERCENTILE({x}, 0.95) AS {f}_p95",
            f"PERCENTILE({x}, 0.99) AS {f}_p99",
        ]
    return ",\n  ".join(out)


def cpu_seconds():
    """CPU time of this process and every process under it (the JVM), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # After the name: state, ppid, ..., utime (14th field), stime (15th).
            stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    mine, total, frontier = {os.getpid()}, 0, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        total += stats.get(parent, (0, 0))[1]
        for pid, (ppid, _) in stats.items():
            if ppid == parent and pid not in mine:
                mine.add(pid)
                frontier.append(pid)
    return total / tick


def udf_jar():
    """bench/flink/*.java compiled into a jar (once per change of the sources)."""
    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob(os.path.join(here, "flink", "*.java")))
    cache = os.path.join(os.environ.get("PITWALL_CACHE", os.path.expanduser("~/.cache/pitwall")), "flink-udf")
    jar = os.path.join(cache, "pitwall-flink-udf.jar")
    if os.path.exists(jar) and all(os.path.getmtime(jar) >= os.path.getmtime(s) for s in sources):
        return jar
    os.makedirs(cache, exist_ok=True)
    lib = os.path.join(os.path.dirname(pyflink.__file__), "lib")
    classpath = ":".join(glob.glob(os.path.join(lib, "*.jar")))
    with tempfile.TemporaryDirectory() as classes:
        subprocess.run(["javac", "-nowarn", "-cp", classpath, "-d", classes, *sources], check=True)
        subprocess.run(["jar", "cf", jar, "-C", classes, "."], check=True)
    return jar


def sink(name, fields, kind, out_dir):
    cols = ["source_id STRING", "window_start TIMESTAMP(3)", "window_end TIMESTAMP(3)"]
    for f in fields:
        cols += [f"{f}_count BIGINT"] + [
            f"{f}_{a} DOUBLE"
            for a in ["min", "max", "sum", "mean", "stddev", "first", "last", "p50", "p95", "p99"]
        ]
    if kind == "blackhole":
        options = "'connector' = 'blackhole'"
    else:
        options = f"'connector' = 'filesystem', 'path' = '{out_dir}/{name}', 'format' = 'json'"
    return f"CREATE TABLE {name} ({', '.join(cols)}) WITH ({options})"


def main(path, kind, out_dir=None):
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = env.get_config()
    config.set("parallelism.default", "1")
    config.set("pipeline.name", "pitwall-peer")
    config.set("pipeline.jars", "file://" + udf_jar())
    env.execute_sql("CREATE TEMPORARY FUNCTION first_at AS 'pitwall.First' LANGUAGE JAVA")
    env.execute_sql("CREATE TEMPORARY FUNCTION last_at AS 'pitwall.Last' LANGUAGE JAVA")
    env.execute_sql(f"""
CREATE TABLE events (
  measurement STRING,
  tags ROW<driver STRING, sensor_id STRING>,
  fields ROW<speed_kph DOUBLE, rpm DOUBLE, throttle_pct DOUBLE, brake BOOLEAN, temperature_c DOUBLE>,
  `time` BIGINT,
  ts AS TO_TIMESTAMP_LTZ(`time` / 1000000, 3),
  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH ('connector' = 'filesystem', 'path' = '{path}', 'format' = 'json')""")
    # The values windowed, brake as 0/1 as pitwall counts booleans.
    env.execute_sql("""
CREATE TEMPORARY VIEW v AS SELECT
  measurement,
  COALESCE(tags.driver, tags.sensor_id) AS source_id,
  fields.speed_kph AS speed_kph,
  fields.rpm AS rpm,
  fields.throttle_pct AS throttle_pct,
  CASE WHEN fields.brake THEN 1.0 ELSE 0.0 END AS brake,
  fields.temperature_c AS temperature_c,
  `time` AS t,
  ts
FROM events""")
    windows = [
        ("car_1s", "car", CAR_FIELDS, "HOP(TABLE v, DESCRIPTOR(ts), INTERVAL '0.5' SECOND, INTERVAL '1' SECOND)"),
        ("car_5s", "car", CAR_FIELDS, "HOP(TABLE v, DESCRIPTOR(ts), INTERVAL '1' SECOND, INTERVAL '5' SECOND)"),
        ("sensor_10s", "sensor", ["temperature_c"], "TUMBLE(TABLE v, DESCRIPTOR(ts), INTERVAL '10' SECOND)"),
    ]
    statements = env.create_statement_set()
    for name, measurement, fields, tvf in windows:
        env.execute_sql(sink(name, fields, kind, out_dir))
        statements.add_insert_sql(f"""
INSERT INTO {name}
SELECT v.source_id, window_start, window_end,
  {aggregates(fields)}
FROM TABLE({tvf}) AS v
WHERE v.measurement = '{measurement}'
GROUP BY v.source_id, window_start, window_end""")
    statements.execute().wait()
    with open(path, "rb") as f:
        events = sum(1 for _ in f)
    wall = time.monotonic() - STARTED
    print(f"flink: {events} events in {wall:.2f} s wall, {cpu_seconds():.2f} CPU-s", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[2] not in ("blackhole", "filesystem"):
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
