"""Superset's REST API (through Flask's test client, no web server) against pitwall:
run by scripts/superset-check.sh with PITWALL_PG (host:port) and PITWALL_TOKEN set.
Prints each step's result; stops with the answer at the first step that fails."""

import json
import os
import sys

from superset.app import create_app

PG, TOKEN = os.environ["PITWALL_PG"], os.environ["PITWALL_TOKEN"]
app = create_app()
client = app.test_client()


FAILED = []


def call(method, path, body=None, want=(200, 201), fatal=True):
    r = getattr(client, method)(path, json=body, headers=HEADERS)
    if r.status_code not in want:
        message = f"{method.upper()} {path}: {r.status_code} {r.get_data(as_text=True)[:1500]}"
        if fatal:
            sys.exit(message)
        print(f"FAILED (going on): {message}", flush=True)
        FAILED.append(path)
        return None
    return r.get_json()


HEADERS = {}
login = call("post", "/api/v1/security/login", {"username": "admin", "password": "admin", "provider": "db"})
HEADERS = {"Authorization": f"Bearer {login['access_token']}"}
print("logged in to Superset", flush=True)

uri = f"postgresql+psycopg2://superset:{TOKEN}@{PG}/pitwall"
call("post", "/api/v1/database/test_connection/", {"sqlalchemy_uri": uri, "database_name": "pitwall"})
print(f"test connection: ok ({uri.replace(TOKEN, '***')})", flush=True)
db = call("post", "/api/v1/database/", {"database_name": "pitwall", "sqlalchemy_uri": uri, "expose_in_sqllab": True})
db_id = db["id"]
print(f"database added by URI: id {db_id}", flush=True)

schemas = call("get", f"/api/v1/database/{db_id}/schemas/")["result"]
print(f"schemas: {schemas}", flush=True)
assert "clean" in schemas, schemas
tables = call("get", f"/api/v1/database/{db_id}/tables/?q=(schema_name:clean)")["result"]
print(f"tables in clean: {[t['value'] for t in tables]}", flush=True)
meta = call("get", f"/api/v1/database/{db_id}/table_metadata/?name=car&schema=clean", fatal=False)
if meta:
    columns = [(c["name"], c["type"]) for c in meta["columns"]]
    print(f"table metadata of clean.car (columns, keys, indexes): {columns}", flush=True)
    assert any(name == "speed_kph" for name, _ in columns), columns

ds = call("post", "/api/v1/dataset/", {"database": db_id, "schema": "clean", "table_name": "car"})
ds_id = ds["id"]
cols = call("get", f"/api/v1/dataset/{ds_id}")["result"]["columns"]
print(f"dataset clean.car: id {ds_id}, columns from the inspector: {[(c['column_name'], c['type'], c['is_dttm']) for c in cols]}", flush=True)

query_context = {
    "datasource": {"id": ds_id, "type": "table"},
    "force": True,
    "queries": [
        {
            "columns": [
                {"timeGrain": "PT1M", "columnType": "BASE_AXIS", "sqlExpression": "time", "label": "time", "expressionType": "SQL"},
                "driver",
            ],
            "metrics": [
                {"expressionType": "SIMPLE", "column": {"column_name": "speed_kph"}, "aggregate": "AVG", "label": "avg_speed"}
            ],
            "time_range": "No filter",
            "orderby": [[{"expressionType": "SIMPLE", "column": {"column_name": "speed_kph"}, "aggregate": "AVG", "label": "avg_speed"}, False]],
            "row_limit": 1000,
        }
    ],
    "result_format": "json",
    "result_type": "full",
}
chart = call("post", "/api/v1/chart/data", query_context)
result = chart["result"][0]
print(f"chart query (time series, avg speed per minute per driver):\n{result['query']}", flush=True)
print(f"chart answer: {result['rowcount']} rows, first {result['data'][:3]}", flush=True)
assert result["rowcount"] > 0, result

sql = "SELECT driver, max(speed_kph) AS top_speed FROM clean.car GROUP BY driver ORDER BY top_speed DESC LIMIT 5"
lab = call("post", "/api/v1/sqllab/execute/", {"database_id": db_id, "sql": sql, "runAsync": False, "schema": "clean"}, want=(200, 202))
print(f"SQL Lab: {sql}\n  -> {lab.get('data', lab)[:5]}", flush=True)
if FAILED:
    sys.exit(f"superset-check: failed: {FAILED}")
print("superset-check: every step passed", flush=True)
