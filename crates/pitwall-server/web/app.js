// pitwall dashboard: live charts, anomaly episodes, sessions, lap comparison, fleet,
// health, pipeline, SQL. Plain JavaScript and uPlot; everything it reads comes from this
// server's own API (the live feed, SQL, /api/v1/sources, /api/v1/rules, /metrics).
'use strict';

const $ = (sel, el = document) => el.querySelector(sel);
const $$ = (sel, el = document) => [...el.querySelectorAll(sel)];
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null) continue;
    if (k === 'class') e.className = v; else if (k.startsWith('on')) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k ?? ''));
  return e;
};

// What the browser tests read.
const stats = (window.pitwallStats = { livePoints: 0, liveSource: null, anomaliesShown: 0, compareSeries: [], compareLap: null, sqlRows: 0, lastLatencyMs: null, behindMs: [] });
// How far behind the processor the browser is: arrival here minus the server's receipt.
function behind(ev) {
  if (typeof ev.received_ms !== 'number') return null;
  const d = Date.now() - ev.received_ms;
  stats.behindMs.push(d);
  if (stats.behindMs.length > 1000) stats.behindMs.shift();
  return d;
}

// ---------- the view in the URL ----------
// tab, source, range, from, to, tz, lap, a, b, recent, sev, rule, q: a view can be shared and reloaded.
const view = Object.fromEntries(new URLSearchParams(location.search));
delete view.token;
function setView(changes) {
  Object.assign(view, changes);
  for (const [k, v] of Object.entries(view)) if (v == null || v === '') delete view[k];
  history.replaceState(null, '', '?' + new URLSearchParams(view));
}

// ---------- time: one zone rule everywhere ----------
let tz = view.tz || localStorage.getItem('pitwall.tz') || 'local';
const zoneName = () => (tz === 'utc' ? 'UTC' : Intl.DateTimeFormat().resolvedOptions().timeZone || 'local');
function parts(msTime) {
  const d = new Date(msTime);
  return tz === 'utc'
    ? { Y: d.getUTCFullYear(), M: d.getUTCMonth() + 1, D: d.getUTCDate(), h: d.getUTCHours(), m: d.getUTCMinutes(), s: d.getUTCSeconds(), ms: d.getUTCMilliseconds() }
    : { Y: d.getFullYear(), M: d.getMonth() + 1, D: d.getDate(), h: d.getHours(), m: d.getMinutes(), s: d.getSeconds(), ms: d.getMilliseconds() };
}
const p2 = (n) => String(n).padStart(2, '0');
// Event time in ms from the topic's ns integers or the lake's ISO strings.
const ms = (t) => (typeof t === 'number' ? t / 1e6 : Date.parse(t));
// "2026-12-07 14:03:09.120" in the chosen zone (24-hour); the zone is said in the header.
function fmtTime(t, { date = true, millis = false } = {}) {
  if (t == null) return '';
  // Numbers are ms here (ns from the topic are converted by `ms` first; a stray ns value is recognised).
  const x = parts(typeof t === 'number' ? (t > 1e14 ? t / 1e6 : t) : ms(t));
  const clock = `${p2(x.h)}:${p2(x.m)}:${p2(x.s)}` + (millis ? '.' + String(x.ms).padStart(3, '0') : '');
  return date ? `${x.Y}-${p2(x.M)}-${p2(x.D)} ${clock}` : clock;
}
function fmtDuration(msLen) {
  if (msLen == null || !Number.isFinite(msLen)) return '';
  const s = msLen / 1000;
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + ' s';
  if (s < 3600) return `${Math.floor(s / 60)} min ${p2(Math.round(s % 60))} s`;
  return `${Math.floor(s / 3600)} h ${p2(Math.floor((s % 3600) / 60))} min`;
}
// Datetime-local input value <-> ms, in the chosen zone.
function toInput(msTime) { const x = parts(msTime); return `${x.Y}-${p2(x.M)}-${p2(x.D)}T${p2(x.h)}:${p2(x.m)}:${p2(x.s)}`; }
function fromInput(v) { if (!v) return null; return tz === 'utc' ? Date.parse(v + 'Z') : Date.parse(v); }

// ---------- numbers and units ----------
const UNITS = [[/_kph$/, 'km/h'], [/_c$/, '°C'], [/_pct$/, '%'], [/_hpa$/, 'hPa'], [/_m$/, 'm'], [/_ms$/, 'ms'], [/_s$/, 's'], [/^rpm$/, 'rpm'], [/^gear$/, 'gear'], [/^(brake|drs)$/, 'on/off'], [/^delta/, 's']];
const unitOf = (name) => (UNITS.find(([re]) => re.test(name)) || [null, ''])[1];
const withUnit = (v, unit) => (unit && unit !== 'on/off' && unit !== 'gear' ? `${v} ${unit}` : v);
// 1,018.8 · 10.5k · 2.1M: grouped below 10,000, SI prefixes above.
function fmtNum(v, decimals) {
  if (v == null || Number.isNaN(v)) return '';
  if (typeof v !== 'number') return String(v);
  const a = Math.abs(v);
  // [from, divisor, prefix]: kilo from 10,000 on, so 1,018.8 hPa stays as it is.
  for (const [from, f, p] of [[1e9, 1e9, 'G'], [1e6, 1e6, 'M'], [1e4, 1e3, 'k']]) {
    if (a >= from) return (v / f).toLocaleString('en-US', { maximumFractionDigits: decimals ?? (a >= f * 100 ? 0 : 1) }) + p;
  }
  const d = decimals ?? (Number.isInteger(v) ? 0 : a >= 100 ? 1 : a >= 1 ? 2 : 3);
  return v.toLocaleString('en-US', { minimumFractionDigits: decimals ?? 0, maximumFractionDigits: d });
}
// Tick labels: as many decimals as the step between ticks needs, the same on every tick.
function tickLabels(splits) {
  if (!splits.length) return [];
  const step = splits.length > 1 ? Math.abs(splits[1] - splits[0]) : Math.abs(splits[0]) || 1;
  const big = Math.max(...splits.map(Math.abs));
  const scale = big >= 1e9 ? 1e9 : big >= 1e6 ? 1e6 : big >= 1e4 ? 1e3 : 1;
  const d = Math.max(0, Math.min(6, Math.ceil(-Math.log10(step / scale) - 1e-9)));
  if (scale === 1) return splits.map((v) => fmtNum(v, d));
  // Zero is 0 whatever the prefix of its neighbours.
  // One prefix for the whole axis: 9.5k next to 10k, never 9,500.0.
  const prefix = { 1e3: 'k', 1e6: 'M', 1e9: 'G' }[scale];
  return splits.map((v) => (v === 0 ? '0' : (v / scale).toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d }) + prefix));
}
const num = (v, d) => (v == null || Number.isNaN(v) ? '' : typeof v === 'number' ? fmtNum(v, d) : v);

