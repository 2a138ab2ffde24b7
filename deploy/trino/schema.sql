-- pitwall's lake for Trino (and any SQL engine that reads Iceberg): the tables and the
-- typical questions the race engineers and plant operators ask.
--
-- pitwall creates and evolves every table itself (no DDL needed): one Iceberg schema
-- per stage, as the seeds lay out their buckets, each table partitioned by day.
--
--   raw.events          every payload as received (topic, partition, offset, key, ingest_time, payload)
--   clean.<measurement> validated, normalized points: tags and fields as typed columns,
--                       e.g. clean.car (driver, team, lap, sector, speed_kph, rpm, gear,
--                       throttle_pct, brake, engine_temp_c, oil_temp_c, tyre_temp_*_c, ...)
--                       and clean.sensor (sensor_id, site, temperature_c, humidity_pct, ...)
--   metrics.windows     window aggregates per source, window and field (count, min, max,
--                       sum, mean, stddev, first, last, p50, p95, p99)
--   anomalies.events    anomaly episodes: a 'start' row and an 'end' row per episode
--   quarantine.rejects  malformed input with the reason and where it came from
--   quarantine.late     events behind the watermark
--
-- With catalog/iceberg.properties installed, run these as
--   trino --catalog iceberg --file schema.sql
-- (two-part names resolve in the session's catalog). `pitwall query` runs them as they
-- are, and the tests check that it and DuckDB over the same Parquet files agree on
-- every one.

-- Driver performance over time: speed and throttle per driver per minute.
SELECT driver,
       date_trunc('minute', "time") AS minute,
       avg(speed_kph) AS avg_speed_kph,
       max(speed_kph) AS top_speed_kph,
       avg(throttle_pct) AS avg_throttle_pct,
       count(*) AS samples
FROM clean.car
GROUP BY driver, date_trunc('minute', "time")
ORDER BY driver, minute;

-- Anomaly rate per lap: episodes that started while each driver was on each lap.
WITH laps AS (
    SELECT driver, lap, min("time") AS lap_start, max("time") AS lap_end, count(*) AS samples
    FROM clean.car
    GROUP BY driver, lap
)
SELECT l.driver,
       l.lap,
       l.samples,
       count(a.id) AS anomalies
FROM laps l
LEFT JOIN anomalies.events a
       ON a.source_id = l.driver AND a.phase = 'start'
      AND a."time" >= l.lap_start AND a."time" <= l.lap_end
GROUP BY l.driver, l.lap, l.samples
ORDER BY l.driver, l.lap;

-- Speed distribution by sector: samples per 50 km/h band in each sector.
SELECT sector,
       CAST(floor(speed_kph / 50) * 50 AS INTEGER) AS speed_band_kph,
       count(*) AS samples
FROM clean.car
GROUP BY sector, CAST(floor(speed_kph / 50) * 50 AS INTEGER)
ORDER BY sector, speed_band_kph;

-- Engine and component degradation: temperatures per driver and lap.
SELECT driver,
       lap,
       avg(engine_temp_c) AS engine_temp_c,
       max(engine_temp_c) AS engine_temp_max_c,
       avg(oil_temp_c) AS oil_temp_c,
       avg((tyre_temp_fl_c + tyre_temp_fr_c + tyre_temp_rl_c + tyre_temp_rr_c) / 4) AS tyre_temp_c,
       avg(ers_pct) AS ers_pct
FROM clean.car
GROUP BY driver, lap
ORDER BY driver, lap;

-- Metric trends over time: each field's 5-second means and tail per car, per minute.
SELECT source_id,
       field,
       date_trunc('minute', window_start) AS minute,
       avg(mean) AS mean,
       max(p99) AS p99_max,
       sum("count") AS samples
FROM metrics.windows
WHERE "window" = 'car_5s'
GROUP BY source_id, field, date_trunc('minute', window_start)
ORDER BY source_id, field, minute;

-- Anomaly frequency: episodes per rule and severity, and how many sources had them.
SELECT rule,
       severity,
       count(*) AS episodes,
       count(DISTINCT source_id) AS sources
FROM anomalies.events
WHERE phase = 'start'
GROUP BY rule, severity
ORDER BY episodes DESC, rule, severity;
