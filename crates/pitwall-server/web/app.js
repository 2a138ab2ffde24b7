// pitwall dashboard: live charts, anomaly feed, sessions, compare, health, pipeline, SQL.
// Plain JavaScript and uPlot; everything it reads comes from this server's own API.
'use strict';

const $ = (sel, el = document) => el.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v; else if (k.startsWith('on')) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k ?? ''));
  return e;
};

// What the browser tests read.
const stats = (window.pitwallStats = { livePoints: 0, liveSource: null, anomaliesShown: 0, compareSeries: [], sqlRows: 0, lastLatencyMs: null, behindMs: [] });
// How far behind the processor the browser is: arrival here minus the server's receipt.
function behind(ev) {
  if (typeof ev.received_ms !== 'number') return null;
  const d = Date.now() - ev.received_ms;
  stats.behindMs.push(d);
  if (stats.behindMs.length > 1000) stats.behindMs.shift();
  return d;
}

// ---------- auth and API ----------
let token = localStorage.getItem('pitwall.token') || new URLSearchParams(location.search).get('token') || '';
function authHeaders(extra = {}) { return token ? { ...extra, Authorization: 'Token ' + token } : extra; }
function needToken() {
  $('#auth').hidden = false;
  $('#token-save').onclick = () => { token = $('#token').value.trim(); localStorage.setItem('pitwall.token', token); location.reload(); };
}
async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: authHeaders(opts.headers || {}) });
  if (r.status === 401) { needToken(); throw new Error('a token is needed'); }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.message || r.statusText);
  return body;
}
const sql = (q) => api('/api/v1/query', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ sql: q, format: 'json' }) });
const quote = (s) => "'" + String(s).replace(/'/g, "''") + "'";
function live(params, handlers) {
  const q = new URLSearchParams(params);
  if (token) q.set('token', token);
  const es = new EventSource('/api/v1/live?' + q);
  for (const [name, fn] of Object.entries(handlers)) es.addEventListener(name, (ev) => fn(JSON.parse(ev.data)));
  return es;
}
// Event time in ms from the topic's ns integers or the lake's ISO strings.
const ms = (t) => (typeof t === 'number' ? t / 1e6 : Date.parse(t));
const fmtTime = (t) => new Date(ms(t)).toISOString().replace('T', ' ').replace('Z', '');
const num = (v, d = 1) => (v == null || Number.isNaN(v) ? '' : typeof v === 'number' ? v.toFixed(d) : v);

// ---------- charts ----------
function chart(container, title, seriesNames, opts = {}) {
  const box = el('div', { class: 'chart' }, el('h3', {}, title));
  container.append(box);
  const colors = ['#e10600', '#2f8fff', '#2fb36d', '#e0a100', '#b86bff', '#00c2c7'];
  const width = Math.max(320, box.clientWidth - 12 || 560);
  const u = new uPlot({
    width, height: opts.height || 180,
    scales: { x: { time: opts.time !== false } },
    axes: [{ stroke: '#8a96a3', grid: { stroke: '#2a313b' } }, { stroke: '#8a96a3', grid: { stroke: '#2a313b' } }],
    series: [{ label: opts.xLabel || 'time' }, ...seriesNames.map((s, i) => ({ label: s, stroke: colors[i % colors.length], width: 1.5, spanGaps: true }))],
    legend: { live: false },
  }, [[], ...seriesNames.map(() => [])], box);
  box.uplot = u;
  return u;
}

// Chart groups per measurement; other measurements get one chart per numeric field.
const GROUPS = {
  car: [['Speed (km/h)', ['speed_kph']], ['RPM', ['rpm']], ['Throttle and brake (%)', ['throttle_pct', 'brake']], ['Gear', ['gear']],
        ['Temperatures (°C)', ['engine_temp_c', 'oil_temp_c', 'tyre_temp_fl_c', 'tyre_temp_fr_c', 'tyre_temp_rl_c', 'tyre_temp_rr_c']], ['ERS (%)', ['ers_pct']]],
  sensor: [['Temperature (°C)', ['temperature_c']], ['Humidity (%)', ['humidity_pct']], ['Pressure (hPa)', ['pressure_hpa']]],
};
const fieldValue = (v) => (typeof v === 'boolean' ? (v ? 100 : 0) : typeof v === 'number' ? v : null);

// ---------- tabs ----------
const tabOpeners = {};
function showTab(name) {
  document.querySelectorAll('#tabs button').forEach((b) => b.classList.toggle('active', b.dataset.tab === name));
  document.querySelectorAll('.tab').forEach((s) => s.classList.toggle('active', s.id === 'tab-' + name));
  (tabOpeners[name] || (() => {}))();
}
document.querySelectorAll('#tabs button').forEach((b) => b.addEventListener('click', () => showTab(b.dataset.tab)));

// ---------- Live ----------
const LIVE_WINDOW_MS = 60_000;
let sources = [];
let liveES = null;
let liveCharts = [];
let liveData = null;
let dirty = false;

async function refreshSources() {
  try {
    sources = await api('/api/v1/sources');
  } catch (e) { return; }
  const sel = $('#live-source');
  const known = new Set([...sel.options].map((o) => o.value));
  for (const s of sources) {
    const v = s.measurement + '/' + s.source;
    if (!known.has(v)) sel.append(el('option', { value: v }, `${s.source} (${s.measurement})`));
  }
  if (!stats.liveSource && sel.value) startLive(sel.value);
}
$('#live-source').addEventListener('change', (e) => startLive(e.target.value));

function buildCharts(measurement, fieldsSeen) {
  const box = $('#live-charts');
  box.replaceChildren();
  const groups = GROUPS[measurement] || fieldsSeen.map((f) => [f, [f]]);
  liveCharts = groups.map(([title, fields]) => ({ fields, u: chart(box, title, fields) }));
  liveData = { t: [], cols: new Map() };
}

function startLive(value) {
  const [measurement, source] = value.split('/');
  $('#trace-banner').hidden = true;
  if (liveES) liveES.close();
  stats.liveSource = source;
  stats.livePoints = 0;
  liveCharts = [];
  liveData = null;
  $('#live-source').value = value;
  liveES = live({ stream: 'clean', measurement, source, rate: 20 }, {
    clean: (p) => {
      if (!liveData) buildCharts(measurement, Object.keys(p.fields).filter((f) => typeof p.fields[f] !== 'string'));
      const t = ms(p.time) / 1000;
      liveData.t.push(t);
      for (const c of liveCharts) for (const f of c.fields) {
        if (!liveData.cols.has(f)) liveData.cols.set(f, new Array(liveData.t.length - 1).fill(null));
      }
      for (const [f, col] of liveData.cols) col.push(fieldValue(p.fields[f]));
      const cutoff = t - LIVE_WINDOW_MS / 1000;
      let drop = 0;
      while (drop < liveData.t.length && liveData.t[drop] < cutoff) drop++;
      if (drop) { liveData.t.splice(0, drop); for (const col of liveData.cols.values()) col.splice(0, drop); }
      stats.livePoints++;
      stats.lastLatencyMs = Date.now() - ms(p.time);
      const d = behind(p);
      $('#live-info').textContent = `${stats.livePoints} points · last ${fmtTime(p.time)}` + (d == null ? '' : ` · ${d} ms behind the processor`);
      dirty = true;
    },
  });
}

// Redraw at most 10 times a second, whatever the rate of points.
setInterval(() => {
  if (!dirty || !liveData) return;
  dirty = false;
  for (const c of liveCharts) c.u.setData([liveData.t.slice(), ...c.fields.map((f) => (liveData.cols.get(f) || []).slice())]);
}, 100);

async function showTrace(a) {
  showTab('live');
  if (liveES) { liveES.close(); liveES = null; }
  const m = a.measurement;
  const src = sources.find((s) => s.measurement === m && s.source === a.source_id);
  const tag = src ? src.source_tag : (m === 'car' ? 'driver' : m === 'sensor' ? 'sensor_id' : 'host');
  const t = ms(a.time);
  const from = new Date(t - 30_000).toISOString();
  const to = new Date(t + 30_000).toISOString();
  $('#trace-banner').hidden = false;
  $('#trace-what').textContent = `${a.rule} on ${a.source_id} at ${fmtTime(a.time)}`;
  $('#live-info').textContent = 'loading the trace…';
  try {
    const r = await sql(`SELECT * FROM clean.${m} WHERE ${tag} = ${quote(a.source_id)} AND time BETWEEN TIMESTAMP ${quote(from)} AND TIMESTAMP ${quote(to)} ORDER BY time`);
    const numeric = r.columns.filter((c) => /Int|Float|Boolean/.test(c.type)).map((c) => c.name);
    buildCharts(m, numeric);
    liveData.t = r.rows.map((row) => ms(row.time) / 1000);
    for (const c of liveCharts) for (const f of c.fields) liveData.cols.set(f, r.rows.map((row) => fieldValue(row[f])));
    dirty = true;
    $('#live-info').textContent = `${r.row_count} points from the lake, ±30 s around the anomaly`;
  } catch (e) {
    $('#live-info').textContent = 'trace: ' + e.message;
  }
}
$('#trace-back').addEventListener('click', () => { const v = $('#live-source').value; if (v) startLive(v); });

// ---------- Anomalies (and Health, which reads the same episodes) ----------
const anomalyIds = new Set();
const openEpisodes = new Map(); // id -> anomaly
let unseen = 0;

function addAnomaly(a, live) {
  const key = a.id + ':' + a.phase;
  if (anomalyIds.has(key)) return;
  anomalyIds.add(key);
  if (a.phase === 'start') openEpisodes.set(a.id, a); else openEpisodes.delete(a.id);
  const row = el('tr', { class: 'sev-' + a.severity, onclick: () => showTrace(a), 'data-source': a.source_id, 'data-rule': a.rule },
    el('td', {}, fmtTime(a.time)), el('td', {}, a.phase), el('td', {}, a.severity), el('td', {}, a.rule), el('td', {}, a.source_id),
    el('td', {}, a.field), el('td', {}, num(a.observed)), el('td', {}, num(a.expected)), el('td', {}, a.message));
  const body = $('#anomaly-table tbody');
  // Newest first, by event time.
  let before = null;
  for (const r of body.rows) if (Number(r.dataset.t) <= ms(a.time)) { before = r; break; }
  row.dataset.t = ms(a.time);
  body.insertBefore(row, before);
  while (body.rows.length > 500) body.deleteRow(body.rows.length - 1);
  stats.anomaliesShown = body.rows.length;
  if (live && !$('#tab-anomalies').classList.contains('active')) { unseen++; $('#anomaly-badge').textContent = unseen; }
  renderHealth();
}
tabOpeners.anomalies = () => { unseen = 0; $('#anomaly-badge').textContent = ''; };

async function loadAnomalyHistory() {
  try {
    const r = await sql('SELECT * FROM anomalies.events ORDER BY time DESC LIMIT 300');
    for (const a of r.rows.reverse()) addAnomaly(a, false);
  } catch (e) { /* no lake yet */ }
}

let feedES = null;
function startFeed() {
  feedES = live({ stream: 'anomalies' }, { anomalies: (a) => { behind(a); addAnomaly(a, true); } });
  feedES.onopen = () => { $('#conn').textContent = 'live'; $('#conn').classList.add('up'); };
  feedES.onerror = () => { $('#conn').textContent = 'reconnecting…'; $('#conn').classList.remove('up'); };
}

// ---------- Health ----------
const COMPONENTS = [
  ['engine', (a) => /engine|oil|rpm/.test(a.field + a.rule)],
  ['gearbox', (a) => /gear/.test(a.field + a.rule)],
  ['ERS', (a) => /ers/.test(a.field)],
  ['tyres', (a) => /tyre/.test(a.field + a.rule)],
  ['telemetry', (a) => a.kind === 'deadman' || a.kind === 'stuck'],
];
function renderHealth() {
  const table = $('#health-table');
  const cars = sources.filter((s) => s.measurement === 'car').map((s) => s.source);
  const others = sources.filter((s) => s.measurement !== 'car').map((s) => s.source);
  const bySource = new Map();
  for (const a of openEpisodes.values()) {
    if (!bySource.has(a.source_id)) bySource.set(a.source_id, []);
    bySource.get(a.source_id).push(a);
  }
  table.tHead.replaceChildren(el('tr', {}, el('th', {}, 'source'), ...COMPONENTS.map(([n]) => el('th', {}, n))));
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const src of [...cars, ...others]) {
    const open = bySource.get(src) || [];
    body.append(el('tr', {}, el('td', {}, src), ...COMPONENTS.map(([, match]) => {
      const hits = open.filter(match);
      return hits.length
        ? el('td', { class: 'status-bad', title: hits.map((h) => h.message).join('\n') }, hits.map((h) => h.rule).join(', '))
        : el('td', { class: 'status-ok' }, 'ok');
    })));
  }
}
tabOpeners.health = renderHealth;

