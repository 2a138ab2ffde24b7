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

const CHECKS = {
  // The live chart receives points for the source chosen from the list.
  async live(page) {
    await page.click('#tabs button[data-tab=live]');
    await until(page, () => document.querySelectorAll('#live-source option').length > 0, null, 15000, 'no source in the list');
    const source = await page.$eval('#live-source option', (o) => o.value);
    await page.selectOption('#live-source', source);
    const n = await until(page, () => window.pitwallStats.livePoints >= 20 && window.pitwallStats.livePoints, null, 15000, 'the live chart got fewer than 20 points');
    // The chart really drew: uPlot's canvas has series data.
    const drawn = await page.$eval('#live-charts .chart', (c) => c.uplot.data[0].length);
    if (drawn < 5) throw new Error(`the first chart holds ${drawn} points`);
    // Let it run a while, then report how far behind the processor the page was.
    await page.waitForTimeout(10000);
    const lag = await page.evaluate(() => {
      const v = [...window.pitwallStats.behindMs].sort((a, b) => a - b);
      const q = (p) => v[Math.min(v.length - 1, Math.floor(p * (v.length - 1)))];
      return { n: v.length, p50: q(0.5), p99: q(0.99), max: v[v.length - 1] };
    });
    return `${source}: ${window_points(n)} received, ${drawn} drawn; behind the processor over ${lag.n} events: p50 ${lag.p50} ms, p99 ${lag.p99} ms, max ${lag.max} ms`;
  },

  // A fault sent through the write API shows in the anomaly feed within 10 s.
  async anomaly(page) {
    await page.click('#tabs button[data-tab=anomalies]');
    await until(page, () => document.querySelector('#conn').classList.contains('up'), null, 10000, 'the live feed did not connect');
    const now = BigInt(Date.now()) * 1000000n;
    const body = `car,driver=TST,team=Test,session=browser-test,track=pitwall-park engine_temp_c=150,speed_kph=200,rpm=11000i,gear=6i,throttle_pct=90 ${now}\n`;
    const sent = Date.now();
    const r = await page.evaluate(async (b) => (await fetch('/api/v2/write?precision=ns', { method: 'POST', body: b })).status, body);
    if (r !== 204) throw new Error(`the write API answered ${r}`);
    await until(page, () => document.querySelector('#anomaly-table tbody tr[data-source=TST][data-rule=engine_overheat]'), null, 10000,
      'the injected engine_overheat on TST did not appear in the feed');
    const ms = Date.now() - sent;
    const first = await page.$eval('#anomaly-table tbody tr', (tr) => tr.dataset.source + ' ' + tr.dataset.rule);
    return `engine_overheat on TST shown ${ms} ms after the write; newest row: ${first}`;
  },

  // The comparison view draws two drivers' traces over distance.
  async compare(page) {
    await page.click('#tabs button[data-tab=compare]');
    await until(page, () => document.querySelectorAll('#cmp-a option').length >= 2 && document.querySelectorAll('#cmp-lap option').length >= 1, null, 30000,
      'no two drivers with laps in the lake');
    const drivers = await page.$$eval('#cmp-a option', (os) => os.map((o) => o.value));
    await page.selectOption('#cmp-a', drivers[0]);
    await page.selectOption('#cmp-b', drivers[1]);
    // Lap 1 is the first whole lap (lap 0 runs from the grid to the line).
    const laps = await page.$$eval('#cmp-lap option', (os) => os.map((o) => o.value));
    const lap = laps.includes('1') ? '1' : laps[0];
    await page.selectOption('#cmp-lap', lap);
    await page.click('#cmp-run');
    const series = await until(page, () => {
      const s = window.pitwallStats.compareSeries;
      return s.length === 2 && s[0] > 5 && s[1] > 5 && s;
    }, null, 15000, 'the comparison did not get two traces');
    const charts = await page.$$eval('#cmp-charts .chart', (cs) => cs.map((c) => c.uplot.series.length - 1));
    if (charts.length !== 3 || charts.some((n) => n !== 2)) throw new Error(`expected 3 charts of 2 series, got ${JSON.stringify(charts)}`);
    return `${drivers[0]} (${series[0]} points) vs ${drivers[1]} (${series[1]} points), lap ${lap}, 3 charts`;
  },

  // Session summaries from the lake: a row per driver with laps and speeds.
  async sessions(page) {
    await page.click('#tabs button[data-tab=sessions]');
    const n = await until(page, () => document.querySelectorAll('#sessions-cars tbody tr td:nth-child(5)').length >= 2
      && document.querySelectorAll('#sessions-cars tbody tr').length, null, 15000, 'no driver summaries');
    const top = await page.$eval('#sessions-cars tbody tr td:nth-child(5)', (td) => Number(td.textContent));
    if (!(top > 50)) throw new Error(`top speed of the first driver is ${top}`);
    return `${n} drivers summarised; first top speed ${top} km/h`;
  },

  // Component health: a row per source, each component ok or naming its open episode.
  async health(page) {
    await until(page, () => document.querySelectorAll('#live-source option').length >= 2, null, 15000, 'no sources');
    await page.click('#tabs button[data-tab=health]');
    const rows = await until(page, () => document.querySelectorAll('#health-table tbody tr').length, null, 10000, 'no health rows');
    const cols = await page.$$eval('#health-table thead th', (ths) => ths.map((t) => t.textContent));
    if (!['engine', 'gearbox', 'ERS'].every((c) => cols.includes(c))) throw new Error(`columns are ${cols}`);
    return `${rows} sources × ${cols.length - 1} components`;
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

  // The SQL console runs a query and shows rows and a chart.
  async sql(page) {
    await page.click('#tabs button[data-tab=sql]');
    await page.fill('#sql-text', 'SELECT driver, count(*) AS samples, max(speed_kph) AS top_speed_kph FROM clean.car GROUP BY driver ORDER BY driver');
    await page.click('#sql-run');
    const rows = await until(page, () => window.pitwallStats.sqlRows > 0 && document.querySelectorAll('#sql-table tbody tr').length, null, 15000,
      'the console showed no rows');
    const header = await page.$$eval('#sql-table thead th', (ths) => ths.map((t) => t.textContent));
    if (header.join(',') !== 'driver,samples,top_speed_kph') throw new Error(`header is ${header}`);
    const chart = await page.$$eval('#sql-chart .chart', (cs) => cs.length);
    if (chart !== 1) throw new Error('no chart of the result');
    // A statement that writes is refused, in words.
    await page.fill('#sql-text', 'DROP TABLE clean.car');
    await page.click('#sql-run');
    await until(page, () => /only reading is allowed/.test(document.querySelector('#sql-info').textContent), null, 10000, 'DROP TABLE was not refused');
    await page.fill('#sql-text', 'SELECT driver, count(*) AS samples, max(speed_kph) AS top_speed_kph FROM clean.car GROUP BY driver ORDER BY driver');
    await page.click('#sql-run');
    await until(page, () => window.pitwallStats.sqlRows > 0, null, 15000, 'the console showed no rows the second time');
    return `${rows} rows, a chart, and DROP TABLE refused`;
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
