"""ADBC's Flight SQL driver (what Grafana's Flight SQL source and InfluxDB 3 clients
speak) against pitwall's Arrow Flight SQL.

Run by tests/flight.rs with FLIGHT_URI, FLIGHT_TOKEN and T0 (the first point's time, ns)
set, after 10 sensors x 60 s of line protocol were written and committed. Every check
asserts; the script prints one line per check.
"""

import datetime as dt
import os
import sys

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import pyarrow as pa
from adbc_driver_flightsql import DatabaseOptions

URI, TOKEN = os.environ["FLIGHT_URI"], os.environ["FLIGHT_TOKEN"]
T0 = int(os.environ["T0"])


def ok(name):
    print(f"ok: {name}", flush=True)


def bearer(token=TOKEN):
    return flightsql.connect(URI, db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"})


def refused(words, fn):
    try:
        fn()
    except adbc_driver_manager.Error as e:
        assert words in str(e), f"{words!r} not in {e}"
        return
    sys.exit(f"not refused (wanted {words!r})")


# A wrong token is refused, by header or by handshake.
def wrong_bearer():
    with bearer("wrong") as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")


def wrong_password():
    with flightsql.connect(URI, db_kwargs={"username": "grafana", "password": "wrong"}) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")


refused("wrong token", wrong_password)
refused("a token is required", wrong_bearer)
ok("a wrong token is refused (bearer and handshake)")

# A statement, through the handshake with the token as the password.
with flightsql.connect(URI, db_kwargs={"username": "grafana", "password": TOKEN}) as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) AS n, count(DISTINCT sensor_id) AS sensors FROM clean.sensor")
        assert cur.fetchall() == [(601, 11)], "every point, every sensor"
        cur.execute("SELECT time, temperature_c FROM clean.sensor WHERE sensor_id = 's-99'")
        table = cur.fetch_arrow_table()
        assert table.schema.field("time").type == pa.timestamp("us", tz="UTC") or str(
            table.schema.field("time").type
        ).startswith("timestamp"), table.schema
        assert table.column("temperature_c").to_pylist() == [1.5]
ok("statements through the handshake: rows and Arrow types")

with bearer() as conn:
    # Prepared statements with parameters, bound per execution.
    with conn.cursor() as cur:
        sql = "SELECT sensor_id, avg(temperature_c) AS t FROM clean.sensor WHERE site = $1 AND time >= $2 GROUP BY sensor_id ORDER BY sensor_id"
        start = dt.datetime.fromtimestamp(T0 / 1e9, dt.timezone.utc)
        cur.execute(sql, ("plant-b", start))
        assert cur.fetchall() == [("s-99", 1.5)]
        cur.execute(sql, ("plant-a", start + dt.timedelta(seconds=30)))
        rows = cur.fetchall()
        assert len(rows) == 10 and rows[0][0] == "s-0", rows
    ok("prepared statements with parameters, bound again per execution")

    # Grafana's time-series shape: buckets by date_bin.
    with conn.cursor() as cur:
        cur.execute(
            "SELECT date_bin(INTERVAL '10 seconds', time) AS time, avg(temperature_c) AS value "
            "FROM clean.sensor WHERE sensor_id = 's-1' GROUP BY 1 ORDER BY 1"
        )
        rows = cur.fetchall()
        assert len(rows) == 6, rows
    ok("time-bucketed series")

    # Metadata: catalogs, schemas, tables with their columns, table types.
    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    assert [c["catalog_name"] for c in objects] == ["pitwall"], objects
    schemas = {s["db_schema_name"]: s for s in objects[0]["catalog_db_schemas"]}
    assert {"clean", "metrics", "anomalies", "raw", "quarantine"} <= set(schemas), schemas.keys()
    tables = {t["table_name"]: t for t in schemas["clean"]["db_schema_tables"]}
    assert "sensor" in tables, tables.keys()
    columns = [c["column_name"] for c in tables["sensor"]["table_columns"]]
    assert {"time", "sensor_id", "site", "temperature_c", "pressure_hpa"} <= set(columns), columns
    schema = conn.adbc_get_table_schema("sensor", db_schema_filter="clean")
    assert schema.field("temperature_c").type == pa.float64(), schema
    assert conn.adbc_get_table_types() == ["TABLE"]
    info = conn.adbc_get_info()
    assert info["vendor_name"] == "pitwall", info
    ok("catalogs, schemas, tables, columns, table types and server info")

    # Writes are refused in words; the connection goes on.
    with conn.cursor() as cur:
        for sql in ["INSERT INTO clean.sensor (sensor_id) VALUES ('x')", "DROP TABLE clean.sensor"]:
            try:
                cur.execute(sql)
                sys.exit(f"{sql} ran")
            except adbc_driver_manager.Error as e:
                assert "read" in str(e).lower(), e
        try:
            cur.execute("SELECT * FROM clean.nothing_here")
            sys.exit("a missing table answered")
        except adbc_driver_manager.Error as e:
            assert "nothing_here" in str(e), e
        cur.execute("SELECT 1 AS one")
        assert cur.fetchall() == [(1,)]
    ok("writes and errors are refused in words and the connection goes on")