// ---------- Sessions ----------
function fillTable(table, columns, rows) {
  table.tHead.replaceChildren(el('tr', {}, ...columns.map((c) => el('th', {}, c))));
  table.tBodies[0].replaceChildren(...rows.map((r) => el('tr', {}, ...columns.map((c) => el('td', {}, typeof r[c] === 'number' ? num(r[c], Number.isInteger(r[c]) ? 0 : 1) : r[c] ?? '')))));
}
async function loadSessions() {
  $('#sessions-info').textContent = 'loading…';
  const counts = new Map();
  try {
    const a = await sql("SELECT source_id, count(*) AS n FROM anomalies.events WHERE phase = 'start' GROUP BY source_id");
    for (const r of a.rows) counts.set(r.source_id, r.n);
  } catch (e) { /* none */ }
  try {
    const cars = await sql(`WITH laps AS (SELECT driver, lap, max(date_part('epoch', time)) - min(date_part('epoch', time)) AS secs FROM clean.car WHERE lap > 0 GROUP BY driver, lap),
      last AS (SELECT driver, max(lap) AS lap FROM clean.car GROUP BY driver),
      best AS (SELECT laps.driver, min(secs) AS best FROM laps JOIN last ON laps.driver = last.driver WHERE laps.lap < last.lap GROUP BY laps.driver)
      SELECT c.driver, max(c.team) AS team, max(c.lap) AS laps, max(best.best) AS best_lap_s, max(c.speed_kph) AS top_speed_kph, avg(c.speed_kph) AS mean_speed_kph, count(*) AS samples
      FROM clean.car c LEFT JOIN best ON c.driver = best.driver GROUP BY c.driver ORDER BY best_lap_s NULLS LAST, c.driver`);
    for (const r of cars.rows) r.anomalies = counts.get(r.driver) || 0;
    fillTable($('#sessions-cars'), ['driver', 'team', 'laps', 'best_lap_s', 'top_speed_kph', 'mean_speed_kph', 'samples', 'anomalies'], cars.rows);
  } catch (e) { $('#sessions-cars').tBodies[0].replaceChildren(el('tr', {}, el('td', { class: 'error' }, e.message))); }
  try {
    const s = await sql(`SELECT sensor_id, max(site) AS site, count(*) AS samples, avg(temperature_c) AS mean_temp_c, max(temperature_c) AS max_temp_c, avg(humidity_pct) AS mean_humidity_pct, avg(pressure_hpa) AS mean_pressure_hpa FROM clean.sensor GROUP BY sensor_id ORDER BY sensor_id`);
    for (const r of s.rows) r.anomalies = counts.get(r.sensor_id) || 0;
    fillTable($('#sessions-sensors'), ['sensor_id', 'site', 'samples', 'mean_temp_c', 'max_temp_c', 'mean_humidity_pct', 'mean_pressure_hpa', 'anomalies'], s.rows);
  } catch (e) { $('#sessions-sensors').tBodies[0].replaceChildren(el('tr', {}, el('td', { class: 'error' }, e.message))); }
  $('#sessions-info').textContent = 'from the lake at ' + new Date().toLocaleTimeString();
}
tabOpeners.sessions = loadSessions;
$('#sessions-refresh').addEventListener('click', loadSessions);