// ---------- auth and API ----------
let token = localStorage.getItem('pitwall.token') || new URLSearchParams(location.search).get('token') || '';
function authHeaders(extra = {}) { return token ? { ...extra, Authorization: 'Token ' + token } : extra; }
function needToken() {
  $('#auth').hidden = false;
  $('#token-save').onclick = () => { token = $('#token').value.trim(); localStorage.setItem('pitwall.token', token); location.reload(); };
}
async function api(path, opts = {}) {
  let r;
  try {
    r = await fetch(path, { ...opts, headers: authHeaders(opts.headers || {}) });
  } catch (e) {
    throw new Error(serverState === 'stopped' ? 'pitwall has stopped' : 'the server cannot be reached');
  }
  if (r.status === 401) { needToken(); throw new Error('a token is needed'); }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.message || r.statusText);
  return body;
}
const sql = (q) => api('/api/v1/query', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ sql: q, format: 'json' }) });
const quote = (s) => "'" + String(s).replace(/'/g, "''") + "'";
const tsLit = (msTime) => `TIMESTAMP ${quote(new Date(msTime).toISOString())}`;
// An error in words for a page: a table that does not exist yet has not had its first commit.
function explain(e) {
  const m = e.message || String(e);
  if (/not found|does not exist|no table/i.test(m)) return 'waiting for the first commit: nothing of this kind is in the lake yet';
  return m;
}
function live(params, handlers) {
  const q = new URLSearchParams(params);
  if (token) q.set('token', token);
  const es = new EventSource('/api/v1/live?' + q);
  for (const [name, fn] of Object.entries(handlers)) es.addEventListener(name, (ev) => fn(JSON.parse(ev.data)));
  // The server is stopping: do not reconnect, say so.
  es.addEventListener('shutdown', () => { es.close(); setServerState('stopped'); });
  return es;
}

// ---------- connection state in the header ----------
let serverState = 'connecting';
function setServerState(s) {
  serverState = s;
  const c = $('#conn');
  c.textContent = { connecting: 'connecting…', connected: 'connected · live', reconnecting: 'reconnecting…', stopped: 'stopped' }[s];
  c.className = 'conn ' + s;
  c.dataset.state = s;
  if (s === 'stopped') watchForRestart();
}
let restartWatch = null;
function watchForRestart() {
  if (restartWatch) return;
  restartWatch = setInterval(async () => {
    try { if ((await fetch('/ping')).ok) location.reload(); } catch (e) { /* still down */ }
  }, 3000);
}

// ---------- charts ----------
const COLORS = ['#e10600', '#2f8fff', '#2fb36d', '#e0a100', '#b86bff', '#00c2c7', '#ff7ab6', '#9aa5b1'];
// Axis width from its formatted labels, so none is cut.
function axisSize(u, values, axisIdx, cycleNum) {
  const axis = u.axes[axisIdx];
  if (cycleNum > 1) return axis._size;
  let size = axis.ticks.size + axis.gap;
  // A horizontal axis needs a line of text; a vertical one its widest label.
  if (axis.side % 2 === 0) return size + 18;
  const longest = (values || []).reduce((a, v) => (String(v).length > a.length ? String(v) : a), '');
  if (longest) { u.ctx.font = axis.font[0]; size += u.ctx.measureText(longest).width / devicePixelRatio; }
  return Math.ceil(size) + 4;
}
function timeTicks(u, splits) {
  const range = splits.length > 1 ? splits[splits.length - 1] - splits[0] : 0;
  const span = u.scales.x.max - u.scales.x.min;
  return splits.map((v) => {
    const x = parts(v * 1000);
    if (span > 2 * 86400) return `${p2(x.M)}-${p2(x.D)}`;
    return range / Math.max(1, splits.length - 1) < 60 ? `${p2(x.h)}:${p2(x.m)}:${p2(x.s)}` : `${p2(x.h)}:${p2(x.m)}`;
  });
}
// Tick steps of a time axis, in seconds: never below one second, so no label repeats.
const TIME_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];
// Charts of one page share a cursor and a zoom: each group keeps its charts.
const groups = new Map();
function syncZoom(group, u) {
  const g = groups.get(group);
  if (!g || g.busy) return;
  g.busy = true;
  const { min, max } = u.scales.x;
  for (const o of g.charts) if (o !== u && o.scales.x && (o.scales.x.min !== min || o.scales.x.max !== max)) o.setScale('x', { min, max });
  g.busy = false;
}
// series: [{label, unit, color}]; opts: {time, xLabel, xUnit, group, height, bars}.
function chart(container, title, series, opts = {}) {
  const box = el('div', { class: 'chart' }, el('h3', {}, title));
  container.append(box);
  const time = opts.time !== false;
  const units = [...new Set(series.map((s) => s.unit || ''))];
  const group = opts.group || null;
  const axisStyle = { stroke: '#8a96a3', grid: { stroke: '#2a313b' }, ticks: { stroke: '#2a313b' }, size: axisSize, font: '12px system-ui', labelFont: '12px system-ui' };
  const u = new uPlot({
    width: Math.max(240, box.clientWidth - 12 || 560), height: opts.height || 200,
    scales: { x: { time }, ...Object.fromEntries(units.map((un) => [un || '_', {}])) },
    axes: [
      { ...axisStyle, values: time ? timeTicks : (uu, s) => tickLabels(s), label: time ? `time (${zoneName()})` : opts.xLabel, labelSize: 18, space: 70,
        ...(time ? { incrs: TIME_INCRS } : {}) },
      ...units.map((un, i) => ({ ...axisStyle, scale: un || '_', side: i % 2 ? 1 : 3, grid: { show: i === 0, stroke: '#2a313b' }, values: (uu, s) => tickLabels(s),
        // A field with no unit (a count, a sector) is named on its axis instead.
        label: un || series.filter((s) => !s.unit).map((s) => s.label).join(', '), labelSize: 18 })),
    ],
    series: [
      { label: time ? 'time' : opts.xLabel || 'x', value: (uu, v) => (v == null ? '' : time ? fmtTime(v * 1000, { date: false, millis: true }) : withUnit(fmtNum(v), opts.xUnit)) },
      ...series.map((s, i) => ({
        label: s.label, scale: s.unit || '_', stroke: s.color || COLORS[i % COLORS.length], width: 1.5, spanGaps: !opts.bars,
        value: (uu, v) => (v == null ? '–' : withUnit(fmtNum(v), s.unit)),
        ...(opts.bars ? { paths: uPlot.paths.bars({ size: [0.6, 60] }), fill: (s.color || COLORS[i % COLORS.length]) + '99', points: { show: false } } : {}),
      })),
    ],
    cursor: group ? { sync: { key: group, setSeries: true } } : {},
    legend: { live: true },
    hooks: {
      draw: [(uu) => drawEpisodes(uu)],
      setScale: [(uu, key) => { if (key === 'x' && group) syncZoom(group, uu); }],
    },
  }, [[], ...series.map(() => [])], box);
  u.episodes = [];
  box.uplot = u;
  if (group) {
    if (!groups.has(group)) groups.set(group, { charts: new Set(), busy: false });
    groups.get(group).charts.add(u);
  }
  // Follow the box's width as the window changes.
  new ResizeObserver(() => {
    const w = Math.max(240, box.clientWidth - 12);
    if (box.isConnected && Math.abs(w - u.width) > 2) u.setSize({ width: w, height: u.height });
  }).observe(box);
  return u;
}
function dropGroup(group) {
  const g = groups.get(group);
  if (g) for (const u of g.charts) u.destroy();
  groups.delete(group);
}
// Anomaly episodes shaded on a time chart: u.episodes = [{from, to (s; null = ongoing), severity}].
function drawEpisodes(u) {
  if (!u.episodes || !u.episodes.length || !u.scales.x.time) return;
  const { ctx } = u;
  const { left, top, width, height } = u.bbox;
  ctx.save();
  for (const e of u.episodes) {
    const x0 = Math.max(left, u.valToPos(e.from, 'x', true));
    const x1 = Math.min(left + width, e.to == null ? left + width : u.valToPos(e.to, 'x', true));
    if (x1 < left || x0 > left + width) continue;
    ctx.fillStyle = e.severity === 'critical' ? 'rgba(255,77,79,0.18)' : 'rgba(224,161,0,0.16)';
    ctx.fillRect(x0, top, Math.max(2, x1 - x0), height);
    ctx.fillStyle = e.severity === 'critical' ? '#ff4d4f' : '#e0a100';
    ctx.fillRect(x0, top, 2, height);
  }
  ctx.restore();
}

// Chart groups per measurement; other measurements get one chart per numeric field.
const GROUPS = {
  car: [['Speed', ['speed_kph']], ['RPM', ['rpm']], ['Throttle and brake', ['throttle_pct', 'brake']], ['Gear', ['gear']],
        ['Temperatures', ['engine_temp_c', 'oil_temp_c', 'tyre_temp_fl_c', 'tyre_temp_fr_c', 'tyre_temp_rl_c', 'tyre_temp_rr_c']], ['ERS', ['ers_pct']]],
  sensor: [['Temperature', ['temperature_c']], ['Humidity', ['humidity_pct']], ['Pressure', ['pressure_hpa']]],
};
// Booleans are drawn as 0 or 1 on their own "on/off" axis.
const fieldValue = (v) => (typeof v === 'boolean' ? (v ? 1 : 0) : typeof v === 'number' ? v : null);

// ---------- tabs ----------
const tabOpeners = {};
function showTab(name) {
  if (!$('#tab-' + name)) name = 'live';
  $$('#tabs button').forEach((b) => b.classList.toggle('active', b.dataset.tab === name));
  $$('.tab').forEach((s) => s.classList.toggle('active', s.id === 'tab-' + name));
  setView({ tab: name === 'live' ? null : name });
  (tabOpeners[name] || (() => {}))();
}
$$('#tabs button').forEach((b) => b.addEventListener('click', () => showTab(b.dataset.tab)));

