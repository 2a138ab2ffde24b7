// Browser tests of the dashboard in real headless Chromium (Debian's), driven by
// playwright-core. Usage: node dashboard.mjs URL OUT_DIR CHECK...
// Checks: live, anomaly, compare, sql, sessions, health, pipeline. Each saves OUT_DIR/CHECK.png and prints one
// line "ok CHECK: ..." or "FAIL CHECK: ..."; the exit code is the number of failures.
import { chromium } from 'playwright-core';

const [url, outDir, ...checks] = process.argv.slice(2);
if (!url || !outDir || checks.length === 0) {
  console.error('usage: node dashboard.mjs URL OUT_DIR live|anomaly|compare|sql ...');
  process.exit(64);
}
const executablePath = process.env.PITWALL_CHROMIUM || '/usr/bin/chromium';

const browser = await chromium.launch({
  executablePath,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});

// Waits until fn() (run in the page) returns something truthy, or fails with `what`.
async function until(page, fn, arg, timeoutMs, what) {
  try {
    return await (await page.waitForFunction(fn, arg, { timeout: timeoutMs, polling: 100 })).jsonValue();
  } catch (e) {
    throw new Error(`${what} (within ${timeoutMs} ms)`);
  }
}

const window_points = (n) => `${n} points`;

// The lake's answer to a query, from the page (same origin, same token).
const lakeRows = (page, q) => page.evaluate(async (sql) => {
  const r = await fetch('/api/v1/query', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ sql, format: 'json' }) });
  return (await r.json()).rows || [];
}, q);
// Sends line protocol through the write API; fails unless answered 204.
async function write(page, body) {
  const r = await page.evaluate(async (b) => (await fetch('/api/v2/write?precision=ns', { method: 'POST', body: b })).status, body);
  if (r !== 204) throw new Error(`the write API answered ${r}`);
}
const nowNs = () => BigInt(Date.now()) * 1000000n;
const carLine = (driver, temp, t) => `car,driver=${driver},team=Test,session=browser-test,track=pitwall-park engine_temp_c=${temp},oil_temp_c=100,speed_kph=200,rpm=11000i,gear=6i,throttle_pct=90 ${t}\n`;
// Ids of the lake's open episodes, and of the Health page's red cells.
const OPEN_SQL = "SELECT s.id FROM anomalies.events s LEFT JOIN anomalies.events e ON e.id = s.id AND e.phase = 'end' WHERE s.phase = 'start' AND e.id IS NULL";
const redCells = (page) => page.$$eval('#health-tables td[data-state=open]', (tds) => [...new Set(tds.flatMap((td) => td.dataset.episodes.split(' ')))].sort());
async function healthMatchesLake(page, what) {
  const deadline = Date.now() + 30000;
  let lake = [], red = [];
  while (Date.now() < deadline) {
    lake = (await lakeRows(page, OPEN_SQL)).map((r) => r.id).sort();
    red = await redCells(page);
    if (JSON.stringify(lake) === JSON.stringify(red)) return lake;
    await page.waitForTimeout(500);
  }
  throw new Error(`${what}: the red cells ${JSON.stringify(red)} are not the lake's open episodes ${JSON.stringify(lake)}`);
}
// Parses a tick label ("10.5k", "1,018.8") back into a number.
const parseTick = (s) => { const m = String(s).replace(/,/g, '').match(/^(-?[\d.]+)([kMG]?)$/); return m ? Number(m[1]) * ({ '': 1, k: 1e3, M: 1e6, G: 1e9 })[m[2]] : NaN; };