// ---------- Compare ----------
async function loadCompareChoices() {
  try {
    const r = await sql('SELECT driver, lap, count(*) AS n FROM clean.car GROUP BY driver, lap ORDER BY driver, lap');
    const drivers = [...new Set(r.rows.map((x) => x.driver))];
    const laps = [...new Set(r.rows.map((x) => x.lap))].sort((a, b) => a - b);
    for (const [id, pick] of [['#cmp-a', 0], ['#cmp-b', 1]]) {
      const sel = $(id);
      const cur = sel.value;
      sel.replaceChildren(...drivers.map((d) => el('option', { value: d }, d)));
      sel.value = cur && drivers.includes(cur) ? cur : drivers[Math.min(pick, drivers.length - 1)] || '';
    }
    const lapSel = $('#cmp-lap');
    const curLap = lapSel.value;
    lapSel.replaceChildren(...laps.map((l) => el('option', { value: l }, String(l))));
    if (curLap && laps.includes(Number(curLap))) lapSel.value = curLap;
    $('#cmp-info').textContent = `${drivers.length} drivers, laps ${laps[0] ?? '-'}–${laps[laps.length - 1] ?? '-'}`;
  } catch (e) { $('#cmp-info').textContent = e.message; }
}
async function runCompare() {
  const a = $('#cmp-a').value, b = $('#cmp-b').value, lap = Number($('#cmp-lap').value);
  if (!a || !b) return;
  $('#cmp-info').textContent = 'loading…';
  try {
    const r = await sql(`SELECT driver, distance_m, speed_kph, throttle_pct, CASE WHEN brake THEN 100 ELSE 0 END AS brake FROM clean.car WHERE lap = ${lap} AND driver IN (${quote(a)}, ${quote(b)}) AND distance_m IS NOT NULL ORDER BY driver, distance_m`);
    const box = $('#cmp-charts');
    box.replaceChildren();
    const per = (d) => r.rows.filter((x) => x.driver === d);
    const ra = per(a), rb = per(b);
    stats.compareSeries = [ra.length, rb.length];
    for (const [title, f] of [['Speed (km/h)', 'speed_kph'], ['Throttle (%)', 'throttle_pct'], ['Brake', 'brake']]) {
      const u = chart(box, `${title} over distance, lap ${lap}`, [a, b], { time: false, xLabel: 'distance (m)' });
      const joined = uPlot.join([[ra.map((x) => x.distance_m), ra.map((x) => x[f])], [rb.map((x) => x.distance_m), rb.map((x) => x[f])]]);
      u.setData(joined);
    }
    $('#cmp-info').textContent = `${a}: ${ra.length} points, ${b}: ${rb.length} points`;
  } catch (e) { $('#cmp-info').textContent = e.message; }
}
tabOpeners.compare = loadCompareChoices;
// New drivers and laps reach the lake as the session goes on.
setInterval(() => { if ($('#tab-compare').classList.contains('active')) loadCompareChoices(); }, 5000);
$('#cmp-run').addEventListener('click', runCompare);