// ---------- time range: live last N seconds, or a range from the lake ----------
function range() {
  const r = view.range || '60';
  if (r === 'lake') {
    const from = Number(view.from), to = Number(view.to);
    if (Number.isFinite(from) && Number.isFinite(to) && to > from) return { lake: true, from, to };
    return { lake: true, from: Date.now() - 3600_000, to: Date.now() };
  }
  return { lake: false, seconds: Math.max(5, Number(r) || 60) };
}
// " AND time BETWEEN …" for the lake's queries when a range is chosen.
const rangeWhere = (col = 'time') => { const r = range(); return r.lake ? ` AND ${col} BETWEEN ${tsLit(r.from)} AND ${tsLit(r.to)}` : ''; };
function renderRangeControls() {
  const r = range();
  $('#range').value = view.range === 'lake' ? 'lake' : String(r.seconds || 60);
  $('#range-lake').hidden = !r.lake;
  if (r.lake) { $('#range-from').value = toInput(r.from); $('#range-to').value = toInput(r.to); }
  $('#tz').value = tz;
  $('#tz-label').textContent = zoneName();
}
$('#range').addEventListener('change', (e) => {
  const v = e.target.value;
  if (v === 'lake') { const to = Date.now(); setView({ range: 'lake', from: String(to - 15 * 60_000), to: String(to) }); }
  else setView({ range: v, from: null, to: null });
  renderRangeControls();
  rangeChanged();
});
$('#range-apply').addEventListener('click', () => {
  const from = fromInput($('#range-from').value), to = fromInput($('#range-to').value);
  if (from == null || to == null || !(to > from)) { $('#range-error').textContent = 'the end must be after the start'; return; }
  $('#range-error').textContent = '';
  setView({ range: 'lake', from: String(from), to: String(to) });
  rangeChanged();
});
$('#tz').addEventListener('change', (e) => {
  tz = e.target.value;
  localStorage.setItem('pitwall.tz', tz);
  setView({ tz });
  renderRangeControls();
  // Everything shown in time is drawn again in the new zone.
  rangeChanged();
});
function rangeChanged() {
  const active = ($('.tab.active') || {}).id?.replace('tab-', '') || 'live';
  if (active === 'live' || view.source) restartLive();
  renderAnomalies();
  renderHealth();
  if (active !== 'live') (tabOpeners[active] || (() => {}))();
}

// ---------- Live ----------
let sources = [];
let rules = [];
let liveES = null;
let liveCharts = [];
let liveData = null;
let dirty = false;
let liveKey = null; // measurement/source shown

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
  if (!liveKey && (view.source || sel.value)) startLive(view.source && sources.some((s) => s.measurement + '/' + s.source === view.source) ? view.source : sel.value);
  if ($('#tab-fleet').classList.contains('active')) renderFleet();
}
$('#live-source').addEventListener('change', (e) => startLive(e.target.value));

function buildCharts(measurement, fieldsSeen) {
  dropGroup('live');
  const box = $('#live-charts');
  box.replaceChildren();
  const groupsOf = GROUPS[measurement] ? GROUPS[measurement].map(([t, fs]) => [t, fs.filter((f) => fieldsSeen.includes(f))]).filter(([, fs]) => fs.length) : [];
  const shown = new Set(groupsOf.flatMap(([, fs]) => fs));
  for (const f of fieldsSeen) if (!shown.has(f) && f !== 'lap' && f !== 'x' && f !== 'y') groupsOf.push([f, [f]]);
  liveCharts = groupsOf.map(([title, fields]) => ({
    fields,
    u: chart(box, title, fields.map((f) => ({ label: f, unit: unitOf(f) })), { group: 'live' }),
  }));
  liveData = { t: [], cols: new Map() };
  markLiveEpisodes();
}
// Shade the shown source's episodes on the live (or trace) charts.
function markLiveEpisodes() {
  if (!liveKey) return;
  const [m, src] = liveKey.split('/');
  const eps = [...episodes.values()].filter((e) => e.measurement === m && e.source_id === src)
    .map((e) => ({ from: e.start / 1000, to: e.end == null ? null : e.end / 1000, severity: e.severity }));
  for (const c of liveCharts) { c.u.episodes = eps; c.u.redraw(false, true); }
}

function restartLive() { if (liveKey) startLive(liveKey); }
function startLive(value) {
  if (!value) return;
  const [measurement, source] = value.split('/');
  $('#trace-banner').hidden = true;
  if (liveES) { liveES.close(); liveES = null; }
  liveKey = value;
  setView({ source: value });
  stats.liveSource = source;
  stats.livePoints = 0;
  liveCharts = [];
  liveData = null;
  $('#live-source').value = value;
  const r = range();
  if (r.lake) { loadFromLake(measurement, source, r.from, r.to, 'in the chosen range'); return; }
  liveES = live({ stream: 'clean', measurement, source, rate: 20 }, {
    clean: (p) => {
      if (!liveData) buildCharts(measurement, Object.keys(p.fields).filter((f) => typeof p.fields[f] !== 'string'));
      const t = ms(p.time) / 1000;
      liveData.t.push(t);
      for (const c of liveCharts) for (const f of c.fields) {
        if (!liveData.cols.has(f)) liveData.cols.set(f, new Array(liveData.t.length - 1).fill(null));
      }
      for (const [f, col] of liveData.cols) col.push(fieldValue(p.fields[f]));
      const cutoff = t - range().seconds;
      let drop = 0;
      while (drop < liveData.t.length && liveData.t[drop] < cutoff) drop++;
      if (drop) { liveData.t.splice(0, drop); for (const col of liveData.cols.values()) col.splice(0, drop); }
      stats.livePoints++;
      stats.lastLatencyMs = Date.now() - ms(p.time);
      const d = behind(p);
      $('#live-info').textContent = `${stats.livePoints} points · last ${fmtTime(p.time, { millis: true })}` + (d == null ? '' : ` · ${d} ms behind the processor`);
      dirty = true;
    },
  });
  $('#live-info').textContent = 'waiting for the first point…';
}

// Redraw at most 10 times a second, whatever the rate of points.
setInterval(() => {
  if (!dirty || !liveData) return;
  dirty = false;
  const span = liveData.span;
  for (const c of liveCharts) {
    // A trace or a range from the lake keeps its span; live data scales to what it holds.
    c.u.setData([liveData.t.slice(), ...c.fields.map((f) => (liveData.cols.get(f) || []).slice())]);
    if (span) c.u.setScale('x', { min: span[0], max: span[1] });
  }
}, 100);

const tagOf = (m, source) => {
  const src = sources.find((s) => s.measurement === m && s.source === source);
  return src ? src.source_tag : (m === 'car' ? 'driver' : m === 'sensor' ? 'sensor_id' : 'host');
};
// A source's points from the lake between two times (ms), averaged into at most ~2,000 buckets.
async function loadFromLake(m, source, from, to, what) {
  $('#live-info').textContent = 'loading from the lake…';
  try {
    const cols = await sql(`SELECT * FROM clean.${m} WHERE ${tagOf(m, source)} = ${quote(source)} AND time BETWEEN ${tsLit(from)} AND ${tsLit(to)} LIMIT 1`);
    const numeric = cols.columns.filter((c) => /Int|Float|Boolean/.test(c.type)).map((c) => c.name);
    if (!numeric.length) { $('#live-info').textContent = `no points of ${source} ${what}`; buildCharts(m, []); return; }
    const bucketMs = Math.max(100, Math.ceil((to - from) / 2000));
    const agg = numeric.map((f) => `avg(CAST(${JSON.stringify(f)} AS DOUBLE)) AS ${JSON.stringify(f)}`).join(', ');
    const r = await sql(`SELECT date_bin(INTERVAL '${bucketMs} milliseconds', time) AS t, ${agg} FROM clean.${m}
      WHERE ${tagOf(m, source)} = ${quote(source)} AND time BETWEEN ${tsLit(from)} AND ${tsLit(to)} GROUP BY 1 ORDER BY 1`);
    buildCharts(m, numeric);
    liveData.t = r.rows.map((row) => ms(row.t) / 1000);
    for (const c of liveCharts) for (const f of c.fields) liveData.cols.set(f, r.rows.map((row) => row[f]));
    liveData.span = [from / 1000, to / 1000];
    dirty = true;
    $('#live-info').textContent = `${r.row_count} points from the lake ${what}` + (bucketMs > 100 ? ` (averaged per ${fmtDuration(bucketMs)})` : '');
  } catch (e) {
    buildCharts(m, []);
    $('#live-info').textContent = explain(e);
  }
}

