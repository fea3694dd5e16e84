// Ferrite dashboard: live devices over the gateway's WebSocket (/dashboard), in plain JavaScript.
//
// The page keeps a model of every device it has heard of, but touches the DOM only for the devices on
// the current page, at most once per animation frame, so a thousand devices reporting every second
// stay cheap. Charts (uPlot) exist only for visible cards and show the points received since the page
// opened; loadHistory() is the seam for the REST telemetry API once it exists.
'use strict';

(() => {
  /** Cards per page: enough to fill a large screen, few enough to redraw in a frame. */
  const PAGE_SIZE = 24;
  /** Points kept per device and metric for the charts (two minutes at one reading a second). */
  const SERIES_POINTS = 120;
  /** Entries kept in the topic explorer and the alert list. */
  const EXPLORER_ENTRIES = 200;
  const ALERT_ENTRIES = 50;
  /** How long an alert keeps its card highlighted, and a toast on screen. */
  const ALERT_HIGHLIGHT_MS = 30_000;
  const TOAST_MS = 8_000;
  /** How long a command waits for the device's response before the card says so. */
  const COMMAND_TIMEOUT_MS = 15_000;
  /** Reconnect backoff: doubles from the first value up to the last, with jitter. */
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15_000;

  /** What the device grid subscribes to. */
  const GRID_FILTERS = ['sensors/#', 'devices/+/status', 'alerts/#', 'commands/+/response'];

  const $ = (id) => document.getElementById(id);
  const el = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  };

  // ---- Model --------------------------------------------------------------------------------------

  /** id -> { id, online, metrics: Map(metric -> {value, unit, ts}), series: Map(metric -> {t:[], v:[]}), seen, alertUntil, command } */
  const devices = new Map();
  /** Device ids, sorted; rebuilt only when a device appears. */
  let sortedIds = [];
  let idsChanged = false;
  const metricNames = new Set(['temperature']);

  function device(id) {
    let entry = devices.get(id);
    if (!entry) {
      entry = { id, online: null, metrics: new Map(), series: new Map(), seen: 0, alertUntil: 0, command: null };
      devices.set(id, entry);
      idsChanged = true;
    }
    return entry;
  }

  function tsMillis(ts) {
    const parsed = Date.parse(ts);
    return Number.isFinite(parsed) ? parsed : Date.now();
  }

  function onSensorUpdate(msg) {
    const entry = device(msg.deviceId);
    const ts = tsMillis(msg.ts);
    entry.metrics.set(msg.metric, { value: msg.value, unit: msg.unit, ts });
    entry.seen = Math.max(entry.seen, Date.now());
    let series = entry.series.get(msg.metric);
    if (!series) {
      series = { t: [], v: [] };
      entry.series.set(msg.metric, series);
    }
    // Readings may arrive out of order (retained, replayed): keep the series sorted by time.
    const seconds = ts / 1000;
    let at = series.t.length;
    while (at > 0 && series.t[at - 1] > seconds) at--;
    if (at > 0 && series.t[at - 1] === seconds) {
      series.v[at - 1] = msg.value;
    } else {
      series.t.splice(at, 0, seconds);
      series.v.splice(at, 0, msg.value);
    }
    if (series.t.length > SERIES_POINTS) {
      series.t.shift();
      series.v.shift();
    }
    if (!metricNames.has(msg.metric)) {
      metricNames.add(msg.metric);
      refreshMetricOptions();
    }
    markDirty(entry.id);
  }

  function onStatus(msg) {
    const entry = device(msg.deviceId);
    entry.online = msg.online;
    entry.seen = Math.max(entry.seen, Date.now());
    markDirty(entry.id);
  }

  // ---- Formatting ---------------------------------------------------------------------------------

  const UNITS = { C: '°C', F: '°F' };
  /** Short labels for long metric names, so three fit across a card (the full name is the tooltip). */
  const LABELS = { temperature: 'temp' };
  function formatValue(value) {
    if (typeof value !== 'number') return String(value);
    const rounded = Math.round(value * 100) / 100;
    return String(rounded);
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
    return `${Math.round(seconds / 3600)}h ago`;
  }
  function clock(ms) {
    return new Date(ms).toLocaleTimeString([], { hour12: false });
  }

  // ---- Rendering ----------------------------------------------------------------------------------

  const grid = $('grid');
  /** id -> { root, presence, values: Map(metric -> dd), metricsList, chartBox, plot, plotMetric, seen, command, restart } */
  const cards = new Map();
  const dirty = new Set();
  let page = 0;
  let search = '';
  let chartMetric = 'temperature';
  let frameRequested = false;

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
    if (idsChanged) {
      idsChanged = false;
      sortedIds = [...devices.keys()].sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
      layout();
    }
    for (const id of dirty) {
      const card = cards.get(id);
      if (card) updateCard(card, devices.get(id));
    }
    dirty.clear();
    updateStats();
  }

  function visibleIds() {
    const term = search.trim().toLowerCase();
    const matching = term ? sortedIds.filter((id) => id.toLowerCase().includes(term)) : sortedIds;
    const pages = Math.max(1, Math.ceil(matching.length / PAGE_SIZE));
    page = Math.min(page, pages - 1);
    $('page-label').textContent = `${page + 1} / ${pages}`;
    $('prev').disabled = page === 0;
    $('next').disabled = page >= pages - 1;
    return matching.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
  }

  /** Shows the current page: keeps the cards that stay, makes the new ones, drops the others. */
  function layout() {
    const ids = visibleIds();
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
        updateCard(card, devices.get(id));
      }
      return card.root;
    });
    grid.replaceChildren(...nodes);
    $('empty').hidden = sortedIds.length > 0;
    // Charts need their card in the document to know their width.
    for (const id of ids) ensurePlot(cards.get(id), devices.get(id));
  }

  function makeCard(id) {
    const root = el('article', 'card');
    root.dataset.device = id;
    const head = el('div', 'card-head');
    const presence = el('span', 'presence');
    presence.title = 'presence unknown';
    const title = el('h3', null, id);
    title.title = id;
    const restart = el('button', 'restart', 'Restart');
    restart.type = 'button';
    restart.title = `Publish a restart command to commands/${id}`;
    restart.addEventListener('click', () => sendCommand(id, 'restart', {}));
    head.append(presence, title, restart);
    const metricsList = el('dl', 'metrics');
    const chartBox = el('div', 'chart');
    const foot = el('div', 'card-foot');
    const seen = el('span', 'seen');
    const command = el('span', 'command');
    foot.append(seen, command);
    root.append(head, metricsList, chartBox, foot);
    return { root, presence, values: new Map(), metricsList, chartBox, plot: null, plotMetric: null, seen, command, restart };
  }

  function updateCard(card, entry) {
    if (!entry) return;
    const online = entry.online === null ? 'unknown' : String(entry.online);
    if (card.presence.dataset.online !== online) {
      card.presence.dataset.online = online;
      card.presence.title = entry.online === null ? 'presence unknown' : entry.online ? 'online' : 'offline';
      card.root.classList.toggle('offline', entry.online === false);
    }
    const names = [...entry.metrics.keys()].sort();
    for (const name of names) {
      const reading = entry.metrics.get(name);
      let dd = card.values.get(name);
      if (!dd) {
        const row = el('div');
        const label = el('dt', null, LABELS[name] || name);
        label.title = name;
        row.append(label);
        dd = el('dd', 'value');
        dd.dataset.metric = name;
        row.append(dd);
        card.values.set(name, dd);
        // Keep the metrics in name order.
        const after = [...card.values.keys()].sort().indexOf(name);
        const rows = card.metricsList.children;
        card.metricsList.insertBefore(row, rows[after] || null);
      }
      const text = formatValue(reading.value);
      if (dd.dataset.value !== text) {
        dd.dataset.value = text;
        dd.replaceChildren(document.createTextNode(text), el('span', 'unit', formatUnit(reading.unit)));
        dd.title = `${reading.value} at ${new Date(reading.ts).toISOString()}`;
        // A brief highlight; the Web Animations API needs no forced reflow to restart it.
        if (dd.animate) dd.animate([{ color: 'var(--chart)' }, {}], { duration: 800, easing: 'ease-out' });
      }
    }
    card.root.classList.toggle('alerting', entry.alertUntil > Date.now());
    card.seen.textContent = ago(entry.seen);
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
    const stroke = getComputedStyle(document.documentElement).getPropertyValue('--chart').trim() || '#3b6fd8';
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
    loadHistory(entry.id, chartMetric).then((points) => mergeHistory(entry, chartMetric, points));
  }

  /**
   * The seam for history: once the registry serves `GET /api/v1/devices/{id}/telemetry?metric=&from=&to=`,
   * fetch the last minutes here and return [{ts, value}]; live points then continue the line.
   * The REST telemetry API does not exist yet, so the charts start with the page.
   */
  async function loadHistory(_deviceId, _metric) {
    return [];
  }

  function mergeHistory(entry, metric, points) {
    if (!points.length) return;
    for (const point of points) onSensorUpdate({ deviceId: entry.id, metric, value: point.value, ts: point.ts });
  }

  function relayoutCharts() {
    for (const card of cards.values()) {
      if (card.plot) {
        const width = card.chartBox.clientWidth;
        if (width > 0) card.plot.setSize({ width, height: 56 });
      }
    }
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
  $('search').addEventListener('input', (event) => {
    search = event.target.value;
    page = 0;
    layout();
  });
  $('prev').addEventListener('click', () => {
    page = Math.max(0, page - 1);
    layout();
  });
  $('next').addEventListener('click', () => {
    page += 1;
    layout();
  });

  // Relative times and alert highlights age even without messages.
  setInterval(() => {
    for (const [id, card] of cards) updateCard(card, devices.get(id));
  }, 1000);

  // ---- Stats --------------------------------------------------------------------------------------

  let frames = 0;
  let rate = 0;
  setInterval(() => {
    rate = frames;
    frames = 0;
    updateStats();
  }, 1000);

  function updateStats() {
    let online = 0;
    for (const entry of devices.values()) if (entry.online) online++;
    $('stat-devices').textContent = String(devices.size);
    $('stat-online').textContent = String(online);
    $('stat-rate').textContent = String(rate);
  }

  // ---- Alerts and toasts --------------------------------------------------------------------------

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
    entry.alertUntil = Date.now() + ALERT_HIGHLIGHT_MS;
    markDirty(entry.id);
    toast(`${msg.deviceId}: ${msg.severity}`, msg.message, severity);
    const item = el('li');
    item.dataset.severity = severity;
    item.dataset.device = msg.deviceId;
    item.append(el('div', null, msg.message));
    const detail = [msg.deviceId, msg.severity, clock(tsMillis(msg.ts))];
    if (msg.metric !== undefined && msg.value !== undefined) detail.push(`${msg.metric} = ${formatValue(msg.value)}`);
    item.append(el('div', 'meta', detail.join(' · ')));
    const list = $('alerts');
    list.prepend(item);
    while (list.children.length > ALERT_ENTRIES) list.lastChild.remove();
    alertCount++;
    $('alert-count').hidden = false;
    $('alert-count').textContent = String(alertCount);
    $('no-alerts').hidden = true;
  }

  // ---- Commands -----------------------------------------------------------------------------------

  function uuid() {
    if (crypto.randomUUID) return crypto.randomUUID();
    // Pages served over plain http from another host are not a secure context: build a v4 UUID by hand.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  /** commandId -> { deviceId, name, timer } */
  const pendingCommands = new Map();

  // The REST commands API does not exist yet, so commands go out as MQTT publishes through the gateway.
  function sendCommand(deviceId, name, params) {
    const id = uuid();
    const payload = JSON.stringify({ id, name, params });
    if (!connection.send({ type: 'publish', topic: `commands/${deviceId}`, payload, qos: 1, retain: false })) {
      toast(`${deviceId}: ${name} not sent`, 'The dashboard is not connected.', 'error');
      return;
    }
    const entry = device(deviceId);
    entry.command = { id, state: 'pending', text: `${name} sent…` };
    const timer = setTimeout(() => {
      pendingCommands.delete(id);
      if (entry.command && entry.command.id === id) entry.command = { id, state: 'error', text: `${name}: no answer` };
      markDirty(deviceId);
    }, COMMAND_TIMEOUT_MS);
    pendingCommands.set(id, { deviceId, name, timer });
    markDirty(deviceId);
  }

  function onCommandResponse(msg) {
    let response;
    try {
      response = JSON.parse(msg.payload);
    } catch {
      return;
    }
    const pending = response && pendingCommands.get(response.id);
    if (!pending) return;
    clearTimeout(pending.timer);
    pendingCommands.delete(response.id);
    const ok = response.status === 'ok';
    const entry = device(pending.deviceId);
    entry.command = { id: response.id, state: ok ? 'ok' : 'error', text: `${pending.name}: ${response.status}` };
    markDirty(pending.deviceId);
    toast(`${pending.deviceId}: ${pending.name} ${ok ? 'acknowledged' : 'failed'}`, ok ? '' : JSON.stringify(response.result), ok ? 'ok' : 'error');
  }

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
    subscriptions.acquire(filter);
  });

  $('explorer-stop').addEventListener('click', () => {
    if (explorerFilter) subscriptions.release(explorerFilter);
    explorerFilter = null;
    $('explorer-stop').hidden = true;
    $('explorer-status').textContent = 'Stopped.';
  });

  // ---- Subscriptions ------------------------------------------------------------------------------

  // The grid and the explorer may want the same filter; the gateway holds one subscription per filter
  // and connection, so the page counts its own users and unsubscribes when the last one lets go.
  const subscriptions = {
    counts: new Map(),
    acquire(filter) {
      const count = this.counts.get(filter) || 0;
      this.counts.set(filter, count + 1);
      // Subscribing again to a held filter is harmless and brings its retained values again, which the explorer wants.
      connection.send({ type: 'subscribe', topics: [filter] });
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
      // A token in the page's address is passed on: the seam for the registry's API tokens.
      const token = new URLSearchParams(location.search).get('token');
      const url = `${scheme}://${location.host}/dashboard${token ? `?token=${encodeURIComponent(token)}` : ''}`;
      setConnectionState('connecting', this.attempt ? 'Reconnecting…' : 'Connecting…');
      const socket = new WebSocket(url);
      this.socket = socket;
      socket.addEventListener('open', () => {
        this.attempt = 0;
        setConnectionState('live', 'Live');
        const topics = subscriptions.all();
        if (topics.length) socket.send(JSON.stringify({ type: 'subscribe', topics }));
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
    frames++;
    switch (msg.type) {
      case 'sensor-update':
        onSensorUpdate(msg);
        break;
      case 'status':
        onStatus(msg);
        break;
      case 'alert':
        onAlert(msg);
        break;
      case 'mqtt-message':
        if (/^commands\/[^/]+\/response$/.test(msg.topic)) onCommandResponse(msg);
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

  for (const filter of GRID_FILTERS) subscriptions.counts.set(filter, 1);
  connection.open();
  refreshMetricOptions();
  requestFrame();
})();
