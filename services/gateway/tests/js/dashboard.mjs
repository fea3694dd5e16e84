// Drives the dashboard in Debian's Chromium through playwright-core (which never downloads a browser).
// Usage: node dashboard.mjs <dashboard url> <screenshot path> <fleet size> <lab device> <fleet device>
//
// The gateway runs without a REST API here (the whole platform's dashboard is tested by
// crates/ferrite/tests/hardening/dashboard.rs): the page falls back to what it hears live.
//
// Run by the Rust test `browser::dashboard_in_chromium`, which starts the broker, the gateway and a fleet,
// publishes with a real MQTT client when this script asks (a line on stdout), and answers on stdin.
// Every step prints one JSON line; anything wrong prints {"event": "fail", ...} and exits non-zero.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const [url, screenshot, fleetArg, lab, fleetDevice] = process.argv.slice(2);
const fleet = Number(fleetArg);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
/** Playwright waits this long for each outcome; the machine may be a loaded two-core CI box. */
const STEP_MS = 60_000;

const say = (event, fields = {}) => process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);
let browser;
let userDataDir;
async function fail(message) {
  process.stdout.write(`${JSON.stringify({ event: 'fail', message })}\n`);
  await browser?.close().catch(() => {});
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
  process.exit(1);
}
if (!url || !screenshot || !fleet || !lab || !fleetDevice) {
  await fail('usage: node dashboard.mjs <url> <screenshot> <fleet size> <lab device> <fleet device>');
}
// Bounded: the script never outlives the test that runs it.
setTimeout(() => fail('timed out after 240 s'), 240_000).unref();

const stdin = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function waitFor(line) {
  const next = await stdin.next();
  if (next.done || next.value.trim() !== line) await fail(`expected "${line}" on stdin, got ${JSON.stringify(next.value)}`);
}

userDataDir = mkdtempSync(join(tmpdir(), 'ferrite-chromium-'));
browser = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
  viewport: { width: 1440, height: 900 },
  colorScheme: 'light',
});
const problems = [];
const page = browser.pages()[0] ?? (await browser.newPage());
page.setDefaultTimeout(STEP_MS);
page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
page.on('console', (message) => {
  if (message.type() === 'error') problems.push(`console error: ${message.text()}`);
});
page.on('requestfailed', (request) => problems.push(`request failed: ${request.url()} ${request.failure()?.errorText}`));

try {
  await page.goto(url);
  await page.waitForSelector('#connection[data-state="live"]');
  say('connected', { version: browser.browser()?.version() });

  // The fleet's devices appear, online (the header counts them all; the grid shows one page of cards).
  await page.waitForFunction((n) => Number(document.getElementById('stat-online').textContent) >= n, fleet);
  await page.waitForFunction(
    (n) => document.querySelectorAll('.card .presence[data-online="true"]').length >= Math.min(n, 24),
    fleet,
  );
  const cards = await page.locator('.card').count();
  say('grid', { cards, online: Number(await page.textContent('#stat-online')) });

  // More devices than a page holds: the grid pages instead of drawing them all.
  const pages = await page.textContent('#page-label');
  await page.click('#next');
  await page.locator('#page-label', { hasText: /^2 \// }).waitFor();
  const second = await page.$$eval('.card', (nodes) => nodes.map((node) => node.dataset.device));
  await page.click('#prev');
  await page.locator('#page-label', { hasText: /^1 \// }).waitFor();
  say('paged', { pages, second });

  // A value changes live after a publish.
  const value = page.locator(`.card[data-device="${lab}"] .value[data-metric="temperature"]`);
  say('publish', { value: 21.5 });
  await waitFor('published');
  await value.filter({ hasText: /^21\.5/ }).waitFor();
  say('value', { text: await value.textContent() });
  say('publish', { value: 23.25 });
  await waitFor('published');
  await value.filter({ hasText: /^23\.25/ }).waitFor();
  say('value-changed', { text: await value.textContent() });

  // This gateway was told of no REST API: the page says so and shows live data only (no Restart, no alerts view).
  const banner = await page.textContent('#api-banner');
  if (!banner.includes('--api-url') || (await page.locator(`.card[data-device="${fleetDevice}"] button.restart`).isVisible())) {
    await fail(`live-only mode is not shown: banner ${JSON.stringify(banner)}`);
  }
  say('live-only', { banner });

  // The topic explorer shows the retained presence of the fleet at once.
  await page.fill('#explorer-filter', 'devices/+/status');
  await page.click('#explorer-watch');
  await page.waitForFunction((n) => document.querySelectorAll('#explorer-log li').length >= n, fleet);
  say('explorer', { entries: await page.locator('#explorer-log li').count() });

  // An alert appears as a notification, in the list, and on the device's card.
  say('publish', { alert: lab });
  await waitFor('published');
  await page.locator('.toast', { hasText: 'temperature above 23' }).waitFor();
  await page.locator('#alerts li', { hasText: 'temperature above 23' }).waitFor();
  await page.locator(`.card.alerting[data-device="${lab}"]`).waitFor();
  say('alert');

  // Let the charts gather a few points, then keep the picture.
  await page.waitForFunction(() => document.querySelectorAll('.card canvas').length > 0);
  await page.waitForTimeout(1500);
  await page.screenshot({ path: screenshot });
  say('screenshot', { path: screenshot });

  // The seed article's dashboard snippet, unchanged but for its URL, on a page of the gateway's origin.
  const ids = await page.$$eval('.card', (nodes) => nodes.map((node) => node.dataset.device));
  const seed = await browser.newPage();
  await seed.goto(new URL('/healthz', url).href);
  const shown = await seed.evaluate(
    ({ dashboard, device, ids }) =>
      new Promise((resolve, reject) => {
        // The article's page has an element per device, named by its id.
        document.body.replaceChildren(...ids.map((id) => Object.assign(document.createElement('div'), { id })));
        const target = document.getElementById(device);
        const notifications = [];
        // The article leaves these two to the reader.
        const showNotification = (message) => notifications.push(message);
        const connectDashboard = () => {};
        setTimeout(() => reject(new Error('no sensor-update reached the seed snippet')), 30_000);
        const watch = setInterval(() => {
          if (target.textContent.endsWith('°C')) {
            clearInterval(watch);
            resolve(target.textContent);
          }
        }, 50);
        // --- from the seed article ---
        const ws = new WebSocket(dashboard);
        ws.onopen = () => {
          console.log('Dashboard connected');
          ws.send(JSON.stringify({
            type: 'subscribe',
            topics: ['sensors/+/temperature'],
          }));
        };
        ws.onmessage = (event) => {
          const data = JSON.parse(event.data);
          switch (data.type) {
            case 'sensor-update':
              document.getElementById(data.deviceId).textContent =
                `${data.value}°C`;
              break;
            case 'alert':
              showNotification(data.message);
              break;
          }
        };
        ws.onclose = () => {
          console.log('Disconnected, reconnecting...');
          setTimeout(connectDashboard, 3000);
        };
        // --- end of the seed article ---
      }),
    { dashboard: new URL('/dashboard', url).href.replace(/^http/, 'ws'), device: fleetDevice, ids },
  ).catch((error) => fail(`seed snippet: ${error.message}`));
  say('seed-snippet', { text: shown });
  await seed.close();

  if (problems.length) await fail(problems.join('; '));
  say('done');
} catch (error) {
  await fail(`${error.message}\n${problems.join('\n')}`);
}
await browser.close();
rmSync(userDataDir, { recursive: true, force: true });
process.exit(0);
