"""PostgreSQL clients against pitwall's wire protocol, as BI tools and drivers use it.

Run by tests/postgres.rs with PG_HOST, PG_PORT, PG_TOKEN and T0 (the first point's
time, ns) set, after 10 sensors x 60 s of line protocol were written and committed.
Every check asserts; the script prints one line per check.
"""

import datetime as dt
import os
import sys
import time

import pg8000.dbapi
import psycopg2
import sqlalchemy
import sqlalchemy.dialects.postgresql

HOST, PORT, TOKEN = os.environ["PG_HOST"], int(os.environ["PG_PORT"]), os.environ["PG_TOKEN"]
T0 = int(os.environ["T0"])
start = dt.datetime.fromtimestamp(T0 / 1e9, dt.timezone.utc)


def ok(name):
    print(f"ok: {name}", flush=True)


def connect(password=TOKEN, dbname="pitwall"):
    return psycopg2.connect(
        host=HOST, port=PORT, user="grafana", password=password, dbname=dbname, connect_timeout=10
    )


# A wrong password and a wrong database are refused with PostgreSQL's errors.
for password, dbname, words in [
    ("wrong", "pitwall", "password authentication failed"),
    (TOKEN, "postgres", 'database "postgres" does not exist'),
]:
    try:
        connect(password, dbname)
        sys.exit(f"connected with password={password!r} dbname={dbname!r}")
    except psycopg2.OperationalError as e:
        assert words in str(e), str(e)
ok("wrong password and wrong database refused")

# psycopg2 (client-side parameters, simple protocol), as Superset's driver sends them.
conn = connect()
conn.autocommit = True
cur = conn.cursor()
cur.execute("SELECT version()")
assert cur.fetchone()[0].startswith("PostgreSQL 16"), "version() names a PostgreSQL version"
cur.execute(
    "SELECT sensor_id, count(*) AS n, min(temperature_c) AS lo FROM clean.sensor "
    "WHERE sensor_id = %s AND temperature_c > %s GROUP BY sensor_id",
    ("s-3", 0.0),
)
rows = cur.fetchall()
assert rows == [("s-3", 60, 23.0)], rows
assert [d.name for d in cur.description] == ["sensor_id", "n", "lo"], cur.description
cur.execute("SELECT max(time) FROM clean.sensor")
latest = cur.fetchone()[0]
assert latest == start + dt.timedelta(seconds=59), (latest, start)
# A quoted literal meets a boolean as PostgreSQL reads it ('t', 'f', 'yes', ...);
# SQLAlchemy 1.4's index query (Superset's) compares indisprimary = 'f'.
counts = []
for literal in ["t", "f", "true", "no"]:
    cur.execute(f"SELECT count(*) FROM pg_catalog.pg_index WHERE indisprimary = '{literal}'")
    counts.append(cur.fetchone()[0])
cur.execute("SELECT count(*) FROM pg_catalog.pg_index")
total = cur.fetchone()[0]
assert counts[0] + counts[1] == total and counts[0] == counts[2] and counts[1] == counts[3], (counts, total)
# int2vector columns taken apart as PostgreSQL does (SQLAlchemy's primary-key query).
cur.execute(
    "SELECT unnest(ix.indkey) AS attnum, generate_subscripts(ix.indkey, 1) AS ord "
    "FROM pg_catalog.pg_index ix WHERE ix.indisprimary AND ix.indkey = '1 2' LIMIT 2"
)
assert cur.fetchall() == [(1, 1), (2, 2)]
ok("psycopg2 with parameters, timestamps as timestamptz, PostgreSQL's literal and array rules")

# Session settings: SET, SHOW, transactions; the session goes on after errors.
cur.execute("SET application_name = 'superset'")
cur.execute("SHOW application_name")
assert cur.fetchone()[0] == "superset"
cur.execute("SHOW transaction isolation level")
assert cur.fetchone()[0] == "read committed"
cur.execute("SET TIME ZONE 'UTC'")
cur.execute("BEGIN")
cur.execute("SELECT 1")
cur.execute("COMMIT")
for sql, state, words in [
    ("INSERT INTO clean.sensor (sensor_id) VALUES ('x')", "25006", "read-only"),
    ("CREATE TABLE t (a int)", "25006", "read-only"),
    ("DROP TABLE clean.sensor", "25006", "read-only"),
    ("COPY clean.sensor TO STDOUT", "0A000", "COPY is not supported"),
    ("SELECT no_such_function(1)", "42883", "no_such_function"),
    ("SELECT * FROM clean.no_such_table", "42P01", "no_such_table"),
    ("SELEC 1", "42601", "SELEC"),
]:
    try:
        cur.execute(sql)
        sys.exit(f"{sql} did not fail")
    except psycopg2.Error as e:
        assert e.pgcode == state, (sql, e.pgcode, str(e))
        assert words in str(e), (sql, str(e))
    cur.execute("SELECT count(*) FROM clean.sensor")
    assert cur.fetchone()[0] == 601, "the session survives the error"
ok("writes, DDL, COPY and unknown names refused with SQLSTATEs; the session survives")
conn.close()

# SQLAlchemy's inspector: what Superset and Metabase call to list schemas, tables, columns.
engine = sqlalchemy.create_engine(f"postgresql+psycopg2://superset:{TOKEN}@{HOST}:{PORT}/pitwall")
insp = sqlalchemy.inspect(engine)
schemas = insp.get_schema_names()
for s in ["anomalies", "clean", "metrics", "quarantine", "raw"]:
    assert s in schemas, schemas