async function showTrace(ep) {
  showTab('live');
  if (liveES) { liveES.close(); liveES = null; }
  liveKey = ep.measurement + '/' + ep.source_id;
  if (![...$('#live-source').options].some((o) => o.value === liveKey)) $('#live-source').append(el('option', { value: liveKey }, `${ep.source_id} (${ep.measurement})`));
  $('#live-source').value = liveKey;
  const end = ep.end ?? Math.max(ep.start, Date.now());
  $('#trace-banner').hidden = false;
  $('#trace-what').textContent = `${ep.rule} on ${ep.source_id}, ${fmtTime(ep.start)}` + (ep.end == null ? ', ongoing' : ` for ${fmtDuration(ep.end - ep.start)}`);
  await loadFromLake(ep.measurement, ep.source_id, ep.start - 30_000, Math.min(end, ep.start + 600_000) + 30_000, 'around the episode (shaded)');
}
$('#trace-back').addEventListener('click', () => { $('#trace-banner').hidden = true; restartLive(); });

// The unit of an episode's values: seconds for silence, else its field's.
const episodeUnit = (e) => (e.kind === 'deadman' ? 's' : unitOf(e.field));
const plural = (n, one, many = one + 's') => `${n} ${n === 1 ? one : many}`;

// ---------- anomaly episodes (the feed, Health and the charts read the same) ----------
// id -> {id, rule, kind, severity, measurement, source_id, field, start, end (ms or null), observed, expected, peak, message}
const episodes = new Map();
let unseen = 0;
// A start row or an end row, from the feed or the lake, in any order: an end is never undone.
function applyRow(a) {
  let e = episodes.get(a.id);
  if (!e) {
    e = { id: a.id, rule: a.rule, kind: a.kind, severity: a.severity, measurement: a.measurement, source_id: a.source_id, field: a.field,
          start: ms(a.time), end: null, observed: a.observed, expected: a.expected, peak: a.peak ?? a.observed, message: a.message };
    episodes.set(a.id, e);
  }
  if (a.phase === 'start') { e.observed = a.observed; e.message = a.message; }
  if (a.phase === 'end' || a.end_time != null) {
    e.end = ms(a.end_time);
    if (a.peak != null) e.peak = a.peak;
    e.endMessage = a.phase === 'end' ? a.message : a.end_message;
  }
  return e;
}
function episodeChanged(live) {
  if (live && !$('#tab-anomalies').classList.contains('active')) { unseen++; $('#anomaly-badge').textContent = unseen; }
  scheduleRender();
}
let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => { renderQueued = false; renderAnomalies(); renderHealth(); markLiveEpisodes(); if ($('#tab-fleet').classList.contains('active')) renderFleet(); }, 200);
}
tabOpeners.anomalies = () => { unseen = 0; $('#anomaly-badge').textContent = ''; renderAnomalies(); };

const EPISODE_COLS = `s.id, s.rule, s.kind, s.severity, s.measurement, s.source_id, s.field, s.time, e.end_time, s.observed, s.expected,
  coalesce(e.peak, s.peak, s.observed) AS peak, s.message, e.message AS end_message`;
// Episodes from the lake: every open one, and the newest (in the chosen range, if any).
async function loadEpisodes() {
  try {
    const open = await sql(`SELECT ${EPISODE_COLS} FROM anomalies.events s LEFT JOIN anomalies.events e ON e.id = s.id AND e.phase = 'end'
      WHERE s.phase = 'start' AND e.id IS NULL ORDER BY s.time DESC LIMIT 5000`);
    const recent = await sql(`SELECT ${EPISODE_COLS} FROM anomalies.events s LEFT JOIN anomalies.events e ON e.id = s.id AND e.phase = 'end'
      WHERE s.phase = 'start'${rangeWhere('s.time')} ORDER BY s.time DESC LIMIT 500`);
    for (const a of [...open.rows, ...recent.rows]) applyRow({ ...a, phase: 'start' });
    episodesLoaded = 'lake';
  } catch (e) { episodesLoaded = explain(e); }
  scheduleRender();
}
let episodesLoaded = null;

let feedES = null;
function startFeed() {
  setServerState('connecting');
  feedES = live({ stream: 'anomalies' }, { anomalies: (a) => { behind(a); applyRow(a); episodeChanged(true); } });
  feedES.onopen = () => setServerState('connected');
  feedES.onerror = () => { if (serverState !== 'stopped') setServerState(feedES.readyState === EventSource.CLOSED ? 'stopped' : 'reconnecting'); };
}

const severityRank = { critical: 0, warning: 1, info: 2 };
function filteredEpisodes() {
  const sev = view.sev || '', rule = view.rule || '', q = (view.q || '').toLowerCase();
  const r = range();
  return [...episodes.values()]
    .filter((e) => (!sev || e.severity === sev) && (!rule || e.rule === rule) && (!q || e.source_id.toLowerCase().includes(q)))
    .filter((e) => !r.lake || (e.start <= r.to && (e.end == null || e.end >= r.from)))
    .sort((a, b) => b.start - a.start);
}
function renderAnomalies() {
  const ruleSel = $('#flt-rule');
  const names = [...new Set([...episodes.values()].map((e) => e.rule))].sort();
  if (ruleSel.options.length - 1 !== names.length) {
    ruleSel.replaceChildren(el('option', { value: '' }, 'all rules'), ...names.map((n) => el('option', { value: n }, n)));
  }
  ruleSel.value = view.rule || '';
  $('#flt-sev').value = view.sev || '';
  if (document.activeElement !== $('#flt-source')) $('#flt-source').value = view.q || '';
  const list = filteredEpisodes();
  const shown = list.slice(0, 500);
  const body = $('#anomaly-table tbody');
  body.replaceChildren(...shown.map((e) => el('tr', { class: 'sev-' + e.severity, onclick: () => showTrace(e), 'data-source': e.source_id, 'data-rule': e.rule, 'data-id': e.id, 'data-state': e.end == null ? 'ongoing' : 'ended' },
    el('td', {}, el('span', { class: 'pill sev-' + e.severity }, e.severity)), el('td', {}, e.rule), el('td', {}, e.source_id), el('td', {}, e.field),
    el('td', {}, fmtTime(e.start)), el('td', {}, e.end == null ? el('b', { class: 'ongoing' }, 'ongoing') : fmtTime(e.end)),
    el('td', {}, fmtDuration((e.end ?? Date.now()) - e.start)),
    el('td', { class: 'numeric' }, `${withUnit(num(e.peak), episodeUnit(e))} vs ${withUnit(num(e.expected), episodeUnit(e))}`),
    el('td', { class: 'message' }, e.endMessage ? `${e.message} → ${e.endMessage}` : e.message))));
  stats.anomaliesShown = shown.length;
  const open = list.filter((e) => e.end == null).length;
  $('#anomaly-info').textContent = episodes.size === 0
    ? (episodesLoaded && episodesLoaded !== 'lake' ? episodesLoaded : 'no anomaly episodes yet: they appear here as the detectors find them')
    : `${plural(list.length, 'episode')}${list.length > shown.length ? ` (newest ${shown.length} shown)` : ''}, ${open} ongoing · times in ${zoneName()} · click one for its trace`;
}
$('#flt-sev').addEventListener('change', (e) => { setView({ sev: e.target.value }); renderAnomalies(); });
$('#flt-rule').addEventListener('change', (e) => { setView({ rule: e.target.value }); renderAnomalies(); });
$('#flt-source').addEventListener('input', (e) => { setView({ q: e.target.value }); renderAnomalies(); });