const CHECKS = {
  // The live charts receive points for the source chosen from the list, and read like
  // an instrument: axis labels whole, units on every axis, a value readout for every
  // series under a shared cursor, zoom shared by every chart.
  async live(page) {
    await page.click('#tabs button[data-tab=live]');
    await until(page, () => document.querySelectorAll('#live-source option').length > 0, null, 15000, 'no source in the list');
    const source = await page.$$eval('#live-source option', (os) => (os.find((o) => o.value.startsWith('car/')) || os[0]).value);
    await page.selectOption('#live-source', source);
    const n = await until(page, () => window.pitwallStats.livePoints >= 20 && window.pitwallStats.livePoints, null, 15000, 'the live chart got fewer than 20 points');
    const drawn = await page.$eval('#live-charts .chart', (c) => c.uplot.data[0].length);
    if (drawn < 5) throw new Error(`the first chart holds ${drawn} points`);
    // RPM of 10,000-13,000: its tick labels read as such ("10k", "12.5k"), not cut.
    const rpm = await page.evaluate(() => {
      const c = [...document.querySelectorAll('#live-charts .chart')].find((x) => x.querySelector('h3').textContent === 'RPM');
      const u = c.uplot;
      const vals = u.data[1].filter((v) => v != null);
      const ctx = document.createElement('canvas').getContext('2d');
      ctx.font = '12px system-ui';
      const widest = Math.max(...u.axes[1]._values.map((v) => ctx.measureText(v).width));
      return { labels: u.axes[1]._values, min: Math.min(...vals), max: Math.max(...vals), size: u.axes[1]._size, widest, unit: u.axes[1].label };
    });
    if (!rpm.labels.length || rpm.labels.some((l) => !/^\d{1,3}(\.\d+)?k$|^\d{1,3}(,\d{3})+$/.test(l) && rpm.max >= 10000)) throw new Error(`RPM tick labels ${rpm.labels}`);
    for (const l of rpm.labels) {
      const v = parseTick(l);
      if (!(v >= rpm.min - 3000 && v <= rpm.max + 3000)) throw new Error(`RPM tick "${l}" reads ${v}, the data is ${rpm.min}-${rpm.max}`);
    }
    if (rpm.size < rpm.widest + 4) throw new Error(`the RPM axis is ${rpm.size} px for labels ${rpm.widest} px wide`);
    if (rpm.unit !== 'rpm') throw new Error(`the RPM axis is labelled ${rpm.unit}`);
    const units = await page.$$eval('#live-charts .chart', (cs) => cs.flatMap((c) => c.uplot.axes.slice(1).map((a) => a.label || '')));
    if (units.some((u) => !u)) throw new Error(`an axis has no unit: ${JSON.stringify(units)}`);
    // Throttle (%) and brake (on/off) on two axes, not one.
    const tb = await page.evaluate(() => [...document.querySelectorAll('#live-charts .chart')].find((x) => x.querySelector('h3').textContent === 'Throttle and brake').uplot.axes.length);
    if (tb !== 3) throw new Error(`throttle and brake share an axis (${tb - 1} y axes)`);
    // Hover the first chart: every chart's cursor follows, every series has a value.
    const box = await page.$eval('#live-charts .chart .u-over', (o) => { const r = o.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; });
    await page.mouse.move(box[0] + box[2] * 0.6, box[1] + box[3] / 2);
    await page.waitForTimeout(300);
    const cursor = await page.evaluate(() => [...document.querySelectorAll('#live-charts .chart')].map((c) => ({
      idx: c.uplot.cursor.idx, values: [...c.querySelectorAll('.u-legend .u-series:not(:first-child) .u-value')].map((v) => v.textContent) })));
    const idx = cursor[0].idx;
    if (idx == null || cursor.some((c) => c.idx == null)) throw new Error(`the cursor is not shared: ${JSON.stringify(cursor.map((c) => c.idx))}`);
    const readout = cursor.flatMap((c) => c.values);
    if (readout.length < 8 || readout.filter((v) => v && v !== '–').length < readout.length * 0.8) throw new Error(`value readout: ${JSON.stringify(readout)}`);
    // Zoom one chart by dragging: the others show the same span.
    await page.mouse.move(box[0] + box[2] * 0.3, box[1] + box[3] / 2);
    await page.mouse.down();
    await page.mouse.move(box[0] + box[2] * 0.5, box[1] + box[3] / 2, { steps: 5 });
    await page.mouse.up();
    await page.waitForTimeout(200);
    const spans = await page.$$eval('#live-charts .chart', (cs) => cs.map((c) => [c.uplot.scales.x.min, c.uplot.scales.x.max]));
    if (new Set(spans.map((s) => s.join())).size !== 1) throw new Error(`zoom not shared: ${JSON.stringify(spans)}`);
    await page.mouse.dblclick(box[0] + box[2] / 2, box[1] + box[3] / 2);
    await page.waitForTimeout(10000);
    const lag = await page.evaluate(() => {
      const v = [...window.pitwallStats.behindMs].sort((a, b) => a - b);
      const q = (p) => v[Math.min(v.length - 1, Math.floor(p * (v.length - 1)))];
      return { n: v.length, p50: q(0.5), p99: q(0.99), max: v[v.length - 1] };
    });
    return `${source}: ${window_points(n)} received, ${drawn} drawn; RPM ticks ${rpm.labels.join(' ')} on a ${rpm.size} px axis; ${readout.length} values under a shared cursor; zoom shared by ${spans.length} charts; behind the processor over ${lag.n} events: p50 ${lag.p50} ms, p99 ${lag.p99} ms, max ${lag.max} ms`;
  },

  // A fault sent through the write API is one episode row: ongoing, then ended with
  // its peak; filters narrow the feed; a click shows the trace with the episode shaded.
  async anomaly(page) {
    await page.click('#tabs button[data-tab=anomalies]');
    await until(page, () => document.querySelector('#conn').dataset.state === 'connected', null, 10000, 'the live feed did not connect');
    const t0 = nowNs();
    const sent = Date.now();
    await write(page, carLine('TST', 150, t0) + carLine('TST', 155.5, t0 + 500000000n));
    await until(page, () => document.querySelector('#anomaly-table tbody tr[data-source=TST][data-rule=engine_overheat][data-state=ongoing]'), null, 10000,
      'the injected engine_overheat on TST did not appear in the feed as ongoing');
    const shownMs = Date.now() - sent;
    await write(page, carLine('TST', 90, t0 + 1000000000n));
    await until(page, () => document.querySelector('#anomaly-table tbody tr[data-source=TST][data-rule=engine_overheat][data-state=ended]'), null, 10000, 'the episode did not end');
    const rows = await page.$$eval('#anomaly-table tbody tr[data-source=TST][data-rule=engine_overheat]', (trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent)));
    if (rows.length !== 1) throw new Error(`${rows.length} rows for one episode`);
    const [sev, , , field, start, end, duration, peak] = rows[0];
    if (sev !== 'critical' || field !== 'engine_temp_c' || !/^155\.5 °C vs 120 °C$/.test(peak) || !/^1\.0 s$/.test(duration) || !end || end === 'ongoing') {
      throw new Error(`episode row ${JSON.stringify(rows[0])}`);
    }
    // Filters: warnings only hides it; its rule and source bring it back alone.
    await page.selectOption('#flt-sev', 'warning');
    const warnings = await page.$$eval('#anomaly-table tbody tr', (trs) => trs.filter((t) => !t.classList.contains('sev-warning')).length);
    if (warnings) throw new Error(`${warnings} rows that are not warnings under the warning filter`);
    await page.selectOption('#flt-sev', '');
    await page.selectOption('#flt-rule', 'engine_overheat');
    await page.fill('#flt-source', 'TST');
    const left = await page.$$eval('#anomaly-table tbody tr', (trs) => trs.map((t) => t.dataset.source + '/' + t.dataset.rule));
    if (left.length !== 1 || left[0] !== 'TST/engine_overheat') throw new Error(`filtered rows ${left}`);
    if (!/rule=engine_overheat/.test(page.url()) || !/q=TST/.test(page.url())) throw new Error(`the filters are not in the URL: ${page.url()}`);
    // The trace: the lake's points around it, the episode shaded on every chart.
    await page.click('#anomaly-table tbody tr[data-source=TST]');
    await until(page, () => !document.querySelector('#trace-banner').hidden && /points from the lake/.test(document.querySelector('#live-info').textContent), null, 20000, 'no trace from the lake');
    const shaded = await page.$$eval('#live-charts .chart', (cs) => cs.map((c) => c.uplot.episodes.length));
    if (!shaded.length || shaded.some((n) => n < 1)) throw new Error(`episodes shaded per chart: ${shaded}`);
    // ±30 s around it, not only the points it has.
    const spanS = await until(page, () => { const u = document.querySelector('#live-charts .chart').uplot; const s = u.scales.x.max - u.scales.x.min; return s >= 55 && s; }, null, 5000, 'the trace does not show ±30 s');
    return `engine_overheat on TST shown ${shownMs} ms after the write, as one row: ${rows[0].slice(0, 8).join(' | ')}; filters work; the trace spans ${Math.round(spanS)} s with the episode shaded`;
  },

  // Two drivers' lap: lap and sector times, delta, speed, throttle, brake, gear, RPM and
  // DRS on one distance axis with a shared zoom, and the track map.
  async compare(page) {
    await page.click('#tabs button[data-tab=compare]');
    await until(page, () => document.querySelectorAll('#cmp-a option').length >= 2 && document.querySelectorAll('#cmp-lap option').length >= 1, null, 30000,
      'no two drivers with laps in the lake');
    const drivers = await page.$$eval('#cmp-a option', (os) => os.map((o) => o.value));
    await page.selectOption('#cmp-a', drivers[0]);
    await page.selectOption('#cmp-b', drivers[1]);
    const lap = await page.$eval('#cmp-lap', (s) => s.value);
    await page.click('#cmp-run');
    const series = await until(page, () => {
      const s = window.pitwallStats.compareSeries;
      return s.length === 2 && s[0] > 5 && s[1] > 5 && document.querySelectorAll('#cmp-charts .chart').length >= 8 && s;
    }, null, 15000, 'the comparison did not get two traces');
    const titles = await page.$$eval('#cmp-charts .chart h3', (hs) => hs.map((h) => h.textContent));
    for (const want of ['Track map', 'Delta time', 'Speed', 'Throttle', 'Brake', 'Gear', 'RPM', 'DRS']) {
      if (!titles.some((t) => t.startsWith(want))) throw new Error(`no ${want} chart: ${titles}`);
    }
    const xs = await page.$$eval('#cmp-charts .chart', (cs) => cs.filter((c) => c.uplot).map((c) => c.uplot.axes[0].label));
    if (xs.some((x) => !/distance/.test(x))) throw new Error(`x axes ${xs}`);
    const times = await page.$$eval('#cmp-laps td.numeric', (tds) => tds.map((t) => t.textContent));
    const sectors = await page.$$eval('#cmp-laps th', (ths) => ths.filter((t) => /^sector \d$/.test(t.textContent)).length);
    if (sectors < 2 || times.length !== 2 * (1 + sectors) || times.some((t) => !/^\d+\.\d{3} s$/.test(t))) throw new Error(`lap and ${sectors} sector times ${times}`);
    if (!/a=/.test(page.url()) || !new RegExp(`lap=${lap}`).test(page.url())) throw new Error(`the comparison is not in the URL: ${page.url()}`);
    // Once both have completed a lap: the table of laps with sector times, and the
    // default lap is the last complete one.
    const deadline = Date.now() + 120000;
    let laps = 0;
    let complete = [];
    // A link with the drivers and no lap: the page picks the lap and compares by itself.
    const link = new URL(page.url());
    link.search = new URLSearchParams({ tab: 'compare', a: drivers[0], b: drivers[1] }).toString();
    // The lap list is read when the page opens and the table of laps a moment later: a
    // lap that ends between the two is in the table but not yet complete in the list,
    // so the page is opened again until both agree (the deadline still holds).
    while (Date.now() < deadline && !(laps && complete[1] === '1')) {
      await page.waitForTimeout(5000);
      await page.goto(link.toString());
      laps = await until(page, () => document.querySelector('#cmp-all-laps h2, #cmp-all-laps p') && document.querySelectorAll('#cmp-lap-table tbody tr').length + 1, null, 20000, 'no table of laps') - 1;
      complete = await page.$eval('#cmp-lap', (s) => [s.value, s.selectedOptions[0]?.dataset.complete]);
    }
    if (!laps) throw new Error('no lap both drivers completed within 2 minutes');
    const row = await page.$$eval('#cmp-lap-table tbody tr:first-child td', (tds) => tds.map((t) => t.textContent));
    if (complete[1] !== '1') throw new Error(`the default lap ${complete[0]} is not complete`);
    const sum = (xs) => xs.reduce((t, x) => t + Number(x), 0);
    const nS = (row.length - 4) / 2;
    if (nS < 2 || Math.abs(sum(row.slice(2, 2 + nS)) - Number(row[1])) > 0.01) throw new Error(`sector times do not add up to the lap: ${row}`);
    return `${drivers[0]} (${series[0]} points) vs ${drivers[1]} (${series[1]} points), lap ${lap}: ${titles.length} charts, times ${times.join(' ')}; then ${laps} complete laps in the table (first: ${row.join(' ')}), default lap ${complete[0]}`;
  },

  // Session summaries from the lake: a row per driver with laps and speeds.
  async sessions(page) {
    await page.click('#tabs button[data-tab=sessions]');
    const n = await until(page, () => document.querySelectorAll('#sessions-cars tbody tr td:nth-child(5)').length >= 2
      && document.querySelectorAll('#sessions-cars tbody tr').length, null, 15000, 'no driver summaries');
    const top = await page.$eval('#sessions-cars tbody tr td:nth-child(5)', (td) => Number(td.textContent.replace(/,/g, '')));
    if (!(top > 50)) throw new Error(`top speed of the first driver is ${top}`);
    return `${n} drivers summarised; first top speed ${top} km/h`;
  },

  // Health shows exactly the lake's open episodes: while a fault lasts, after it ends
  // and after a reload; sensors get their own fields, not a car's components.
  async health(page) {
    await until(page, () => document.querySelectorAll('#live-source option').length >= 2, null, 15000, 'no sources');
    await page.click('#tabs button[data-tab=health]');
    await until(page, () => document.querySelectorAll('#health-tables tbody tr').length, null, 10000, 'no health rows');
    const t0 = nowNs();
    await write(page, carLine('TSH', 140, t0) + carLine('TSH', 147.5, t0 + 200000000n));
    await until(page, () => document.querySelector('#health-tables tr[data-source=TSH] td[data-component=engine][data-state=open]'), null, 10000, 'the fault on TSH is not red');
    const during = await healthMatchesLake(page, 'while the fault lasts');
    if (!during.some((id) => id.startsWith('engine_overheat:TSH:'))) throw new Error(`the lake has no open episode of TSH: ${during}`);
    const cell = await page.$eval('#health-tables tr[data-source=TSH] td[data-component=engine]', (td) => td.textContent);
    if (!/engine_overheat/.test(cell) || !/peak 140 °C vs 120 °C/.test(cell)) throw new Error(`the cell says ${cell}`);
    // Stamped now: the matching above may have taken longer than the lateness allowed.
    await write(page, carLine('TSH', 95, nowNs()));
    await until(page, () => document.querySelector('#health-tables tr[data-source=TSH] td[data-component=engine][data-state=recent]'), null, 10000, 'the ended fault is not shown as recent');
    const after = await healthMatchesLake(page, 'after the fault ended');
    if (after.some((id) => id.startsWith('engine_overheat:TSH:'))) throw new Error('the lake still has the episode open');
    const ended = await page.$eval('#health-tables tr[data-source=TSH] td[data-component=engine]', (td) => td.textContent);
    if (!/peak 147\.5 °C vs 120 °C/.test(ended)) throw new Error(`after the end the cell says ${ended}`);
    await page.reload();
    await page.click('#tabs button[data-tab=health]');
    await until(page, () => document.querySelector('#health-tables tr[data-source=TSH] td[data-component=engine][data-state=recent]'), null, 15000, 'after a reload the ended fault is not shown as recent');
    const reloaded = await healthMatchesLake(page, 'after a reload');
    const cols = await page.$$eval('#health-tables table[data-measurement=sensor] thead th', (ths) => ths.map((t) => t.textContent));
    if (cols.includes('engine') || !cols.includes('temperature_c')) throw new Error(`sensor columns are ${cols}`);
    const carCols = await page.$$eval('#health-tables table[data-measurement=car] thead th', (ths) => ths.map((t) => t.textContent));
    if (!['engine', 'gearbox', 'ERS', 'tyres', 'telemetry'].every((c) => carCols.includes(c))) throw new Error(`car columns are ${carCols}`);
    return `red cells = the lake's open episodes: ${during.length} while the fault lasted, ${after.length} after it ended, ${reloaded.length} after a reload; sensor columns ${cols.slice(1).join(', ')}`;
  },

  // The operator's fleet: sensors by site with status, last seen and values against limits.
  async fleet(page) {
    await page.click('#tabs button[data-tab=fleet]');
    const n = await until(page, () => document.querySelectorAll('#fleet-grid .sensor-card[data-status=ok], #fleet-grid .sensor-card[data-status=anomaly], #fleet-grid .sensor-card[data-status=silent]').length >= 5
      && document.querySelectorAll('#fleet-grid .sensor-card').length, null, 20000, 'no sensor cards with a status');
    const sites = await page.$$eval('#fleet-grid h2', (hs) => hs.map((h) => h.textContent));
    const card = await page.$eval('#fleet-grid .sensor-card', (c) => ({ id: c.dataset.sensor, text: c.textContent }));
    if (!/last seen/.test(card.text) || !/°C/.test(card.text) || !/≤|≥/.test(card.text)) throw new Error(`a card says ${card.text}`);
    await page.click(`#fleet-grid .sensor-card[data-sensor="${card.id}"]`);
    await until(page, (id) => document.querySelector('#tab-live').classList.contains('active') && document.querySelector('#live-source').value === 'sensor/' + id, card.id, 5000, 'a click did not open the sensor live');
    return `${n} sensors in ${sites.length} sites (${sites.join('; ')}); a card: ${card.text.slice(0, 120)}`;
  },

  // Pipeline health from /metrics: events per second and commit latency.
  async pipeline(page) {
    await page.click('#tabs button[data-tab=pipeline]');
    const cards = await until(page, () => {
      const cs = [...document.querySelectorAll('#pipeline-cards .card')].map((c) => [c.querySelector('.k').textContent, c.querySelector('.v').textContent]);
      const p = cs.find(([k]) => k === 'events/s processed');
      return p && Number(p[1]) > 0 && cs;
    }, null, 15000, 'no events/s processed on the pipeline page');
    return cards.map(([k, v]) => `${k}=${v}`).join(', ');
  },

  // The SQL console: bars for a categorical first column, a time series for a time
  // column, nothing over a row index; an error clears the old result; the schema
  // browser; CSV download.
  async sql(page) {
    await page.click('#tabs button[data-tab=sql]');
    await until(page, () => document.querySelector('#sql-schema details[data-table="clean.car"]'), null, 15000, 'the schema browser has no clean.car');
    await page.fill('#sql-text', 'SELECT driver, count(*) AS samples, max(speed_kph) AS top_speed_kph FROM clean.car GROUP BY driver ORDER BY driver');
    await page.click('#sql-run');
    const rows = await until(page, () => window.pitwallStats.sqlRows > 0 && document.querySelectorAll('#sql-table tbody tr').length, null, 15000,
      'the console showed no rows');
    const header = await page.$$eval('#sql-table thead th', (ths) => ths.map((t) => t.textContent));
    if (header.join(',') !== 'driver,samples,top_speed_kph') throw new Error(`header is ${header}`);
    const kind = await page.$eval('#sql-chart', (c) => c.dataset.kind);
    if (kind !== 'bar') throw new Error(`a GROUP BY driver result is drawn as ${kind}`);
    const axes = await page.$eval('#sql-chart .chart', (c) => c.uplot.axes.length - 1);
    if (axes !== 2) throw new Error(`samples and km/h on ${axes} axes`);
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#sql-csv')]);
    const csv = await (await import('node:fs/promises')).readFile(await download.path(), 'utf8');
    if (!csv.startsWith('driver,samples,top_speed_kph\r\n') || csv.trim().split('\r\n').length !== rows + 1) throw new Error(`CSV: ${csv.slice(0, 80)}`);
    await page.fill('#sql-text', "SELECT date_bin(INTERVAL '5 seconds', time) AS t, avg(speed_kph) AS speed_kph FROM clean.car GROUP BY 1 ORDER BY 1");
    await page.click('#sql-run');
    await until(page, () => document.querySelector('#sql-chart').dataset.kind === 'time', null, 15000, 'a time column did not give a time series');
    // A statement that writes is refused, in words, and the old result is gone.
    await page.fill('#sql-text', 'DROP TABLE clean.car');
    await page.click('#sql-run');
    await until(page, () => /only reading is allowed/.test(document.querySelector('#sql-info').textContent), null, 10000, 'DROP TABLE was not refused');
    const left = await page.$$eval('#sql-table tbody tr, #sql-chart .chart', (x) => x.length);
    if (left) throw new Error(`${left} rows or charts of the old result stay under the error`);
    return `${rows} rows as bars with 2 axes, CSV of ${rows} rows, a time series for a time column, DROP TABLE refused and the old result cleared`;
  },

  // The view is in the URL: a reload (or a shared link) restores tab, source, lap, zone.
  async url(page) {
    const source = await until(page, () => { const o = [...document.querySelectorAll('#live-source option')].find((x) => x.value.startsWith('sensor/')); return o && o.value; }, null, 15000, 'no sensor source');
    await page.selectOption('#live-source', source);
    await page.selectOption('#tz', 'utc');
    await page.selectOption('#range', '300');
    const u = page.url();
    await page.goto(u);
    await until(page, (s) => document.querySelector('#live-source').value === s, source, 10000, `the source was not restored from ${u}`);
    const restored = await page.evaluate(() => [document.querySelector('#tz').value, document.querySelector('#range').value, document.querySelector('#tz-label').textContent]);
    if (restored.join() !== 'utc,300,UTC') throw new Error(`restored ${restored}`);
    // Every time on a page is in the chosen zone: the live info's clock is UTC.
    await until(page, () => window.pitwallStats.livePoints > 0, null, 10000, 'no live points');
    const info = await page.$eval('#live-info', (e) => e.textContent);
    const clock = info.match(/last (\d{4}-\d\d-\d\d \d\d:\d\d)/);
    const utcNow = new Date().toISOString().slice(0, 16).replace('T', ' ');
    if (!clock || Math.abs(Date.parse(clock[1].replace(' ', 'T') + 'Z') - Date.parse(utcNow.replace(' ', 'T') + 'Z')) > 120000) throw new Error(`live info ${info} is not UTC (${utcNow})`);
    await page.goto(u.replace(/tab=[^&]*&?/, '') + '&tab=anomalies');
    await until(page, () => document.querySelector('#tab-anomalies').classList.contains('active'), null, 5000, 'tab=anomalies did not open the feed');
    return `${u.replace(/^https?:\/\/[^/]+/, '')} restored source, zone and range; times in UTC`;
  },

  // Layouts that fit: no horizontal scroll at 1280 px on any page, nor at 400 px on Live,
  // Anomalies and Health; charts follow the window's width.
  async layout(page) {
    const wide = {};
    await page.setViewportSize({ width: 1600, height: 1000 });
    await until(page, () => document.querySelectorAll('#live-charts .chart').length >= 2, null, 15000, 'no live charts');
    await page.setViewportSize({ width: 1280, height: 800 });
    for (const tab of ['live', 'anomalies', 'health', 'fleet', 'sessions', 'compare', 'pipeline', 'sql']) {
      await page.click(`#tabs button[data-tab=${tab}]`);
      await page.waitForTimeout(tab === 'compare' || tab === 'sessions' ? 2000 : 600);
      wide[tab] = await page.evaluate(() => document.documentElement.scrollWidth);
    }
    await page.click('#tabs button[data-tab=live]');
    await page.waitForTimeout(500);
    const overlap = await page.$$eval('#live-charts .chart', (cs) => cs.filter((c) => c.querySelector('canvas').getBoundingClientRect().right > c.getBoundingClientRect().right + 1).length);
    if (overlap) throw new Error(`${overlap} charts are wider than their box after 1600 → 1280`);
    await page.setViewportSize({ width: 400, height: 800 });
    const narrow = {};
    for (const tab of ['live', 'anomalies', 'health']) {
      await page.click(`#tabs button[data-tab=${tab}]`);
      await page.waitForTimeout(800);
      narrow[tab] = await page.evaluate(() => document.documentElement.scrollWidth);
      await page.screenshot({ path: `${outDir}/layout-400-${tab}.png` });
    }
    const bad = [...Object.entries(wide).filter(([, w]) => w > 1280), ...Object.entries(narrow).filter(([, w]) => w > 400)];
    if (bad.length) throw new Error(`horizontal scroll: ${JSON.stringify(bad)} (1280: ${JSON.stringify(wide)}, 400: ${JSON.stringify(narrow)})`);
    return `page widths at 1280: ${JSON.stringify(wide)}; at 400: ${JSON.stringify(narrow)}`;
  },

  // Ctrl-C with a tab open: the header says "stopped" (the test sends the signal once
  // this prints "ready").
  async shutdown(page) {
    await until(page, () => document.querySelector('#conn').dataset.state === 'connected', null, 10000, 'the live feed did not connect');
    await until(page, () => window.pitwallStats.livePoints > 0, null, 10000, 'no live points');
    console.log('ready');
    await until(page, () => document.querySelector('#conn').dataset.state === 'stopped', null, 30000, 'the header never said stopped');
    const text = await page.$eval('#conn', (c) => c.textContent);
    return `the header says "${text}"`;
  },
};

let failures = 0;
for (const name of checks) {
  const check = CHECKS[name];
  if (!check) { console.log(`FAIL ${name}: no such check`); failures++; continue; }
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  try {
    await page.goto(url, { waitUntil: 'load' });
    const what = await check(page);
    if (errors.length) throw new Error('the page threw: ' + errors.join('; '));
    console.log(`ok ${name}: ${what}`);
  } catch (e) {
    console.log(`FAIL ${name}: ${e.message}`);
    failures++;
  }
  await page.waitForTimeout(300);
  await page.screenshot({ path: `${outDir}/${name}.png`, fullPage: false });
  await page.close();
}
await browser.close();
process.exit(failures);