tables = insp.get_table_names(schema="clean")
assert "sensor" in tables, tables
# get_columns: SQLAlchemy 2's query over pg_attribute, pg_attrdef, pg_sequence and
# pg_collation (correlated subqueries behind CASE), as Superset's dataset editor uses it.
columns = {c["name"]: c for c in insp.get_columns("sensor", schema="clean")}
assert list(columns)[:3] == ["time", "sensor_id", "site"], columns
assert isinstance(columns["time"]["type"], sqlalchemy.dialects.postgresql.TIMESTAMP), columns["time"]
assert columns["time"]["type"].timezone and not columns["time"]["nullable"], columns["time"]
assert isinstance(columns["temperature_c"]["type"], sqlalchemy.dialects.postgresql.DOUBLE_PRECISION), columns
assert isinstance(columns["sensor_id"]["type"], sqlalchemy.dialects.postgresql.TEXT), columns
assert all(c["default"] is None and c.get("identity") is None for c in columns.values()), columns
# The rest of what Superset's dataset check and table browser ask: no keys, indexes,
# constraints or comments on a lake table, each answered rather than an error.
assert insp.get_pk_constraint("sensor", schema="clean") == {"name": None, "constrained_columns": []}
assert insp.get_foreign_keys("sensor", schema="clean") == []
assert insp.get_indexes("sensor", schema="clean") == []
assert insp.get_unique_constraints("sensor", schema="clean") == []
assert insp.get_check_constraints("sensor", schema="clean") == []
assert insp.get_table_comment("sensor", schema="clean") == {"text": None}
# What information_schema says agrees.
with engine.connect() as c:
    listed = [
        r[0]
        for r in c.execute(
            sqlalchemy.text(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = :s AND table_name = :t ORDER BY ordinal_position"
            ),
            {"s": "clean", "t": "sensor"},
        )
    ]
assert listed == list(columns), (listed, list(columns))
with engine.connect() as c:
    n = c.execute(sqlalchemy.text("SELECT count(*) FROM clean.sensor WHERE site = :site"), {"site": "plant-a"}).scalar()
    assert n == 600, n
engine.dispose()
ok(f"SQLAlchemy inspector: {len(schemas)} schemas, clean has {tables}, clean.sensor has {len(columns)} columns")

# pg8000 sends parameters over the extended protocol (Parse/Bind/Execute), as
# Grafana's driver (pgx) and JDBC do; a prepared statement sees new commits.
pg = pg8000.dbapi.connect(host=HOST, port=PORT, user="grafana", password=TOKEN, database="pitwall")
pc = pg.cursor()
pc.execute("SELECT count(*) FROM clean.sensor WHERE sensor_id = %s AND temperature_c >= %s", ("s-3", 23.0))
assert pc.fetchone()[0] == 60
pc.execute("SELECT %s::bigint + 1, %s::text", (41, "x"))
assert pc.fetchone() == [42, "x"]
# The shape Grafana's PostgreSQL data source sends for a time series panel:
# $__timeGroupAlias(time, 10s), $__timeFilter(time), a metric column, ORDER BY 1.
frm = start.strftime("%Y-%m-%dT%H:%M:%SZ")
to = (start + dt.timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
pc.execute(
    f"""SELECT
  floor(extract(epoch from "time")/10)*10 AS "time",
  sensor_id AS metric,
  avg(temperature_c) AS "temperature_c"
FROM clean.sensor
WHERE "time" BETWEEN '{frm}' AND '{to}' AND site = %s
GROUP BY 1, 2
ORDER BY 1, 2"""
    ,
    ("plant-a",),
)
series = pc.fetchall()
assert len(series) == 60, len(series)  # 6 buckets x 10 sensors
first = series[0]
assert float(first[0]) == T0 // 1_000_000_000 // 10 * 10 and first[1] == "s-0", first
# And with date_bin, which DataFusion plans natively.
pc.execute(
    "SELECT date_bin(INTERVAL '10 seconds', time) AS time, avg(temperature_c) AS value "
    "FROM clean.sensor WHERE time >= %s AND time < %s GROUP BY 1 ORDER BY 1",
    (start, start + dt.timedelta(seconds=60)),
)
buckets = pc.fetchall()
assert len(buckets) == 6 and buckets[0][0] == start, buckets[:2]
try:
    pc.execute("INSERT INTO clean.sensor (sensor_id) VALUES (%s)", ("x",))
    sys.exit("INSERT over the extended protocol did not fail")
except pg8000.dbapi.DatabaseError as e:
    assert e.args[0]["C"] == "25006", e.args
pg.rollback()
pc.execute("SELECT 1")
assert pc.fetchone() == [1]
pg.close()
ok("extended protocol with parameters; Grafana's time-series shape: 60 points in 6 buckets")

# The connection cap: past it a client is refused with 53300, and the others go on.
cap = int(os.environ["PG_CAP"])


def connect_when_free():
    # The server frees a place when it sees a close: retry briefly.
    for _ in range(50):
        try:
            return connect()
        except psycopg2.OperationalError as e:
            assert "too many connections" in str(e), str(e)
            time.sleep(0.1)
    sys.exit("no place freed after connections closed")


held = [connect_when_free() for _ in range(cap)]
try:
    connect()
    sys.exit("a connection past the cap was accepted")
except psycopg2.OperationalError as e:
    assert "too many connections" in str(e), str(e)
for h in held:
    h.close()
connect_when_free().close()
ok(f"connection cap of {cap}: the next client is refused, and served once one closes")
