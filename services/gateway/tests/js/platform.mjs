// Drives the dashboard of a whole platform (`ferrite up --fleet N`) in Debian's Chromium through playwright-core:
// history on arrival, search, a restart and a command through the commands API, the device page's time ranges,
// and a rule written in the rule editor firing into the alert list, then resolving after an edit.
// Usage: node platform.mjs <dashboard url> <screenshot directory> <fleet size> <device> <API token>
//
// Run by the Rust test `dashboard::the_dashboard_of_a_platform` (crates/ferrite/tests/hardening), which starts
// `ferrite up` and checks through the REST API what this script did through the page.
// Every step prints one JSON line; anything wrong prints {"event": "fail", ...} and exits non-zero.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [url, shots, fleetArg, target, apiToken] = process.argv.slice(2);
const fleet = Number(fleetArg);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
/** Playwright waits this long for each outcome; the machine may be a loaded two-core CI box. */
const STEP_MS = 60_000;
/** A threshold every reading passes, and one none does: the rule fires at the next reading, and resolves after the edit. */
const ALWAYS = -1_000_000;
const NEVER = 1_000_000;

const say = (event, fields = {}) => process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);
let browser;
let userDataDir;
async function fail(message) {
  process.stdout.write(`${JSON.stringify({ event: 'fail', message })}\n`);
  await browser?.close().catch(() => {});
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
  process.exit(1);
}
if (!url || !shots || !fleet || !target || !apiToken) await fail('usage: node platform.mjs <url> <screenshot dir> <fleet size> <device> <API token>');
// Bounded: the script never outlives the test that runs it.
setTimeout(() => fail('timed out after 300 s'), 300_000).unref();

userDataDir = mkdtempSync(join(tmpdir(), 'ferrite-chromium-'));
browser = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
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
const card = (id) => `.card[data-device="${id}"]`;
const count = (selector) => page.locator(selector).count();