// ---------- Health ----------
// Components of a car; any other measurement's components are the fields its rules watch.
const CAR_COMPONENTS = [
  ['engine', (e) => /engine|oil|rpm/.test(e.field + ' ' + e.rule)],
  ['gearbox', (e) => /gear/.test(e.field + ' ' + e.rule)],
  ['ERS', (e) => /ers/.test(e.field)],
  ['tyres', (e) => /tyre/.test(e.field + ' ' + e.rule)],
  ['telemetry', (e) => e.kind === 'deadman' || e.kind === 'stuck' || e.field === '*'],
];
// Columns of a measurement's health table: [name, match]; episodes no column matches
// get an "other" column, so every open episode shows somewhere.
function componentsOf(m, eps) {
  let comps;
  if (m === 'car') comps = CAR_COMPONENTS;
  else {
    const fields = [...new Set([
      ...rules.filter((r) => r.measurement === m && r.field && r.kind !== 'deadman' && r.kind !== 'stuck').map((r) => r.field),
      ...eps.filter((e) => e.field !== '*' && e.kind !== 'deadman' && e.kind !== 'stuck').map((e) => e.field),
    ])].sort();
    comps = [...fields.map((f) => [f, (e) => e.field === f && e.kind !== 'deadman' && e.kind !== 'stuck']), CAR_COMPONENTS[4]];
  }
  const unmatched = eps.some((e) => !comps.some(([, match]) => match(e)));
  return unmatched ? [...comps, ['other', (e) => !comps.some(([, match]) => match(e))]] : comps;
}
function recentMinutes() { return Math.max(1, Number(view.recent) || 15); }
function renderHealth() {
  const box = $('#health-tables');
  $('#health-recent').value = String(recentMinutes());
  const since = Date.now() - recentMinutes() * 60_000;
  const measurements = [...new Set([...sources.map((s) => s.measurement), ...[...episodes.values()].map((e) => e.measurement)])].sort((a, b) => (a === 'car' ? -1 : b === 'car' ? 1 : a.localeCompare(b)));
  const bySource = new Map();
  for (const e of episodes.values()) {
    if (e.end != null && e.end < since) continue;
    const k = e.measurement + '/' + e.source_id;
    if (!bySource.has(k)) bySource.set(k, []);
    bySource.get(k).push(e);
  }
  const tables = [];
  for (const m of measurements) {
    const comps = componentsOf(m, [...bySource.entries()].filter(([k]) => k.startsWith(m + '/')).flatMap(([, v]) => v));
    const names = [...new Set([...sources.filter((s) => s.measurement === m).map((s) => s.source), ...[...bySource.keys()].filter((k) => k.startsWith(m + '/')).map((k) => k.slice(m.length + 1))])].sort();
    if (!names.length) continue;
    const rows = names.map((src) => {
      const eps = bySource.get(m + '/' + src) || [];
      return el('tr', { 'data-source': src }, el('td', {}, el('button', { class: 'link', onclick: () => { showTab('live'); startLive(m + '/' + src); } }, src)), ...comps.map(([name, match]) => {
        const hits = eps.filter(match).sort((a, b) => (a.end == null) - (b.end == null) || b.start - a.start);
        const openHits = hits.filter((h) => h.end == null);
        const state = openHits.length ? 'open' : hits.length ? 'recent' : 'ok';
        const shown = openHits.length ? openHits : hits.slice(0, 1);
        const td = el('td', { class: 'health-' + state, 'data-component': name, 'data-state': state, 'data-episodes': shown.map((h) => h.id).join(' ') });
        if (state === 'ok') td.append('ok');
        for (const h of shown) {
          td.append(el('div', { class: 'cell-ep', title: h.message, onclick: () => showTrace(h) },
            el('b', {}, h.rule), ` since ${fmtTime(h.start, { date: false })}, ${fmtDuration((h.end ?? Date.now()) - h.start)}` + (h.end == null ? '' : ' (ended)'),
            el('br'), `peak ${withUnit(num(h.peak), episodeUnit(h))} vs ${withUnit(num(h.expected), episodeUnit(h))}`));
        }
        return td;
      }));
    });
    tables.push(el('h2', {}, m === 'car' ? 'Cars' : m === 'sensor' ? 'Sensors' : m),
      el('div', { class: 'scroll-x' }, el('table', { class: 'grid health', 'data-measurement': m },
        el('thead', {}, el('tr', {}, el('th', {}, 'source'), ...comps.map(([n]) => el('th', {}, n)))), el('tbody', {}, ...rows))));
  }
  const open = [...episodes.values()].filter((e) => e.end == null).length;
  $('#health-info').textContent = tables.length
    ? `${plural(open, 'episode')} open now (red); amber: ended in the last ${recentMinutes()} min · times in ${zoneName()}`
    : 'no data yet: sources appear here as their first points arrive';
  box.replaceChildren(...tables);
}
$('#health-recent').addEventListener('change', (e) => { setView({ recent: e.target.value }); renderHealth(); });
tabOpeners.health = renderHealth;
// Durations of open episodes grow.
setInterval(() => { if ($('#tab-health').classList.contains('active')) renderHealth(); }, 5000);

// ---------- Fleet ----------
function ruleLimits(m) {
  const out = new Map();
  for (const r of rules) if (r.measurement === m && r.kind === 'threshold') out.set(r.field, { above: r.above, below: r.below, rule: r.name });
  return out;
}
let fleetLatest = new Map(); // sensor -> row
async function loadFleet() {
  try {
    const r = await sql(`SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY sensor_id ORDER BY time DESC) AS rn FROM clean.sensor WHERE time > now() - INTERVAL '10 minutes') WHERE rn = 1`);
    fleetLatest = new Map(r.rows.map((x) => [x.sensor_id, x]));
    $('#fleet-info').textContent = '';
  } catch (e) { $('#fleet-info').textContent = explain(e); }
  renderFleet();
}
function renderFleet() {
  const limits = ruleLimits('sensor');
  const fields = ['temperature_c', 'humidity_pct', 'pressure_hpa'];
  const sensors = [...new Set([...sources.filter((s) => s.measurement === 'sensor').map((s) => s.source), ...fleetLatest.keys()])].sort();
  const bySite = new Map();
  for (const s of sensors) {
    const row = fleetLatest.get(s);
    const site = row?.site ?? 'unknown site';
    if (!bySite.has(site)) bySite.set(site, []);
    bySite.get(site).push(s);
  }
  const cards = [];
  for (const [site, list] of [...bySite.entries()].sort()) {
    cards.push(el('h2', {}, `${site} · ${list.length} sensors`));
    cards.push(el('div', { class: 'fleet' }, ...list.map((s) => {
      const row = fleetLatest.get(s);
      const open = [...episodes.values()].filter((e) => e.measurement === 'sensor' && e.source_id === s && e.end == null);
      const seen = row ? ms(row.time) : null;
      const silent = open.some((e) => e.kind === 'deadman') || (seen != null && Date.now() - seen > 60_000);
      const status = silent ? 'silent' : open.length ? 'anomaly' : row ? 'ok' : 'no data';
      return el('div', { class: 'sensor-card status-' + status.replace(' ', '-'), 'data-sensor': s, 'data-status': status, onclick: () => { showTab('live'); startLive('sensor/' + s); } },
        el('div', { class: 'sensor-head' }, el('b', {}, s), el('span', { class: 'pill' }, status)),
        el('div', { class: 'muted' }, seen ? `last seen ${fmtTime(seen, { date: false })} (${fmtDuration(Math.max(0, Date.now() - seen))} ago)` : 'not seen in the last 10 min'),
        ...fields.filter((f) => row && row[f] != null).map((f) => {
          const lim = limits.get(f);
          const v = row[f];
          const bad = lim && ((lim.above != null && v > lim.above) || (lim.below != null && v < lim.below));
          const limText = lim ? [lim.below != null ? `≥ ${fmtNum(lim.below)}` : null, lim.above != null ? `≤ ${fmtNum(lim.above)}` : null].filter(Boolean).join(', ') : '';
          return el('div', { class: 'sensor-value' + (bad ? ' bad' : '') }, el('span', {}, f.replace(/_(c|pct|hpa)$/, '')), el('b', {}, withUnit(fmtNum(v), unitOf(f))), el('span', { class: 'muted' }, limText));
        }),
        ...open.map((e) => el('div', { class: 'sev-' + e.severity }, `${e.rule}: ${fmtDuration(Date.now() - e.start)}`)));
    })));
  }
  $('#fleet-grid').replaceChildren(...cards);
  if (!sensors.length) $('#fleet-info').textContent = 'no sensors yet: they appear here as their first points arrive';
}
tabOpeners.fleet = loadFleet;
setInterval(() => { if ($('#tab-fleet').classList.contains('active')) loadFleet(); }, 5000);