// ---------- Pipeline ----------
function parseMetrics(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[3]) for (const kv of m[3].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[kv[1]] = kv[2];
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}
const sum = (ms_, name, pred = () => true) => ms_.filter((x) => x.name === name && pred(x.labels)).reduce((s, x) => s + x.value, 0);
const max = (ms_, name) => ms_.filter((x) => x.name === name).reduce((s, x) => Math.max(s, x.value), 0);
let prevMetrics = null;
const pipeSeries = { t: [], ingest: [], write: [], process: [], clean: [] };
let pipeCharts = null;
async function pollMetrics() {
  if (!$('#tab-pipeline').classList.contains('active')) return;
  let text;
  try { text = await (await fetch('/metrics')).text(); } catch (e) { return; }
  const m = parseMetrics(text);
  const now = Date.now() / 1000;
  const cur = {
    t: now,
    ingest: sum(m, 'pitwall_events_in_total', (l) => l.stage === 'ingest'),
    write: sum(m, 'pitwall_events_in_total', (l) => l.stage === 'write_api'),
    process: sum(m, 'pitwall_events_in_total', (l) => l.stage === 'process'),
    clean: sum(m, 'pitwall_events_out_total', (l) => l.stream === 'clean'),
    commitSum: sum(m, 'pitwall_lake_commit_seconds_sum'),
    commitCount: sum(m, 'pitwall_lake_commit_seconds_count'),
  };
  const cards = [
    ['consumer lag (messages)', sum(m, 'pitwall_consumer_lag_messages')],
    ['watermark lag (s)', max(m, 'pitwall_watermark_lag_seconds').toFixed(1)],
    ['rejects', sum(m, 'pitwall_rejects_total')],
    ['late events', sum(m, 'pitwall_events_out_total', (l) => l.stream === 'late')],
    ['lake commits', cur.commitCount],
    ['rows in the lake', sum(m, 'pitwall_lake_rows_total')],
  ];
  if (prevMetrics) {
    const dt = now - prevMetrics.t;
    const rate = (k) => Math.max(0, (cur[k] - prevMetrics[k]) / dt);
    const dc = cur.commitCount - prevMetrics.commitCount;
    cards.unshift(['events/s in (simulators)', rate('ingest').toFixed(0)], ['events/s in (write API)', rate('write').toFixed(0)],
      ['events/s processed', rate('process').toFixed(0)], ['commit latency (ms, recent)', dc > 0 ? (((cur.commitSum - prevMetrics.commitSum) / dc) * 1000).toFixed(0) : '-']);
    pipeSeries.t.push(now);
    for (const k of ['ingest', 'write', 'process', 'clean']) pipeSeries[k].push(rate(k));
    if (pipeSeries.t.length > 300) for (const k of Object.keys(pipeSeries)) pipeSeries[k].shift();
    if (!pipeCharts) pipeCharts = chart($('#pipeline-charts'), 'Events per second by stage', ['ingest', 'write API', 'process', 'clean out']);
    pipeCharts.setData([pipeSeries.t, pipeSeries.ingest, pipeSeries.write, pipeSeries.process, pipeSeries.clean]);
  }
  prevMetrics = cur;
  $('#pipeline-cards').replaceChildren(...cards.map(([k, v]) => el('div', { class: 'card' }, el('div', { class: 'v' }, String(v)), el('div', { class: 'k' }, k))));
}
setInterval(pollMetrics, 2000);
tabOpeners.pipeline = pollMetrics;

