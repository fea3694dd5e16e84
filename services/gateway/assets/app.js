// Ferrite dashboard, in plain JavaScript: the device grid, a page per device, and alerts with their rules.
//
// History comes from the REST API beside the registry (`/api/v1/...`; `/config.json` of the gateway says where),
// live updates from the gateway's WebSocket (`/dashboard`). With 10,000 devices the grid stays cheap: it asks the
// API for one page of devices at a time (keyset cursors), subscribes only to the devices on screen, and touches
// the DOM at most once per animation frame. Without a reachable API the page falls back to what it hears live.
'use strict';

(() => {
  /** Cards per page: enough to fill a large screen, few enough to redraw in a frame. */
  const PAGE_SIZE = 24;
  /** Points kept per device and metric for the sparklines. */
  const SERIES_POINTS = 240;
  /** The sparkline's history on arrival, and its bucket (60 points). */
  const SPARK_RANGE_MS = 15 * 60_000;
  const SPARK_BUCKET = '15s';
  /** Time ranges of the device page, each with a bucket that gives the API 90 to 170 points per metric. */
  const RANGES = { '15m': [15 * 60_000, '10s'], '1h': [3_600_000, '30s'], '24h': [86_400_000, '10m'], '7d': [7 * 86_400_000, '1h'] };
  /** Pages of a telemetry query followed at most (1,000 points each). */
  const MAX_QUERY_PAGES = 5;
  /** Entries kept in the topic explorer and the alert list. */
  const EXPLORER_ENTRIES = 200;
  const ALERT_ENTRIES = 50;
  /** How long an alert keeps its card highlighted, and a toast on screen. */
  const ALERT_HIGHLIGHT_MS = 30_000;
  const TOAST_MS = 8_000;
  /** How long the page keeps asking about a command the device has not answered yet (offline: `pending`). */
  const COMMAND_FOLLOW_MS = 5 * 60_000;
  const COMMAND_POLL_MS = 1000;
  /** How long an API call may take before the page gives up on it (a command adds its own timeout). */
  const API_TIMEOUT_MS = 15_000;
  /** The window of the messages/s figure. */
  const RATE_WINDOW_S = 5;
  /** How often the header's device counts are refreshed from the API, and the most devices counted. */
  const COUNT_EVERY_MS = 15_000;
  const COUNT_LIMIT = 100_000;
  /** Reconnect backoff: doubles from the first value up to the last, with jitter. */
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15_000;

  /** What the page always subscribes to; without the API, the grid learns its devices from all traffic. */
  const ALWAYS_FILTERS = ['alerts/#'];
  const LIVE_ONLY_FILTERS = ['sensors/#', 'devices/+/status'];

  const $ = (id) => document.getElementById(id);
  const el = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const token = new URLSearchParams(location.search).get('token');

  // ---- REST API -----------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  const api = {
    /** `http://host:port/api/v1`, or null while unknown or unreachable (live mode). */
    base: null,
    async call(method, path, { query, body, timeoutMs = API_TIMEOUT_MS } = {}) {
      if (!this.base) throw new ApiError(0, 'no REST API');
      const url = new URL(`${this.base}${path}`);
      for (const [key, value] of Object.entries(query || {})) {
        if (value !== undefined && value !== null && value !== '') url.searchParams.set(key, value);
      }
      const headers = {};
      if (token) headers.Authorization = `Bearer ${token}`;
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(), timeoutMs);
      let response;
      try {
        response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: abort.signal });
      } catch (error) {
        throw new ApiError(0, abort.signal.aborted ? `${method} ${path}: no answer in ${timeoutMs / 1000} s` : `${method} ${path}: ${error.message}`);
      } finally {
        clearTimeout(timer);
      }
      if (response.status === 204) return null;
      const text = await response.text();
      let data = null;
      try {
        data = text ? JSON.parse(text) : null;
      } catch {
        data = null;
      }
      if (!response.ok) throw new ApiError(response.status, (data && data.error) || `${method} ${path}: HTTP ${response.status}`);
      return data;
    },
    get(path, query) {
      return this.call('GET', path, { query });
    },
    device: (id) => `/devices/${encodeURIComponent(id)}`,
    /** Every page of a telemetry query, as { metric -> {t: [seconds], v: []} }. */
    async telemetry(id, query) {
      const series = new Map();
      let cursor;
      for (let page = 0; page < MAX_QUERY_PAGES; page++) {
        const result = await this.get(`${this.device(id)}/telemetry`, { ...query, cursor, limit: 1000 });
        for (const point of result.points) {
          let line = series.get(point.metric);
          if (!line) series.set(point.metric, (line = { t: [], v: [] }));
          line.t.push(Date.parse(point.ts) / 1000);
          line.v.push(point.value);
        }
        cursor = result.nextCursor;
        if (!cursor) break;
      }
      return series;
    },
  };

  async function discoverApi() {
    let config = {};
    try {
      const response = await fetch('/config.json', { cache: 'no-store' });
      if (response.ok) config = await response.json();
    } catch {
      config = {};
    }
    if (config.apiUrl) return `${config.apiUrl}/api/v1`;
    if (config.apiPort) return `${location.protocol}//${location.hostname}:${config.apiPort}/api/v1`;
    return null;
  }

  function showBanner(text) {
    $('api-banner').hidden = !text;
    $('api-banner').textContent = text || '';
  }

  // ---- Model --------------------------------------------------------------------------------------

  /** id -> { id, online, metrics: Map(metric -> {value, unit, ts}), series: Map(metric -> {t:[], v:[]}), seen, alertUntil, command, loaded } */
  const devices = new Map();
  const metricNames = new Set(['temperature']);
  /** Live-mode ids, sorted; rebuilt only when a device appears. */
  let liveIds = [];
  let liveIdsChanged = false;

  function device(id) {
    let entry = devices.get(id);
    if (!entry) {
      entry = { id, online: null, metrics: new Map(), series: new Map(), seen: 0, alertUntil: 0, command: null, loaded: false, info: null };
      devices.set(id, entry);
      liveIdsChanged = true;
    }
    return entry;
  }

  function tsMillis(ts) {
    const parsed = typeof ts === 'number' ? ts : Date.parse(ts);
    return Number.isFinite(parsed) ? parsed : Date.now();
  }

  /** Adds a point to a series kept sorted by time (readings may arrive out of order: retained, replayed). */
  function addPoint(series, seconds, value, limit) {
    let at = series.t.length;
    while (at > 0 && series.t[at - 1] > seconds) at--;
    if (at > 0 && series.t[at - 1] === seconds) {
      series.v[at - 1] = value;
    } else {
      series.t.splice(at, 0, seconds);
      series.v.splice(at, 0, value);
    }
    if (limit && series.t.length > limit) {
      series.t.splice(0, series.t.length - limit);
      series.v.splice(0, series.v.length - limit);
    }
  }

  function noteMetric(metric) {
    if (!metricNames.has(metric)) {
      metricNames.add(metric);
      refreshMetricOptions();
    }
  }

  function onSensorUpdate(msg) {
    const entry = device(msg.deviceId);
    const ts = tsMillis(msg.ts);
    const current = entry.metrics.get(msg.metric);
    if (!current || current.ts <= ts) entry.metrics.set(msg.metric, { value: msg.value, unit: msg.unit, ts });
    entry.seen = Math.max(entry.seen, Date.now());
    let series = entry.series.get(msg.metric);
    if (!series) entry.series.set(msg.metric, (series = { t: [], v: [] }));
    addPoint(series, ts / 1000, msg.value, SERIES_POINTS);
    noteMetric(msg.metric);
    markDirty(entry.id);
    devicePage.onSensorUpdate(msg, ts);
  }

  function onStatus(msg) {
    const entry = device(msg.deviceId);
    if (entry.online !== msg.online) counts.onPresence(entry.online, msg.online);
    entry.online = msg.online;
    entry.onlineAt = tsMillis(msg.ts);
    entry.seen = Math.max(entry.seen, Date.now());
    markDirty(entry.id);
    devicePage.onStatus(msg);
  }

  /** A device as the registry lists it: presence and name. */
  function onDeviceInfo(info) {
    const entry = device(info.id);
    entry.info = info;
    // The registry's presence is stored by the ingester, a moment after the live status: the newer one wins.
    if (info.presence && tsMillis(info.presence.changedAt) >= (entry.onlineAt || 0)) {
      entry.online = info.presence.online;
      entry.onlineAt = tsMillis(info.presence.changedAt);
    }
    if (info.presence) {
      entry.seen = Math.max(entry.seen, tsMillis(info.presence.lastSeen));
    }
    markDirty(entry.id);
  }

  /** Latest values and a sparkline for the devices on screen, from the API, once per device and page visit. */
  async function loadCard(id) {
    const entry = device(id);
    if (entry.loaded || !api.base) return;
    entry.loaded = true;
    const from = Date.now() - SPARK_RANGE_MS;
    try {
      const [latest, history] = await Promise.all([
        api.get(`${api.device(id)}/latest`),
        api.telemetry(id, { from, bucket: SPARK_BUCKET }),
      ]);
      for (const [metric, line] of history) {
        let series = entry.series.get(metric);
        if (!series) entry.series.set(metric, (series = { t: [], v: [] }));
        // Buckets before the first live point; live points continue the line.
        const firstLive = series.t.length ? series.t[0] : Infinity;
        for (let i = 0; i < line.t.length; i++) if (line.t[i] < firstLive) addPoint(series, line.t[i], line.v[i], SERIES_POINTS);
        noteMetric(metric);
      }
      for (const value of latest.values) {
        const ts = tsMillis(value.ts);
        const current = entry.metrics.get(value.metric);
        if (!current || current.ts < ts) entry.metrics.set(value.metric, { value: value.value, unit: value.unit, ts });
        entry.seen = Math.max(entry.seen, ts);
        noteMetric(value.metric);
      }
      entry.historyAt = performance.now();
      markDirty(id);
    } catch (error) {
      entry.loaded = false;
      entry.loadError = error.message;
      markDirty(id);
    }
  }

  // ---- Formatting ---------------------------------------------------------------------------------

  const UNITS = { C: '°C', F: '°F' };
  /** Short labels for long metric names, so three fit across a card (the full name is the tooltip). */
  const LABELS = { temperature: 'temp' };
  function formatValue(value) {
    if (typeof value !== 'number') return String(value);
    return String(Math.round(value * 100) / 100);
  }
  function formatUnit(unit) {
    return unit ? UNITS[unit] || unit : '';
  }
  function ago(ms) {
    if (!ms) return 'no data yet';
    const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (seconds < 2) return 'just now';
    if (seconds < 60) return `${seconds}s ago`;
    if (seconds < 3600) return `${Math.round(seconds / 60)}m ago`;
    if (seconds < 86400) return `${Math.round(seconds / 3600)}h ago`;
    return `${Math.round(seconds / 86400)}d ago`;
  }
  function clock(ms) {
    return new Date(ms).toLocaleTimeString([], { hour12: false });
  }
  function when(ms) {
    const date = new Date(ms);
    const today = new Date().toDateString() === date.toDateString();
    return today ? clock(ms) : date.toLocaleString([], { hour12: false });
  }
  function chartColor() {
    return getComputedStyle(document.documentElement).getPropertyValue('--chart').trim() || '#3b6fd8';
  }

  // ---- Device grid --------------------------------------------------------------------------------

  const grid = $('grid');
  /** id -> { root, presence, values: Map(metric -> dd), metricsList, chartBox, plot, plotMetric, seen, command, restart } */
  const cards = new Map();
  const dirty = new Set();
  let chartMetric = 'temperature';
  let frameRequested = false;
  /** The ids on screen. */
  let visible = [];

  function markDirty(id) {
    dirty.add(id);
    requestFrame();
  }

  function requestFrame() {
    if (frameRequested) return;
    frameRequested = true;
    requestAnimationFrame(frame);
  }

  function frame() {
    frameRequested = false;
    if (!api.base && liveIdsChanged) {
      liveIdsChanged = false;
      liveIds = [...devices.keys()].sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
      pager.refresh();
    }
    for (const id of dirty) {
      const card = cards.get(id);
      if (card) updateCard(card, devices.get(id));
    }
    dirty.clear();
    updateStats();
  }

  /**
   * Which devices are on screen. With the API: a page of `GET /devices` (id prefix and tag filters, keyset cursors,
   * one cursor kept per page visited so Previous works); without: the devices heard live, filtered here.
   */
  const pager = {
    page: 0,
    cursors: [undefined],
    hasNext: false,
    prefix: '',
    tag: '',
    generation: 0,
    reset() {
      this.page = 0;
      this.cursors = [undefined];
      this.refresh();
    },
    /** Shows the current page; `strict`: a failed listing is thrown (the first one decides on live mode) instead of shown. */
    async refresh(strict = false) {
      const generation = ++this.generation;
      let ids;
      if (api.base) {
        let result;
        try {
          result = await api.get('/devices', { limit: PAGE_SIZE, prefix: this.prefix.trim(), tag: this.tag.trim(), cursor: this.cursors[this.page] });
        } catch (error) {
          if (strict) throw error;
          if (generation === this.generation) toast('Devices not listed', error.message, 'error');
          return;
        }
        if (generation !== this.generation) return;
        for (const info of result.devices) onDeviceInfo(info);
        ids = result.devices.map((info) => info.id);
        this.hasNext = Boolean(result.nextCursor);
        this.cursors[this.page + 1] = result.nextCursor || undefined;
        $('page-label').textContent = `${this.page + 1}${this.hasNext ? ' / …' : ` / ${this.page + 1}`}`;
      } else {
        const term = this.prefix.trim().toLowerCase();
        const matching = term ? liveIds.filter((id) => id.toLowerCase().includes(term)) : liveIds;
        const pages = Math.max(1, Math.ceil(matching.length / PAGE_SIZE));
        this.page = Math.min(this.page, pages - 1);
        this.hasNext = this.page < pages - 1;
        $('page-label').textContent = `${this.page + 1} / ${pages}`;
        ids = matching.slice(this.page * PAGE_SIZE, (this.page + 1) * PAGE_SIZE);
      }
      $('prev').disabled = this.page === 0;
      $('next').disabled = !this.hasNext;
      layout(ids);
    },
    next() {
      if (!this.hasNext) return;
      this.page += 1;
      this.refresh();
    },
    prev() {
      this.page = Math.max(0, this.page - 1);
      this.refresh();
    },
  };

  /** Shows `ids`: keeps the cards that stay, makes the new ones, drops the others; follows them live. */
  function layout(ids) {
    const keep = new Set(ids);
    for (const [id, card] of cards) {
      if (!keep.has(id)) {
        if (card.plot) card.plot.destroy();
        cards.delete(id);
      }
    }
    const nodes = ids.map((id) => {
      let card = cards.get(id);
      if (!card) {
        card = makeCard(id);
        cards.set(id, card);
        updateCard(card, device(id));
      }
      return card.root;
    });
    grid.replaceChildren(...nodes);
    $('empty').hidden = ids.length > 0;
    if (api.base) {
      // Only the devices on screen are followed live: ten thousand devices cost the page what 24 do.
      const wanted = ids.flatMap((id) => [`sensors/${id}/#`, `devices/${id}/status`]);
      const before = new Set(visible.flatMap((id) => [`sensors/${id}/#`, `devices/${id}/status`]));
      const after = new Set(wanted);
      for (const filter of before) if (!after.has(filter)) subscriptions.release(filter);
      for (const filter of after) if (!before.has(filter)) subscriptions.acquire(filter);
      for (const id of ids) loadCard(id);
    }
    visible = ids;
    // Charts need their card in the document to know their width.
    for (const id of ids) ensurePlot(cards.get(id), devices.get(id));
  }

  function makeCard(id) {
    const root = el('article', 'card');
    root.dataset.device = id;
    root.tabIndex = 0;
    root.title = `Open ${id}`;
    const head = el('div', 'card-head');
    const presence = el('span', 'presence');
    presence.title = 'presence unknown';
    const title = el('h3', null, id);
    const restart = el('button', 'restart', 'Restart');
    restart.type = 'button';
    restart.title = `Send restart to ${id} through the commands API`;
    restart.hidden = !api.base;
    restart.addEventListener('click', (event) => {
      event.stopPropagation();
      restartDevice(id);
    });
    head.append(presence, title, restart);
    const metricsList = el('dl', 'metrics');
    const chartBox = el('div', 'chart');
    const foot = el('div', 'card-foot');
    const seen = el('span', 'seen');
    const command = el('span', 'command');
    foot.append(seen, command);
    root.append(head, metricsList, chartBox, foot);
    const open = () => {
      location.hash = `#/device/${encodeURIComponent(id)}`;
    };
    root.addEventListener('click', open);
    root.addEventListener('keydown', (event) => {
      if (event.key === 'Enter') open();
    });
    return { root, presence, values: new Map(), metricsList, chartBox, plot: null, plotMetric: null, seen, command, restart };
  }

  function setPresence(node, online) {
    const state = online === null || online === undefined ? 'unknown' : String(online);
    if (node.dataset.online === state) return;
    node.dataset.online = state;
    node.title = state === 'unknown' ? 'presence unknown' : online ? 'online' : 'offline';
  }

  function updateCard(card, entry) {
    if (!entry) return;
    setPresence(card.presence, entry.online);
    card.root.classList.toggle('offline', entry.online === false);
    card.root.classList.toggle('loaded', entry.loaded && entry.historyAt !== undefined);
    const names = [...entry.metrics.keys()].sort();
    for (const name of names) {
      const reading = entry.metrics.get(name);
      let dd = card.values.get(name);
      if (!dd) {
        const row = el('div');
        const label = el('dt', null, LABELS[name] || name);
        label.title = name;
        dd = el('dd', 'value');
        dd.dataset.metric = name;
        row.append(label, dd);
        card.values.set(name, dd);
        // Keep the metrics in name order.
        const after = [...card.values.keys()].sort().indexOf(name);
        card.metricsList.insertBefore(row, card.metricsList.children[after] || null);
      }
      const text = formatValue(reading.value);
      if (dd.dataset.value !== text) {
        dd.dataset.value = text;
        dd.replaceChildren(document.createTextNode(text), el('span', 'unit', formatUnit(reading.unit)));
        dd.title = `${reading.value} at ${new Date(reading.ts).toISOString()}`;
        if (dd.animate) dd.animate([{ color: 'var(--chart)' }, {}], { duration: 800, easing: 'ease-out' });
      }
    }
    card.root.classList.toggle('alerting', entry.alertUntil > Date.now());
    card.seen.textContent = entry.loadError && !entry.seen ? entry.loadError : ago(entry.seen);
    const command = entry.command;
    card.command.textContent = command ? command.text : '';
    card.command.className = `command ${command ? command.state : ''}`;
    card.restart.disabled = Boolean(command && command.state === 'pending');
    if (card.plot) {
      const series = entry.series.get(card.plotMetric);
      if (series) card.plot.setData([series.t, series.v]);
    } else if (card.root.isConnected) {
      ensurePlot(card, entry);
    }
  }

  function ensurePlot(card, entry) {
    if (!card || !entry || typeof uPlot === 'undefined') return;
    if (card.plot && card.plotMetric === chartMetric) return;
    if (card.plot) card.plot.destroy();
    const width = card.chartBox.clientWidth;
    if (width === 0) return;
    const series = entry.series.get(chartMetric) || { t: [], v: [] };
    const stroke = chartColor();
    card.plotMetric = chartMetric;
    card.plot = new uPlot(
      {
        width,
        height: 56,
        legend: { show: false },
        cursor: { show: false },
        select: { show: false },
        scales: { x: { time: true } },
        axes: [{ show: false }, { show: false }],
        series: [{}, { stroke, width: 1.5, fill: `${stroke}18`, points: { show: false } }],
        padding: [4, 2, 4, 2],
      },
      [series.t, series.v],
      card.chartBox,
    );
  }

  function relayoutCharts() {
    for (const card of cards.values()) {
      if (card.plot) {
        const width = card.chartBox.clientWidth;
        if (width > 0) card.plot.setSize({ width, height: 56 });
      }
    }
    devicePage.resize();
  }

  let resizeTimer = 0;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(relayoutCharts, 150);
  });

  function refreshMetricOptions() {
    const select = $('chart-metric');
    const names = [...metricNames].sort();
    select.replaceChildren(...names.map((name) => {
      const option = el('option', null, name);
      option.value = name;
      option.selected = name === chartMetric;
      return option;
    }));
  }

  $('chart-metric').addEventListener('change', (event) => {
    chartMetric = event.target.value;
    for (const [id, card] of cards) ensurePlot(card, devices.get(id));
  });
  let searchTimer = 0;
  const onSearch = () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      pager.prefix = $('search').value;
      pager.tag = $('tag').value;
      pager.reset();
    }, api.base ? 250 : 0);
  };
  $('search').addEventListener('input', onSearch);
  $('tag').addEventListener('input', onSearch);
  $('prev').addEventListener('click', () => pager.prev());
  $('next').addEventListener('click', () => pager.next());

  // Relative times and alert highlights age even without messages.
  setInterval(() => {
    for (const [id, card] of cards) updateCard(card, devices.get(id));
  }, 1000);

  // ---- Stats --------------------------------------------------------------------------------------

  /** Frames received in each of the last seconds. */
  const rateWindow = [];
  let framesThisSecond = 0;
  let rate = 0;
  setInterval(() => {
    rateWindow.push(framesThisSecond);
    framesThisSecond = 0;
    if (rateWindow.length > RATE_WINDOW_S) rateWindow.shift();
    rate = rateWindow.reduce((a, b) => a + b, 0) / rateWindow.length;
    updateStats();
  }, 1000);

  /** The header's device counts: the whole fleet from the API (refreshed), or the devices heard live. */
  const counts = {
    total: null,
    online: null,
    capped: false,
    async refresh() {
      if (!api.base) return;
      let total = 0;
      let online = 0;
      let cursor;
      try {
        do {
          const page = await api.get('/devices', { limit: 1000, cursor });
          total += page.devices.length;
          for (const info of page.devices) if (info.presence && info.presence.online) online++;
          cursor = page.nextCursor;
        } while (cursor && total < COUNT_LIMIT);
      } catch {
        return;
      }
      Object.assign(this, { total, online, capped: Boolean(cursor) });
      updateStats();
    },
    onPresence(before, after) {
      if (this.online === null || before === null) return;
      this.online += after ? 1 : -1;
    },
  };

  function updateStats() {
    let total = counts.total;
    let online = counts.online;
    if (total === null) {
      total = devices.size;
      online = 0;
      for (const entry of devices.values()) if (entry.online) online++;
    }
    $('stat-devices').textContent = `${total.toLocaleString('en')}${counts.capped ? '+' : ''}`;
    $('stat-online').textContent = Math.max(0, online).toLocaleString('en');
    $('stat-rate').textContent = rate >= 10 ? String(Math.round(rate)) : String(Math.round(rate * 10) / 10);
  }

  // ---- Toasts and live alerts ---------------------------------------------------------------------

  function toast(title, body, severity = 'info') {
    const node = el('div', 'toast');
    node.dataset.severity = severity;
    node.append(el('strong', null, title));
    if (body) node.append(el('span', null, body));
    $('toasts').prepend(node);
    while ($('toasts').children.length > 5) $('toasts').lastChild.remove();
    setTimeout(() => node.remove(), TOAST_MS);
  }

  let alertCount = 0;
  function onAlert(msg) {
    const severity = ['critical', 'warning', 'info'].includes(msg.severity) ? msg.severity : 'warning';
    const entry = device(msg.deviceId);
    const resolved = msg.state === 'resolved';
    entry.alertUntil = resolved ? 0 : Date.now() + ALERT_HIGHLIGHT_MS;
    markDirty(entry.id);
    toast(`${msg.deviceId}: ${resolved ? 'resolved' : msg.severity}`, msg.message, resolved ? 'ok' : severity);
    const item = el('li');
    item.dataset.severity = resolved ? 'ok' : severity;
    item.dataset.device = msg.deviceId;
    item.append(el('div', null, msg.message));
    const detail = [msg.deviceId, resolved ? 'resolved' : msg.severity, clock(tsMillis(msg.ts))];
    if (msg.metric !== undefined && msg.value !== undefined) detail.push(`${msg.metric} = ${formatValue(msg.value)}`);
    item.append(el('div', 'meta', detail.join(' · ')));
    const list = $('alerts');
    list.prepend(item);
    while (list.children.length > ALERT_ENTRIES) list.lastChild.remove();
    $('no-alerts').hidden = true;
    if (!resolved) {
      alertCount++;
      $('alert-count').hidden = false;
      $('alert-count').textContent = String(alertCount);
    }
    alertsView.changed();
    devicePage.onAlert(msg);
  }

  // ---- Commands (through the commands API: stored, delivered to offline devices, audited) ----------

  /** Sends a command and waits for the device's answer; resolves to the stored command (state, result). */
  function sendCommand(deviceId, name, params, timeout = '10s') {
    const seconds = parseTimeoutSeconds(timeout);
    return api.call('POST', `${api.device(deviceId)}/commands`, {
      body: { name, params, timeout },
      timeoutMs: (seconds + 10) * 1000,
    });
  }

  const COMPLETE = new Set(['ok', 'error', 'timed_out']);

  /**
   * Follows a command the API answered with 202 (`pending`: the device is offline and gets it when it reconnects;
   * `sent`: not waited for) until the device answers, calling `update` with each new state.
   */
  async function settle(command, update) {
    const deadline = Date.now() + COMMAND_FOLLOW_MS;
    while (!COMPLETE.has(command.state) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, COMMAND_POLL_MS));
      try {
        const now = await api.get(`/commands/${encodeURIComponent(command.id)}`);
        if (now.state !== command.state) update(now);
        command = now;
      } catch {
        // A lost answer is asked again at the next poll.
      }
    }
    return command;
  }

  function parseTimeoutSeconds(text) {
    const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$/.exec(String(text));
    if (!match) return 300;
    const value = Number(match[1]);
    return match[2] === 'ms' ? value / 1000 : match[2] === 'm' ? value * 60 : value;
  }

  function outcomeText(command) {
    const result = command.result === undefined || command.result === null ? '' : ` ${JSON.stringify(command.result)}`;
    return `${command.name}: ${command.state}${result}`;
  }

  async function restartDevice(id) {
    const entry = device(id);
    entry.command = { state: 'pending', text: 'restart sent…' };
    markDirty(id);
    try {
      const show = (command) => {
        entry.command = { state: command.state === 'ok' ? 'ok' : COMPLETE.has(command.state) ? 'error' : 'pending', text: `restart: ${command.state}` };
        markDirty(id);
      };
      let command = await sendCommand(id, 'restart', {});
      show(command);
      command = await settle(command, show);
      const ok = command.state === 'ok';
      entry.command = { state: ok ? 'ok' : command.state === 'pending' ? 'pending' : 'error', text: `restart: ${command.state}` };
      toast(`${id}: restart ${command.state}`, ok ? '' : command.state === 'pending' ? 'Delivered when the device reconnects.' : JSON.stringify(command.result), ok ? 'ok' : 'warning');
    } catch (error) {
      entry.command = { state: 'error', text: `restart: ${error.message}` };
      toast(`${id}: restart failed`, error.message, 'error');
    }
    markDirty(id);
  }

  // ---- Device page --------------------------------------------------------------------------------

  const devicePage = {
    id: null,
    range: '15m',
    /** metric -> { box, plot, series, unit, valueNode } */
    charts: new Map(),
    generation: 0,
    presenceEvents: [],
    open(id) {
      if (this.id !== id) {
        this.close();
        this.id = id;
        this.presenceEvents = [];
        subscriptions.acquire(`sensors/${id}/#`);
        subscriptions.acquire(`devices/${id}/status`);
      }
      $('device-title').textContent = id;
      $('command-answer').hidden = true;
      this.load();
    },
    close() {
      if (!this.id) return;
      subscriptions.release(`sensors/${this.id}/#`);
      subscriptions.release(`devices/${this.id}/status`);
      for (const chart of this.charts.values()) chart.plot.destroy();
      this.charts.clear();
      $('device-charts').replaceChildren();
      this.id = null;
    },
    async load() {
      const id = this.id;
      const generation = ++this.generation;
      const [span, bucket] = RANGES[this.range];
      const from = Date.now() - span;
      $('device-range-note').textContent = `Average per ${bucket}, computed by the API.`;
      const results = await Promise.allSettled([
        api.get(api.device(id)),
        api.get(`${api.device(id)}/latest`),
        api.telemetry(id, { from, bucket }),
        api.get('/alerts', { device: id, limit: 50 }),
        api.get(`${api.device(id)}/commands`, { limit: 20 }),
        api.get(`${api.device(id)}/presence`, { limit: 20 }),
      ]);
      if (generation !== this.generation || id !== this.id) return;
      const [info, latest, history, alerts, commands, presence] = results;
      this.presenceHistory = presence.status === 'fulfilled' ? presence.value : [];
      if (info.status === 'fulfilled') {
        onDeviceInfo(info.value);
        this.showInfo(info.value);
      } else {
        $('device-meta').textContent = info.reason.message;
      }
      if (latest.status === 'fulfilled') this.showLatest(latest.value.values);
      if (history.status === 'fulfilled') this.showCharts(history.value, from);
      else $('device-range-note').textContent = history.reason.message;
      this.showAlerts(alerts.status === 'fulfilled' ? alerts.value : [], alerts.reason);
      this.showCommands(commands.status === 'fulfilled' ? commands.value : [], commands.reason);
      this.showPresence();
      document.body.dataset.deviceLoaded = id;
    },
    showInfo(info) {
      const entry = device(info.id);
      setPresence($('device-presence'), entry.online);
      const parts = [];
      if (info.name) parts.push(info.name);
      if (info.tags.length) parts.push(`tags: ${info.tags.join(', ')}`);
      $('device-meta').textContent = parts.join(' · ');
      this.info = info;
    },
    latestValues: new Map(),
    showLatest(values) {
      for (const value of values) this.latestValues.set(value.metric, { value: value.value, unit: value.unit, ts: tsMillis(value.ts) });
      this.renderLatest();
    },
    renderLatest() {
      const rows = [...this.latestValues.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([metric, reading]) => {
        const row = el('div');
        const dd = el('dd', 'value');
        dd.dataset.metric = metric;
        dd.append(document.createTextNode(formatValue(reading.value)), el('span', 'unit', formatUnit(reading.unit)));
        row.append(el('dt', null, metric), dd, el('small', 'muted', ago(reading.ts)));
        return row;
      });
      $('device-latest').replaceChildren(...rows);
    },
    showCharts(history, from) {
      for (const chart of this.charts.values()) chart.plot.destroy();
      this.charts.clear();
      const box = $('device-charts');
      box.replaceChildren();
      const metrics = new Set([...history.keys(), ...this.latestValues.keys()]);
      if (!metrics.size) box.append(el('p', 'muted', 'No readings in this range.'));
      for (const metric of [...metrics].sort()) {
        const series = history.get(metric) || { t: [], v: [] };
        const panel = el('div', 'chart-panel');
        panel.dataset.metric = metric;
        const unit = (this.latestValues.get(metric) || {}).unit;
        panel.append(el('h3', null, `${metric}${unit ? ` (${formatUnit(unit)})` : ''}`));
        const area = el('div', 'chart-area');
        panel.append(area);
        box.append(panel);
        const width = area.clientWidth || 600;
        const stroke = chartColor();
        const plot = new uPlot(
          {
            width,
            height: 180,
            scales: { x: { time: true, min: from / 1000, max: Date.now() / 1000 } },
            series: [{}, { label: metric, stroke, width: 1.5, fill: `${stroke}14`, points: { show: series.t.length < 3 } }],
            axes: [{ stroke: '#8a93a5', grid: { stroke: '#8a93a522' } }, { stroke: '#8a93a5', grid: { stroke: '#8a93a522' } }],
            legend: { show: true },
          },
          [series.t, series.v],
          area,
        );
        this.charts.set(metric, { area, plot, series, from });
      }
    },
    resize() {
      for (const chart of this.charts.values()) {
        const width = chart.area.clientWidth;
        if (width > 0) chart.plot.setSize({ width, height: 180 });
      }
    },
    showAlerts(alerts, error) {
      const list = $('device-alerts');
      if (error) return list.replaceChildren(el('li', 'muted', error.message));
      if (!alerts.length) return list.replaceChildren(el('li', 'muted', 'No alerts.'));
      list.replaceChildren(...alerts.map((alert) => {
        const item = el('li');
        item.dataset.severity = alert.state === 'resolved' ? 'ok' : alert.severity;
        item.append(el('div', null, alert.message));
        const resolved = alert.resolvedAt ? `resolved ${when(tsMillis(alert.resolvedAt))}` : 'firing';
        item.append(el('div', 'meta', `${alert.rule} · ${when(tsMillis(alert.ts))} · ${resolved}`));
        return item;
      }));
    },
    showCommands(commands, error) {
      const body = $('device-commands');
      if (error) return body.replaceChildren(row([error.message]));
      if (!commands.length) return body.replaceChildren(row(['No commands yet.']));
      body.replaceChildren(...commands.map((command) => {
        const tr = row([when(tsMillis(command.createdAt)), command.name, command.state]);
        tr.dataset.state = command.state;
        tr.title = outcomeText(command);
        return tr;
      }));
    },
    presenceHistory: [],
    /** The stored history (`GET /devices/{id}/presence`), with the changes heard live since it was read on top. */
    showPresence() {
      const list = $('device-presence-log');
      const newest = this.presenceHistory.length ? tsMillis(this.presenceHistory[0].changedAt) : 0;
      const items = [];
      for (const event of [...this.presenceEvents].reverse()) {
        if (event.ts <= newest) continue;
        const item = el('li', event.online ? 'on' : 'off', `${event.online ? 'online' : 'offline'} · ${when(event.ts)} (live)`);
        item.dataset.source = 'live';
        items.push(item);
      }
      for (const event of this.presenceHistory) {
        const item = el('li', event.online ? 'on' : 'off', `${event.online ? 'online' : 'offline'} · ${when(tsMillis(event.changedAt))}`);
        item.dataset.source = 'api';
        items.push(item);
      }
      const entry = this.id ? device(this.id) : null;
      if (entry && entry.seen) items.push(el('li', 'muted', `last heard ${ago(entry.seen)}`));
      if (!items.length) items.push(el('li', 'muted', 'Never announced itself on devices/{id}/status.'));
      list.replaceChildren(...items);
    },
    onSensorUpdate(msg, ts) {
      if (msg.deviceId !== this.id) return;
      this.latestValues.set(msg.metric, { value: msg.value, unit: msg.unit, ts });
      this.renderLatest();
      const chart = this.charts.get(msg.metric);
      // Live points continue the short ranges; a day or a week of averages is not changed by one reading.
      if (chart && (this.range === '15m' || this.range === '1h')) {
        addPoint(chart.series, ts / 1000, msg.value);
        chart.plot.setScale('x', { min: (Date.now() - RANGES[this.range][0]) / 1000, max: Date.now() / 1000 });
        chart.plot.setData([chart.series.t, chart.series.v], false);
      }
    },
    onStatus(msg) {
      if (msg.deviceId !== this.id) return;
      setPresence($('device-presence'), msg.online);
      const last = this.presenceEvents[this.presenceEvents.length - 1];
      // A retained status replayed on subscribing is no change.
      if (!last || last.online !== msg.online) this.presenceEvents.push({ online: msg.online, ts: tsMillis(msg.ts) });
      this.showPresence();
    },
    onAlert(msg) {
      if (msg.deviceId !== this.id) return;
      api.get('/alerts', { device: this.id, limit: 50 }).then((alerts) => this.showAlerts(alerts), () => {});
    },
    async send(event) {
      event.preventDefault();
      const id = this.id;
      const answer = $('command-answer');
      let params;
      try {
        params = JSON.parse($('command-params').value || '{}');
      } catch (error) {
        answer.hidden = false;
        answer.dataset.state = 'error';
        answer.textContent = `Parameters are not JSON: ${error.message}`;
        return;
      }
      const name = $('command-name').value.trim();
      $('command-send').disabled = true;
      answer.hidden = false;
      answer.dataset.state = 'sent';
      answer.textContent = `${name} sent, waiting for ${id}…`;
      try {
        const show = (command) => {
          answer.dataset.state = command.state;
          const note = command.state === 'pending' ? ' (the device is offline: it gets the command when it reconnects)' : '';
          answer.textContent = `${command.state}${note}\n${JSON.stringify(command.result ?? null, null, 2)}`;
        };
        let command = await sendCommand(id, name, params, $('command-timeout').value.trim() || '10s');
        show(command);
        if (!COMPLETE.has(command.state)) {
          this.refreshCommands(id);
          command = await settle(command, show);
        }
      } catch (error) {
        answer.dataset.state = 'error';
        answer.textContent = error.message;
      } finally {
        $('command-send').disabled = false;
      }
      this.refreshCommands(id);
    },
    refreshCommands(id) {
      if (id !== this.id) return;
      api.get(`${api.device(id)}/commands`, { limit: 20 }).then((commands) => this.showCommands(commands), (error) => this.showCommands([], error));
    },
  };

  /** A table row; a single cell spans the whole row (a message in place of the rows). */
  function row(cells) {
    const tr = el('tr');
    for (const cell of cells) {
      const td = el('td');
      if (cells.length === 1) td.colSpan = 99;
      if (cell instanceof Node) td.append(cell);
      else td.textContent = cell;
      tr.append(td);
    }
    return tr;
  }

  for (const button of document.querySelectorAll('.ranges button')) {
    button.addEventListener('click', () => {
      devicePage.range = button.dataset.range;
      for (const other of document.querySelectorAll('.ranges button')) other.classList.toggle('active', other === button);
      devicePage.load();
    });
  }
  $('command-form').addEventListener('submit', (event) => devicePage.send(event));

  // ---- Alerts and rules ---------------------------------------------------------------------------

  const alertsView = {
    active: false,
    editing: null,
    timer: 0,
    show() {
      this.active = true;
      this.load();
    },
    hide() {
      this.active = false;
    },
    /** A live alert arrived: reload soon (several alerts at once make one reload). */
    changed() {
      if (!this.active) return;
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.load(), 200);
    },
    async load() {
      const [firing, resolved, rules] = await Promise.allSettled([
        api.get('/alerts', { state: 'firing', limit: 200 }),
        api.get('/alerts', { state: 'resolved', limit: 50 }),
        api.get('/rules'),
      ]);
      const deviceLink = (id) => Object.assign(el('a', null, id), { href: `#/device/${encodeURIComponent(id)}` });
      const fill = (body, result, toRow, empty) => {
        if (result.status === 'rejected') return body.replaceChildren(row([result.reason.message]));
        if (!result.value.length) return body.replaceChildren(row([empty]));
        body.replaceChildren(...result.value.map(toRow));
      };
      fill($('alerts-firing'), firing, (alert) => {
        const tr = row([when(tsMillis(alert.ts)), deviceLink(alert.deviceId), alert.rule, formatValue(alert.value), alert.message]);
        tr.dataset.severity = alert.severity;
        return tr;
      }, 'Nothing is firing.');
      $('firing-count').textContent = firing.status === 'fulfilled' ? String(firing.value.length) : '?';
      fill($('alerts-resolved'), resolved, (alert) => row([when(tsMillis(alert.ts)), alert.resolvedAt ? when(tsMillis(alert.resolvedAt)) : '', deviceLink(alert.deviceId), alert.rule, alert.message]), 'None yet.');
      fill($('rules'), rules, (rule) => this.ruleRow(rule), 'No rules yet: add one below.');
      document.body.dataset.alertsLoaded = String(Date.now());
    },
    ruleRow(rule) {
      const scope = [rule.deviceId ? `device ${rule.deviceId}` : '', rule.tags.length ? `tags ${rule.tags.join(', ')}` : ''].filter(Boolean).join(' · ') || 'all devices';
      const condition = `${rule.metric} ${rule.comparison} ${rule.value}${rule.for !== '0s' ? ` for ${rule.for}` : ''}`;
      const actions = el('span', 'row-actions');
      const edit = el('button', null, 'Edit');
      edit.type = 'button';
      edit.addEventListener('click', () => this.edit(rule));
      const remove = el('button', null, 'Delete');
      remove.type = 'button';
      remove.addEventListener('click', async () => {
        if (!confirm(`Delete the rule ${rule.name}?`)) return;
        try {
          await api.call('DELETE', `/rules/${rule.id}`);
        } catch (error) {
          toast('Rule not deleted', error.message, 'error');
        }
        this.load();
      });
      actions.append(edit, remove);
      const tr = row([rule.name, condition, scope, rule.severity, actions]);
      tr.dataset.rule = rule.name;
      if (!rule.enabled) tr.classList.add('disabled');
      return tr;
    },
    edit(rule) {
      this.editing = rule ? rule.id : null;
      $('rule-form-title').textContent = rule ? `Edit ${rule.name}` : 'New rule';
      $('rule-save').textContent = rule ? 'Save rule' : 'Create rule';
      $('rule-cancel').hidden = !rule;
      $('rule-error').textContent = '';
      const r = rule || { name: '', metric: 'temperature', comparison: '>', value: 30, for: '', deviceId: '', tags: [], severity: 'warning', message: '', enabled: true };
      $('rule-name').value = r.name;
      $('rule-metric').value = r.metric;
      $('rule-comparison').value = r.comparison;
      $('rule-value').value = r.value;
      $('rule-for').value = r.for === '0s' ? '' : r.for;
      $('rule-device').value = r.deviceId || '';
      $('rule-tags').value = r.tags.join(', ');
      $('rule-severity').value = r.severity;
      $('rule-message').value = r.message;
      $('rule-enabled').checked = r.enabled;
    },
    async save(event) {
      event.preventDefault();
      const text = (id) => $(id).value.trim() || undefined;
      const body = {
        name: text('rule-name'),
        metric: $('rule-metric').value.trim(),
        comparison: $('rule-comparison').value,
        value: Number($('rule-value').value),
        for: text('rule-for'),
        deviceId: text('rule-device'),
        tags: $('rule-tags').value.split(',').map((tag) => tag.trim()).filter(Boolean),
        severity: $('rule-severity').value,
        message: text('rule-message'),
        enabled: $('rule-enabled').checked,
      };
      try {
        if (this.editing) await api.call('PUT', `/rules/${this.editing}`, { body });
        else await api.call('POST', '/rules', { body });
        this.edit(null);
        toast('Rule saved', `${body.name || `${body.metric} ${body.comparison} ${body.value}`}`, 'ok');
      } catch (error) {
        $('rule-error').textContent = error.message;
        return;
      }
      this.load();
    },
  };
  $('rule-form').addEventListener('submit', (event) => alertsView.save(event));
  $('rule-cancel').addEventListener('click', () => alertsView.edit(null));

  // ---- Topic explorer -----------------------------------------------------------------------------

  /** MQTT matching, as the gateway does it: + is one level, # the rest (and its parent); $ topics need a literal start. */
  function topicMatches(filter, topic) {
    if (topic.startsWith('$') && (filter.startsWith('+') || filter.startsWith('#'))) return false;
    const f = filter.split('/');
    const t = topic.split('/');
    for (let i = 0; i < f.length; i++) {
      if (f[i] === '#') return true;
      if (i >= t.length) return false;
      if (f[i] !== '+' && f[i] !== t[i]) return false;
    }
    return f.length === t.length;
  }

  let explorerFilter = null;
  let explorerPending = false;

  function explorerText(msg) {
    switch (msg.type) {
      case 'sensor-update':
        return `${msg.metric} = ${msg.value}${msg.unit ? ` ${msg.unit}` : ''}`;
      case 'status':
        return msg.online ? 'online' : 'offline';
      case 'alert':
        return `[${msg.severity}] ${msg.message}`;
      default: {
        const payload = msg.encoding === 'base64' ? `(binary, base64) ${msg.payload}` : msg.payload;
        const text = payload.length > 500 ? `${payload.slice(0, 500)}… (${payload.length} characters)` : payload;
        return msg.error ? `${text}\n⚠ ${msg.error}` : text;
      }
    }
  }

  function onExplorerMessage(msg) {
    if (!explorerFilter || typeof msg.topic !== 'string' || !topicMatches(explorerFilter, msg.topic)) return;
    const item = el('li');
    item.append(el('time', null, clock(Date.now())), el('span', 'topic', msg.topic), el('span', 'payload', explorerText(msg)));
    const log = $('explorer-log');
    log.prepend(item);
    while (log.children.length > EXPLORER_ENTRIES) log.lastChild.remove();
  }

  $('explorer-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const filter = $('explorer-filter').value.trim();
    if (!filter) return;
    if (explorerFilter) subscriptions.release(explorerFilter);
    explorerFilter = filter;
    explorerPending = true;
    $('explorer-log').replaceChildren();
    $('explorer-status').textContent = `Watching ${filter}`;
    $('explorer-stop').hidden = false;
    subscriptions.acquire(filter, true);
  });

  $('explorer-stop').addEventListener('click', () => {
    if (explorerFilter) subscriptions.release(explorerFilter);
    explorerFilter = null;
    $('explorer-stop').hidden = true;
    $('explorer-status').textContent = 'Stopped.';
  });

  // ---- Subscriptions ------------------------------------------------------------------------------

  // The grid, the device page and the explorer may want the same filter; the gateway holds one subscription
  // per filter and connection, so the page counts its own users and unsubscribes when the last one lets go.
  const subscriptions = {
    counts: new Map(),
    acquire(filter, again = false) {
      const count = this.counts.get(filter) || 0;
      this.counts.set(filter, count + 1);
      // Subscribing again to a held filter is harmless and brings its retained values again, which the explorer wants.
      if (count === 0 || again) connection.send({ type: 'subscribe', topics: [filter] });
    },
    release(filter) {
      const count = (this.counts.get(filter) || 0) - 1;
      if (count > 0) {
        this.counts.set(filter, count);
        return;
      }
      this.counts.delete(filter);
      connection.send({ type: 'unsubscribe', topics: [filter] });
    },
    all() {
      return [...this.counts.keys()];
    },
  };

  // ---- Connection ---------------------------------------------------------------------------------

  const connection = {
    socket: null,
    attempt: 0,
    retryAt: 0,
    open() {
      const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
      // A token in the page's address is passed on: the gateway checks it with the registry before a browser publishes.
      const url = `${scheme}://${location.host}/dashboard${token ? `?token=${encodeURIComponent(token)}` : ''}`;
      setConnectionState('connecting', this.attempt ? 'Reconnecting…' : 'Connecting…');
      const socket = new WebSocket(url);
      this.socket = socket;
      socket.addEventListener('open', () => {
        this.attempt = 0;
        setConnectionState('live', 'Live');
        const topics = subscriptions.all();
        // The gateway takes at most 256 topics per request.
        for (let i = 0; i < topics.length; i += 200) socket.send(JSON.stringify({ type: 'subscribe', topics: topics.slice(i, i + 200) }));
      });
      socket.addEventListener('message', (event) => onFrame(event.data));
      socket.addEventListener('close', () => {
        if (this.socket !== socket) return;
        this.socket = null;
        this.scheduleReconnect();
      });
    },
    scheduleReconnect() {
      const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
      const delay = Math.round(base * (0.8 + Math.random() * 0.4));
      this.attempt++;
      this.retryAt = Date.now() + delay;
      const tick = () => {
        if (this.socket) return;
        const left = Math.max(0, Math.ceil((this.retryAt - Date.now()) / 1000));
        setConnectionState('reconnecting', `Disconnected · retrying in ${left}s`);
        if (Date.now() >= this.retryAt) this.open();
        else setTimeout(tick, 250);
      };
      tick();
    },
    /** Sends a request; false when not connected (subscriptions are sent again on connect). */
    send(message) {
      if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
      this.socket.send(JSON.stringify(message));
      return true;
    },
  };

  function setConnectionState(state, label) {
    const node = $('connection');
    node.dataset.state = state;
    node.querySelector('.label').textContent = label;
  }

  function onFrame(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    switch (msg.type) {
      case 'sensor-update':
        framesThisSecond++;
        onSensorUpdate(msg);
        break;
      case 'status':
        framesThisSecond++;
        onStatus(msg);
        break;
      case 'alert':
        framesThisSecond++;
        onAlert(msg);
        break;
      case 'mqtt-message':
        framesThisSecond++;
        break;
      case 'subscribed':
        if (explorerPending && explorerFilter && msg.topics.includes(explorerFilter)) explorerPending = false;
        return;
      case 'error':
        if (explorerPending) {
          explorerPending = false;
          $('explorer-status').textContent = msg.message;
          if (explorerFilter) subscriptions.counts.delete(explorerFilter);
          explorerFilter = null;
          $('explorer-stop').hidden = true;
        } else {
          toast('Gateway error', msg.message, 'error');
        }
        return;
      default:
        return;
    }
    onExplorerMessage(msg);
  }

  // ---- Views --------------------------------------------------------------------------------------

  function route() {
    const hash = location.hash.replace(/^#/, '') || '/';
    const deviceMatch = /^\/device\/(.+)$/.exec(hash);
    const view = deviceMatch ? 'device' : hash === '/alerts' ? 'alerts' : 'devices';
    if (!api.base && view !== 'devices') {
      toast('Needs the REST API', 'Device pages and alerts read the REST API, which this page cannot reach.', 'warning');
      location.hash = '#/';
      return;
    }
    $('view-devices').hidden = view !== 'devices';
    $('view-device').hidden = view !== 'device';
    $('view-alerts').hidden = view !== 'alerts';
    $('nav-devices').classList.toggle('active', view !== 'alerts');
    $('nav-alerts').classList.toggle('active', view === 'alerts');
    document.body.dataset.view = view;
    if (view === 'device') devicePage.open(decodeURIComponent(deviceMatch[1]));
    else devicePage.close();
    if (view === 'alerts') alertsView.show();
    else alertsView.hide();
    if (view === 'devices') requestAnimationFrame(relayoutCharts);
  }
  window.addEventListener('hashchange', route);

  async function start() {
    for (const filter of ALWAYS_FILTERS) subscriptions.counts.set(filter, 1);
    connection.open();
    refreshMetricOptions();
    const base = await discoverApi();
    if (base) {
      api.base = base;
      try {
        // The first page of devices is also the test of the API: no round trip is spent on a probe.
        await pager.refresh(true);
      } catch (error) {
        // 401: the API wants a token (open the page with ?token=...); anything else: it is not reachable.
        api.base = null;
        showBanner(error.status === 401
          ? 'The REST API needs a token: open this page as /?token=<API token> (ferrite token create). Showing live data only.'
          : `The REST API at ${base} is not reachable (${error.message}). Showing live data only.`);
      }
    } else {
      showBanner('This gateway was not told where the REST API is (--api-url). Showing live data only.');
    }
    if (!api.base) {
      for (const filter of LIVE_ONLY_FILTERS) subscriptions.acquire(filter);
      $('search').placeholder = 'Filter devices by id';
      $('tag').hidden = true;
      $('nav-alerts').hidden = true;
      pager.refresh();
    } else {
      // The fleet's counts walk every device: after the cards have had the connections to themselves.
      setTimeout(() => counts.refresh(), 1000);
      setInterval(() => counts.refresh(), COUNT_EVERY_MS);
    }
    document.body.dataset.api = api.base ? 'on' : 'off';
    route();
    requestFrame();
  }

  start();
})();