// ---------- Sessions ----------
function fillTable(table, columns, rows) {
  table.tHead.replaceChildren(el('tr', {}, ...columns.map((c) => el('th', {}, c))));
  table.tBodies[0].replaceChildren(...rows.map((r) => el('tr', {}, ...columns.map((c) => el('td', { class: typeof r[c] === 'number' ? 'numeric' : null }, typeof r[c] === 'number' ? num(r[c], Number.isInteger(r[c]) ? 0 : 1) : r[c] ?? '')))));
}
const emptyRow = (table, text, cls = 'muted') => { table.tHead.replaceChildren(); table.tBodies[0].replaceChildren(el('tr', {}, el('td', { class: cls }, text))); };
async function loadSessions() {
  $('#sessions-info').textContent = 'loading…';
  const counts = new Map();
  for (const e of episodes.values()) counts.set(e.source_id, (counts.get(e.source_id) || 0) + 1);
  const rw = rangeWhere();
  try {
    const cars = await sql(`WITH laps AS (SELECT driver, lap, max(date_part('epoch', time)) - min(date_part('epoch', time)) AS secs FROM clean.car WHERE lap > 0${rw} GROUP BY driver, lap),
      last AS (SELECT driver, max(lap) AS lap FROM clean.car WHERE true${rw} GROUP BY driver),
      best AS (SELECT laps.driver, min(secs) AS best FROM laps JOIN last ON laps.driver = last.driver WHERE laps.lap < last.lap GROUP BY laps.driver)
      SELECT c.driver, max(c.team) AS team, max(c.lap) AS laps, max(best.best) AS best_lap_s, max(c.speed_kph) AS top_speed_kph, avg(c.speed_kph) AS mean_speed_kph, count(*) AS samples
      FROM clean.car c LEFT JOIN best ON c.driver = best.driver WHERE true${rw.replace(/ time /g, ' c.time ')} GROUP BY c.driver ORDER BY best_lap_s NULLS LAST, c.driver`);
    for (const r of cars.rows) r.anomalies = counts.get(r.driver) || 0;
    if (cars.rows.length) fillTable($('#sessions-cars'), ['driver', 'team', 'laps', 'best_lap_s', 'top_speed_kph', 'mean_speed_kph', 'samples', 'anomalies'], cars.rows);
    else emptyRow($('#sessions-cars'), 'no car data in this range yet');
  } catch (e) { emptyRow($('#sessions-cars'), explain(e)); }
  try {
    const s = await sql(`SELECT sensor_id, max(site) AS site, count(*) AS samples, avg(temperature_c) AS mean_temp_c, max(temperature_c) AS max_temp_c, avg(humidity_pct) AS mean_humidity_pct, avg(pressure_hpa) AS mean_pressure_hpa FROM clean.sensor WHERE true${rw} GROUP BY sensor_id ORDER BY sensor_id`);
    for (const r of s.rows) r.anomalies = counts.get(r.sensor_id) || 0;
    if (s.rows.length) fillTable($('#sessions-sensors'), ['sensor_id', 'site', 'samples', 'mean_temp_c', 'max_temp_c', 'mean_humidity_pct', 'mean_pressure_hpa', 'anomalies'], s.rows);
    else emptyRow($('#sessions-sensors'), 'no sensor data in this range yet');
  } catch (e) { emptyRow($('#sessions-sensors'), explain(e)); }
  const r = range();
  $('#sessions-info').textContent = (r.lake ? `from the lake, ${fmtTime(r.from)} to ${fmtTime(r.to)} ${zoneName()}` : 'the whole lake') + ` · read at ${fmtTime(Date.now(), { date: false })}`;
}
tabOpeners.sessions = loadSessions;
$('#sessions-refresh').addEventListener('click', loadSessions);

// ---------- Compare ----------
let cmpLaps = []; // {driver, lap, n, start, end}
async function loadCompareChoices() {
  try {
    const r = await sql(`SELECT driver, lap, count(*) AS n, min(time) AS t0, max(time) AS t1, max(distance_m) - min(distance_m) AS covered FROM clean.car WHERE lap >= 0${rangeWhere()} GROUP BY driver, lap ORDER BY driver, lap`);
    cmpLaps = r.rows;
    const drivers = [...new Set(r.rows.map((x) => x.driver))].sort();
    if (!drivers.length) {
      $('#cmp-info').textContent = 'no laps in the lake yet: waiting for the first commit';
      $('#cmp-charts').replaceChildren();
      return;
    }
    for (const [id, key, pick] of [['#cmp-a', 'a', 0], ['#cmp-b', 'b', 1]]) {
      const sel = $(id);
      const cur = sel.value || view[key];
      sel.replaceChildren(...drivers.map((d) => el('option', { value: d }, d)));
      sel.value = cur && drivers.includes(cur) ? cur : drivers[Math.min(pick, drivers.length - 1)] || '';
    }
    $('#cmp-info').textContent = `${drivers.length} drivers · ${fillLaps()}`;
  } catch (e) { $('#cmp-info').textContent = explain(e); }
}
// Laps both drivers have; a lap is complete once the driver has started the next. By
// default the last complete lap both have (else the newest, in progress).
function fillLaps() {
  const a = $('#cmp-a').value, b = $('#cmp-b').value;
  const lapsOf = (d) => cmpLaps.filter((x) => x.driver === d).map((x) => x.lap);
  const lastOf = (d) => Math.max(-1, ...lapsOf(d));
  const la = new Set(lapsOf(a)), lb = new Set(lapsOf(b));
  const both = [...la].filter((l) => lb.has(l)).sort((x, y) => x - y);
  const complete = (l) => l < lastOf(a) && l < lastOf(b) && l > 0;
  const sel = $('#cmp-lap');
  const cur = sel.value || view.lap;
  sel.replaceChildren(...both.map((l) => el('option', { value: l, 'data-complete': complete(l) ? '1' : '0' }, l === 0 ? '0 (from the grid)' : complete(l) ? String(l) : `${l} (in progress)`)));
  const done = both.filter(complete);
  sel.value = cur && both.includes(Number(cur)) ? String(cur) : done.length ? String(done[done.length - 1]) : both.length ? String(both[both.length - 1]) : '';
  return both.length ? `${done.length} complete laps both ${a} and ${b} have` : `no lap both ${a} and ${b} have driven yet`;
}
for (const id of ['#cmp-a', '#cmp-b']) $(id).addEventListener('change', () => { $('#cmp-lap').value = ''; setView({ lap: null }); $('#cmp-info').textContent = fillLaps(); });

