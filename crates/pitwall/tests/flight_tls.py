"""ADBC's Flight SQL driver against pitwall's Flight SQL served over TLS.

Run by tests/flight.rs with FLIGHT_ADDR (host:port), FLIGHT_TOKEN and FLIGHT_CA (the PEM
of the test's self-signed certificate) set. Every check asserts; the script prints one
line per check.
"""

import os
import sys

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager

ADDR, TOKEN = os.environ["FLIGHT_ADDR"], os.environ["FLIGHT_TOKEN"]
with open(os.environ["FLIGHT_CA"]) as f:
    CA = f.read()
LOGIN = {"username": "grafana", "password": TOKEN}


def ok(name):
    print(f"ok: {name}", flush=True)


def answer(uri, **options):
    with flightsql.connect(uri, db_kwargs={**LOGIN, **options}) as conn, conn.cursor() as cur:
        cur.execute("SELECT 40 + 2 AS answer")
        return cur.fetchall()


def fails(fn):
    try:
        fn()
    except adbc_driver_manager.Error:
        return
    sys.exit("connected, but should not have")


trust = {"adbc.flight.sql.client_option.tls_root_certs": CA}
assert answer(f"grpc+tls://{ADDR}", **trust) == [(42,)]
ok("a statement over TLS, the certificate verified against its authority")

fails(lambda: answer(f"grpc+tls://{ADDR}"))
ok("a client that does not trust the certificate gets nothing")

fails(lambda: answer(f"grpc://{ADDR}"))
ok("a client without TLS gets nothing")

fails(lambda: flightsql.connect(f"grpc+tls://{ADDR}", db_kwargs={"username": "x", "password": "wrong", **trust}).cursor().execute("SELECT 1"))
ok("a wrong token over TLS is refused")