// ---------- SQL ----------
async function runSql() {
  const q = $('#sql-text').value;
  $('#sql-info').textContent = 'running…';
  $('#sql-chart').replaceChildren();
  try {
    const r = await sql(q);
    const cols = r.columns.map((c) => c.name);
    fillTable($('#sql-table'), cols, r.rows);
    stats.sqlRows = r.row_count;
    $('#sql-info').textContent = `${r.row_count} rows${r.truncated ? ' (more left out: the row limit)' : ''} in ${r.elapsed_ms} ms`;
    // A chart when there is something to draw: an x column (time or number) and numbers.
    const numeric = r.columns.filter((c) => /Int|Float|Decimal/.test(c.type)).map((c) => c.name);
    const xcol = r.columns.find((c) => /Timestamp/.test(c.type));
    if (r.rows.length > 1 && numeric.length) {
      const isTime = !!xcol;
      const xname = xcol ? xcol.name : null;
      const ys = numeric.filter((n) => n !== xname).slice(0, 6);
      const xs = r.rows.map((row, i) => (isTime ? ms(row[xname]) / 1000 : i));
      const order = xs.map((x, i) => i).sort((a, b) => xs[a] - xs[b]);
      const u = chart($('#sql-chart'), isTime ? 'by ' + xname : 'by row', ys, { time: isTime, xLabel: isTime ? xname : 'row' });
      u.setData([order.map((i) => xs[i]), ...ys.map((y) => order.map((i) => r.rows[i][y]))]);
    }
  } catch (e) {
    stats.sqlRows = 0;
    $('#sql-info').innerHTML = '';
    $('#sql-info').append(el('span', { class: 'error' }, e.message));
  }
}
$('#sql-run').addEventListener('click', runSql);
$('#sql-text').addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) runSql(); });

// ---------- start ----------
refreshSources();
setInterval(refreshSources, 3000);
startFeed();
loadAnomalyHistory();