// Interpolated value of sorted (xs, ys) at x.
function interp(xs, ys, x) {
  let lo = 0, hi = xs.length - 1;
  if (hi < 0 || x < xs[0] || x > xs[hi]) return null;
  while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (xs[mid] <= x) lo = mid; else hi = mid; }
  if (xs[hi] === xs[lo]) return ys[lo];
  return ys[lo] + ((ys[hi] - ys[lo]) * (x - xs[lo])) / (xs[hi] - xs[lo]);
}
async function runCompare() {
  const a = $('#cmp-a').value, b = $('#cmp-b').value, lap = Number($('#cmp-lap').value);
  if (!a || !b || $('#cmp-lap').value === '') return;
  setView({ a, b, lap: String(lap) });
  $('#cmp-info').textContent = 'loading…';
  try {
    const q = (extra) => sql(`SELECT driver, time, distance_m, speed_kph, throttle_pct, CASE WHEN brake THEN 1 ELSE 0 END AS brake, gear, rpm,
      CASE WHEN drs THEN 1 ELSE 0 END AS drs, x, y${extra} FROM clean.car WHERE lap = ${lap} AND driver IN (${quote(a)}, ${quote(b)}) AND distance_m IS NOT NULL${rangeWhere()} ORDER BY driver, time`);
    // The track's sectors when the lap rule gives them (`sector`), else thirds of the lap.
    const r = await q(', sector').catch(() => q(''));
    const per = (d) => r.rows.filter((x) => x.driver === d);
    const ra = per(a), rb = per(b);
    stats.compareSeries = [ra.length, rb.length];
    stats.compareLap = lap;
    dropGroup('cmp');
    const box = $('#cmp-charts');
    box.replaceChildren();
    if (ra.length < 2 || rb.length < 2) { $('#cmp-info').textContent = `lap ${lap}: ${a} has ${ra.length} points, ${b} ${rb.length}`; return; }
    // Distance into the lap, and time into the lap at each point.
    const prep = (rows) => {
      const d0 = rows[0].distance_m, t0 = ms(rows[0].time);
      return { d: rows.map((x) => x.distance_m - d0), t: rows.map((x) => (ms(x.time) - t0) / 1000), rows };
    };
    const A = prep(ra), B = prep(rb);
    const lapTime = (P) => P.t[P.t.length - 1];
    // Delta: B's time at each of A's distances minus A's; positive means A is ahead.
    const delta = A.d.map((d, i) => { const tb = interp(B.d, B.t, d); return tb == null ? null : tb - A.t[i]; });
    const joined = (f) => uPlot.join([[A.d, A.rows.map((x) => x[f])], [B.d, B.rows.map((x) => x[f])]]);
    const series2 = (unit) => [{ label: a, unit }, { label: b, unit }];
    const opts = { time: false, xLabel: 'distance into the lap (m)', xUnit: 'm', group: 'cmp', height: 170 };
    const dU = chart(box, `Delta time: ${b} minus ${a} (above 0: ${a} ahead)`, [{ label: 'delta', unit: 's', color: '#e0a100' }], opts);
    dU.setData([A.d, delta]);
    for (const [title, f] of [['Speed', 'speed_kph'], ['Throttle', 'throttle_pct'], ['Brake', 'brake'], ['Gear', 'gear'], ['RPM', 'rpm'], ['DRS', 'drs']]) {
      chart(box, title, series2(unitOf(f)), opts).setData(joined(f));
    }
    drawTrackMap(A, B, a, b);
    const sectors = sectorTimes(A, B);
    $('#cmp-laps').replaceChildren(el('table', { class: 'grid' },
      el('thead', {}, el('tr', {}, el('th', {}, 'driver'), el('th', {}, `lap ${lap}`), ...sectors.map((s, i) => el('th', {}, `sector ${i + 1}`)))),
      el('tbody', {}, ...[[a, lapTime(A), 0], [b, lapTime(B), 1]].map(([d, t, k]) => el('tr', {}, el('td', {}, d), el('td', { class: 'numeric' }, t.toFixed(3) + ' s'),
        ...sectors.map((s) => el('td', { class: 'numeric' + (s[k] <= s[1 - k] ? ' best' : '') }, s[k].toFixed(3) + ' s')))))));
    lapTable(a, b, lap);
    $('#cmp-info').textContent = `lap ${lap}: ${a} ${lapTime(A).toFixed(3)} s, ${b} ${lapTime(B).toFixed(3)} s (${a} ${lapTime(A) <= lapTime(B) ? 'faster' : 'slower'} by ${Math.abs(lapTime(A) - lapTime(B)).toFixed(3)} s)`;
  } catch (e) { $('#cmp-info').textContent = explain(e); }
}
// Every complete lap of both drivers with its sector times (from the sector each point
// is in): where the time was won or lost over the session, the fastest of each in purple.
async function lapTable(a, b, current) {
  const box = $('#cmp-all-laps');
  try {
    const r = await sql(`SELECT driver, lap, sector, min(time) AS t0 FROM clean.car WHERE driver IN (${quote(a)}, ${quote(b)}) AND lap > 0${rangeWhere()} GROUP BY driver, lap, sector ORDER BY driver, lap, sector`);
    // Sector k's time: from its first point to the next sector's (or lap's) first point.
    const starts = new Map();
    for (const x of r.rows) starts.set(`${x.driver}/${x.lap}/${x.sector}`, ms(x.t0));
    const nSectors = Math.max(1, ...r.rows.map((x) => x.sector ?? 1));
    const laps = [...new Set(r.rows.map((x) => x.lap))].sort((x, y) => x - y);
    const timesOf = (d, l) => {
      const next = starts.get(`${d}/${l + 1}/1`);
      const ss = [...Array(nSectors).keys()].map((k) => starts.get(`${d}/${l}/${k + 1}`));
      if (next == null || ss.some((v) => v == null)) return null;
      const bounds = [...ss, next];
      return { lap: (next - ss[0]) / 1000, sectors: ss.map((t, k) => (bounds[k + 1] - t) / 1000) };
    };
    const rows = laps.map((l) => ({ l, A: timesOf(a, l), B: timesOf(b, l) })).filter((x) => x.A && x.B);
    if (!rows.length) { box.replaceChildren(el('p', { class: 'muted' }, 'no lap both have completed yet')); return; }
    const best = (f) => Math.min(...rows.flatMap((x) => [f(x.A), f(x.B)]));
    const bestLap = best((t) => t.lap);
    const bestSector = [...Array(nSectors).keys()].map((k) => best((t) => t.sectors[k]));
    const cell = (v, b) => el('td', { class: 'numeric' + (Math.abs(v - b) < 1e-9 ? ' best' : '') }, v.toFixed(3));
    box.replaceChildren(el('h2', {}, `Laps of ${a} and ${b} (s)`), el('table', { class: 'grid', id: 'cmp-lap-table' },
      el('thead', {}, el('tr', {}, el('th', {}, 'lap'), el('th', {}, a), ...bestSector.map((_, k) => el('th', {}, `S${k + 1}`)), el('th', {}, b), ...bestSector.map((_, k) => el('th', {}, `S${k + 1}`)), el('th', {}, `${b} − ${a}`))),
      el('tbody', {}, ...rows.map((x) => el('tr', { class: x.l === current ? 'current' : null, onclick: () => { $('#cmp-lap').value = String(x.l); runCompare(); } },
        el('td', {}, String(x.l)), cell(x.A.lap, bestLap), ...x.A.sectors.map((v, k) => cell(v, bestSector[k])),
        cell(x.B.lap, bestLap), ...x.B.sectors.map((v, k) => cell(v, bestSector[k])),
        el('td', { class: 'numeric' }, (x.B.lap - x.A.lap >= 0 ? '+' : '') + (x.B.lap - x.A.lap).toFixed(3)))))));
  } catch (e) { box.replaceChildren(el('p', { class: 'muted' }, explain(e))); }
}