try {
  // Opened as a user would: every card shows values and a sparkline from the API before any live reading counts.
  const opened = Date.now();
  await page.goto(url);
  await page.waitForFunction((n) => document.querySelectorAll('.card.loaded').length >= n, Math.min(fleet, 24));
  const historyMs = Date.now() - opened;
  const firstCardMs = await page.evaluate(() => Math.round(performance.now()));
  const withValues = await page.$$eval('.card.loaded', (cards) =>
    cards.filter((node) => node.querySelector('.value[data-metric="temperature"]')?.textContent && node.querySelector('canvas')).length);
  say('history', { ms: historyMs, pageMs: firstCardMs, cards: await count('.card'), withValues, api: await page.getAttribute('body', 'data-api') });

  // The header counts the fleet from the API, and messages/s is a real rate once live readings arrive.
  await page.waitForFunction((n) => Number(document.getElementById('stat-online').textContent) >= n, fleet);
  await page.waitForFunction(() => Number(document.getElementById('stat-rate').textContent) > 0);
  say('stats', { devices: await page.textContent('#stat-devices'), online: await page.textContent('#stat-online'), rate: await page.textContent('#stat-rate') });
  await page.waitForTimeout(1500);
  await page.screenshot({ path: join(shots, 'dashboard-grid.png') });
  say('screenshot', { path: join(shots, 'dashboard-grid.png') });

  // Search by id prefix and by tag, through the API's filters.
  await page.fill('#search', 'sim-001');
  await page.waitForFunction(() => [...document.querySelectorAll('.card')].every((node) => node.dataset.device.startsWith('sim-001')));
  const byPrefix = await page.$$eval('.card', (nodes) => nodes.map((node) => node.dataset.device));
  await page.fill('#search', '');
  await page.fill('#tag', 'no-such-tag');
  await page.waitForFunction(() => document.querySelectorAll('.card').length === 0);
  await page.fill('#tag', 'simulated');
  await page.waitForFunction((n) => document.querySelectorAll('.card').length === n, Math.min(fleet, 24));
  say('search', { byPrefix, byTag: await count('.card') });

  // Restart from a card goes through the commands API; the device's answer shows on the card.
  await page.locator(card(target)).waitFor();
  await page.click(`${card(target)} button.restart`);
  await page.locator(`${card(target)} .command.ok`).waitFor();
  say('restart', { text: await page.textContent(`${card(target)} .command`) });

  // The device page: charts per metric for each range, latest values, presence, its commands.
  await page.click(`${card(target)} h3`);
  await page.waitForSelector(`body[data-device-loaded="${target}"]`);
  const ranges = {};
  for (const range of ['1h', '24h', '7d', '15m']) {
    await page.evaluate(() => delete document.body.dataset.deviceLoaded);
    await page.click(`.ranges button[data-range="${range}"]`);
    await page.waitForSelector(`body[data-device-loaded="${target}"]`);
    ranges[range] = await page.$$eval('.chart-panel', (panels) => panels.map((panel) => panel.dataset.metric));
  }
  // The presence history comes from the API (each change the platform stored), live changes on top.
  await page.locator('#device-presence-log li[data-source="api"]').first().waitFor();
  say('ranges', { ranges, latest: await count('#device-latest dd'), presence: await page.$$eval('#device-presence-log li', (items) => items.map((item) => `${item.dataset.source || ''}:${item.textContent}`)) });

  // A command from the form, answered by the simulated device.
  await page.fill('#command-name', 'set-interval');
  await page.fill('#command-params', '{"seconds": 1}');
  await page.click('#command-send');
  await page.waitForSelector('#command-answer[data-state="ok"]');
  const answer = await page.textContent('#command-answer');
  await page.locator('#device-commands tr[data-state="ok"]', { hasText: 'set-interval' }).waitFor();
  await page.locator('#device-commands tr[data-state="ok"]', { hasText: 'restart' }).waitFor();
  say('command', { answer });
  await page.waitForTimeout(500);
  await page.screenshot({ path: join(shots, 'dashboard-device.png'), fullPage: true });
  say('screenshot', { path: join(shots, 'dashboard-device.png') });

  // The rule editor: a rule every reading of the device passes fires into the alert list.
  await page.click('#nav-alerts');
  await page.waitForSelector('body[data-alerts-loaded]');
  await page.fill('#rule-name', 'dashboard test');
  await page.fill('#rule-metric', 'temperature');
  await page.selectOption('#rule-comparison', '>');
  await page.fill('#rule-value', String(ALWAYS));
  await page.fill('#rule-device', target);
  await page.selectOption('#rule-severity', 'critical');
  await page.fill('#rule-message', '{device} {metric} is {value}');
  await page.click('#rule-save');
  await page.locator('#rules tr[data-rule="dashboard test"]').waitFor();
  const fired = Date.now();
  await page.locator('#alerts-firing tr', { hasText: target }).waitFor();
  await page.locator('.toast', { hasText: `${target} temperature is` }).waitFor();
  say('alert-firing', { ms: Date.now() - fired, row: await page.textContent('#alerts-firing tr') });
  await page.screenshot({ path: join(shots, 'dashboard-alerts.png'), fullPage: true });
  say('screenshot', { path: join(shots, 'dashboard-alerts.png') });

  // Edited so that no reading passes, the rule resolves its alert at the next reading.
  await page.click('#rules tr[data-rule="dashboard test"] button:has-text("Edit")');
  await page.fill('#rule-value', String(NEVER));
  await page.click('#rule-save');
  await page.locator('#alerts-resolved tr', { hasText: target }).waitFor();
  await page.locator('#alerts-firing tr', { hasText: 'Nothing is firing.' }).waitFor();
  say('alert-resolved', { row: await page.textContent('#alerts-resolved tr') });

  // The token flow beyond loopback: `?token=` in the page's address goes to the API as a bearer token (the API
  // checks any token it is given, on loopback too) and to the WebSocket. A wrong one says how to fix it.
  const other = await browser.newPage();
  const otherProblems = [];
  other.on('pageerror', (error) => otherProblems.push(`page error: ${error.message}`));
  const withToken = (address, value) => `${address}?token=${encodeURIComponent(value)}`;
  const bearer = [];
  other.on('request', (request) => {
    if (request.url().includes('/api/v1/')) bearer.push(request.headers().authorization || '');
  });
  await other.goto(withToken(url, 'fer_wrong'));
  await other.locator('#api-banner', { hasText: 'needs a token' }).waitFor();
  const refused = await other.textContent('#api-banner');
  bearer.length = 0;
  await other.goto(withToken(url, apiToken));
  await other.waitForFunction((n) => document.querySelectorAll('.card.loaded').length >= n, Math.min(fleet, 24));
  const allBearer = bearer.length > 0 && bearer.every((value) => value === `Bearer ${apiToken}`);
  // The page under another loopback name reaches the API under that name too (the registry admits the dashboard's port).
  await other.goto(url.replace('127.0.0.1', 'localhost'));
  await other.waitForFunction((n) => document.querySelectorAll('.card.loaded').length >= n, Math.min(fleet, 24));
  say('token', { refused, calls: bearer.length, allBearer, localhost: await other.getAttribute('body', 'data-api') });
  await other.close();
  problems.push(...otherProblems);

  if (problems.length) await fail(problems.join('; '));
  say('done');
} catch (error) {
  await page.screenshot({ path: join(shots, 'dashboard-failure.png'), fullPage: true }).catch(() => {});
  await fail(`${error.message}\n${problems.join('\n')}`);
}
await browser.close();
rmSync(userDataDir, { recursive: true, force: true });
process.exit(0);