// Each driver's time through each sector: by the `sector` column (the track's sectors)
// when both have it, else by thirds of the lap's distance.
function sectorTimes(A, B) {
  const bySector = (P) => {
    if (!P.rows.every((x) => Number.isInteger(x.sector))) return null;
    const starts = [0];
    for (let i = 1; i < P.rows.length; i++) if (P.rows[i].sector > P.rows[i - 1].sector) starts.push(P.t[i]);
    starts.push(P.t[P.t.length - 1]);
    return starts.slice(1).map((t, i) => t - starts[i]);
  };
  const sa = bySector(A), sb = bySector(B);
  if (sa && sb && sa.length === sb.length && sa.length > 1) return sa.map((t, i) => [t, sb[i]]);
  const len = Math.min(A.d[A.d.length - 1], B.d[B.d.length - 1]);
  const at = (P, d) => interp(P.d, P.t, Math.min(d, P.d[P.d.length - 1]));
  return [0, 1, 2].map((i) => [A, B].map((P) => (i === 2 ? P.t[P.t.length - 1] : at(P, (len * (i + 1)) / 3)) - at(P, (len * i) / 3)));
}
// The lap's path from x/y, each stretch coloured by who was faster through it.
function drawTrackMap(A, B, a, b) {
  const box = el('div', { class: 'chart' }, el('h3', {}, `Track map: red ${a} faster, blue ${b} faster`));
  const canvas = el('canvas', { id: 'track-map', width: 420, height: 320 });
  box.append(canvas);
  $('#cmp-charts').prepend(box);
  const pts = A.rows.filter((x) => x.x != null && x.y != null);
  if (pts.length < 2) { box.append(el('div', { class: 'muted' }, 'no x/y positions in this lap')); return; }
  const ctx = canvas.getContext('2d');
  const xs = pts.map((p) => p.x), ys = pts.map((p) => p.y);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const k = Math.min((canvas.width - 20) / (x1 - x0 || 1), (canvas.height - 20) / (y1 - y0 || 1));
  const px = (p) => [10 + (p.x - x0) * k, canvas.height - 10 - (p.y - y0) * k];
  const segs = 24;
  const len = A.d[A.d.length - 1];
  let faster = 0;
  for (let s = 0; s < segs; s++) {
    const d0 = (len * s) / segs, d1 = (len * (s + 1)) / segs;
    const ta = interp(A.d, A.t, d1) - interp(A.d, A.t, d0);
    const tb = interp(B.d, B.t, Math.min(d1, B.d[B.d.length - 1])) - interp(B.d, B.t, Math.min(d0, B.d[B.d.length - 1]));
    ctx.strokeStyle = !(tb > 0) || ta <= tb ? '#e10600' : '#2f8fff';
    if (ta <= tb) faster++;
    ctx.lineWidth = 5;
    ctx.lineCap = 'round';
    ctx.beginPath();
    // From the last point before the stretch, so the stretches join.
    let first = true;
    A.rows.forEach((p, i) => {
      const next = A.d[i + 1] ?? Infinity;
      if (next < d0 || A.d[i] > d1 || p.x == null) return;
      const [X, Y] = px(p);
      if (first) { ctx.moveTo(X, Y); first = false; } else ctx.lineTo(X, Y);
    });
    ctx.stroke();
  }
  canvas.dataset.segmentsA = String(faster);
}
tabOpeners.compare = async () => { await loadCompareChoices(); if (!stats.compareLap && $('#cmp-lap').value) runCompare(); };
// New drivers and laps reach the lake as the session goes on.
setInterval(() => { if ($('#tab-compare').classList.contains('active')) loadCompareChoices(); }, 10000);
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
  try { text = await (await fetch('/metrics')).text(); } catch (e) { $('#pipeline-info').textContent = 'the server cannot be reached'; return; }
  $('#pipeline-info').textContent = '';
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
    ['consumer lag (messages)', fmtNum(sum(m, 'pitwall_consumer_lag_messages'))],
    ['watermark lag (s)', max(m, 'pitwall_watermark_lag_seconds').toFixed(1)],
    ['rejects', fmtNum(sum(m, 'pitwall_rejects_total'))],
    ['late events', fmtNum(sum(m, 'pitwall_events_out_total', (l) => l.stream === 'late'))],
    ['lake commits', fmtNum(cur.commitCount)],
    ['rows in the lake', fmtNum(sum(m, 'pitwall_lake_rows_total'))],
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
    if (!pipeCharts) pipeCharts = chart($('#pipeline-charts'), 'Events per second by stage', ['ingest', 'write API', 'process', 'clean out'].map((label) => ({ label, unit: 'events/s' })));
    pipeCharts.setData([pipeSeries.t, pipeSeries.ingest, pipeSeries.write, pipeSeries.process, pipeSeries.clean]);
  }
  prevMetrics = cur;
  $('#pipeline-cards').replaceChildren(...cards.map(([k, v]) => el('div', { class: 'card' }, el('div', { class: 'v' }, String(v)), el('div', { class: 'k' }, k))));
}
setInterval(pollMetrics, 2000);
tabOpeners.pipeline = pollMetrics;

// ---------- SQL ----------
let lastResult = null;
async function runSql() {
  const q = $('#sql-text').value;
  $('#sql-info').textContent = 'running…';
  // The previous result goes at once: an error must not sit above old rows.
  dropGroup('sql');
  $('#sql-chart').replaceChildren();
  $('#sql-table').tHead.replaceChildren();
  $('#sql-table').tBodies[0].replaceChildren();
  $('#sql-csv').hidden = true;
  lastResult = null;
  try {
    const r = await sql(q);
    const cols = r.columns.map((c) => c.name);
    fillTable($('#sql-table'), cols, r.rows);
    stats.sqlRows = r.row_count;
    lastResult = r;
    $('#sql-csv').hidden = false;
    $('#sql-info').textContent = `${r.row_count} rows${r.truncated ? ' (more left out: the row limit)' : ''} in ${r.elapsed_ms} ms`;
    sqlChart(r);
  } catch (e) {
    stats.sqlRows = 0;
    $('#sql-info').replaceChildren(el('span', { class: 'error' }, e.message));
  }
}
// A time series when there is a time column; bars over a categorical first column; else none.
function sqlChart(r) {
  const numeric = r.columns.filter((c) => /Int|Float|Decimal/.test(c.type)).map((c) => c.name);
  const tcol = r.columns.find((c) => /Timestamp|Date/.test(c.type));
  const first = r.columns[0];
  $('#sql-chart').dataset.kind = 'none';
  if (r.rows.length < 1 || !numeric.length) return;
  if (tcol && r.rows.length > 1) {
    const ys = numeric.slice(0, 6);
    const xs = r.rows.map((row) => ms(row[tcol.name]) / 1000);
    const order = xs.map((x, i) => i).sort((a, b) => xs[a] - xs[b]);
    const u = chart($('#sql-chart'), `by ${tcol.name}`, ys.map((y) => ({ label: y, unit: unitOf(y) })), { group: 'sql' });
    u.setData([order.map((i) => xs[i]), ...ys.map((y) => order.map((i) => r.rows[i][y]))]);
    $('#sql-chart').dataset.kind = 'time';
  } else if (first && !numeric.includes(first.name) && r.rows.length <= 200) {
    const ys = numeric.slice(0, 4);
    const cats = r.rows.map((row) => String(row[first.name]));
    const u = chart($('#sql-chart'), `by ${first.name}`, ys.map((y) => ({ label: y, unit: unitOf(y) })), { time: false, bars: true, xLabel: first.name });
    u.axes[0].values = (uu, splits) => splits.map((v) => (Number.isInteger(v) && cats[v] != null ? cats[v] : ''));
    u.setData([cats.map((_, i) => i), ...ys.map((y) => r.rows.map((row) => row[y]))]);
    u.setScale('x', { min: -0.6, max: cats.length - 0.4 });
    $('#sql-chart').dataset.kind = 'bar';
  }
}
function downloadCsv() {
  if (!lastResult) return;
  const cols = lastResult.columns.map((c) => c.name);
  const cell = (v) => { if (v == null) return ''; const s = String(v); return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; };
  const text = [cols.map(cell).join(','), ...lastResult.rows.map((r) => cols.map((c) => cell(r[c])).join(','))].join('\r\n') + '\r\n';
  const a = el('a', { href: URL.createObjectURL(new Blob([text], { type: 'text/csv' })), download: 'pitwall-query.csv' });
  document.body.append(a);
  a.click();
  a.remove();
}
// The schema browser: tables and their columns; a click puts the name into the query.
async function loadSchema() {
  try {
    const r = await sql(`SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns WHERE table_catalog = 'pitwall' ORDER BY table_schema, table_name, ordinal_position`);
    const byTable = new Map();
    for (const c of r.rows) {
      const k = c.table_schema + '.' + c.table_name;
      if (!byTable.has(k)) byTable.set(k, []);
      byTable.get(k).push(c);
    }
    const insert = (text) => { const t = $('#sql-text'); const at = t.selectionStart ?? t.value.length; t.setRangeText(text, at, t.selectionEnd ?? at, 'end'); t.focus(); };
    $('#sql-schema').replaceChildren(...[...byTable.entries()].map(([name, cols]) => el('details', { 'data-table': name },
      el('summary', {}, el('span', { class: 'link', onclick: (e) => { e.preventDefault(); insert(name); } }, name), el('span', { class: 'muted' }, ` ${cols.length}`)),
      el('ul', {}, ...cols.map((c) => el('li', { onclick: () => insert(JSON.stringify(c.column_name)) }, c.column_name, el('span', { class: 'muted' }, ' ' + c.data_type)))))));
    if (!byTable.size) $('#sql-schema').textContent = 'no tables yet: waiting for the first commit';
  } catch (e) { $('#sql-schema').textContent = explain(e); }
}
tabOpeners.sql = loadSchema;
$('#sql-run').addEventListener('click', runSql);
$('#sql-csv').addEventListener('click', downloadCsv);
$('#sql-text').addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) runSql(); });

// ---------- start ----------
(async () => {
  renderRangeControls();
  try { rules = await api('/api/v1/rules'); } catch (e) { rules = []; }
  startFeed();
  await refreshSources();
  setInterval(refreshSources, 3000);
  loadEpisodes();
  showTab(view.tab || 'live');
})();
