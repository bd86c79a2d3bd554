'use strict';
// hydrant's live dashboard. Stream counters and windowed aggregates arrive over
// one Server-Sent Events feed; everything is drawn on <canvas> without libraries
// so the page works offline, straight out of the binary.

const RATE_SAMPLES = 300;   // sparkline history per stream: ~5 minutes at one sample a second
const RATE_SPAN_MS = 3000;  // rates are averaged over this much history to smooth batchy producers
const MAX_WINDOWS = 20000;  // windows kept per aggregate; the oldest go first
const MIN_SLOTS = 12;       // the narrowest time span a chart shows, in windows
const MAX_SERIES = 8;       // groups drawn per chart, largest first; more only turn into noise
const REBUILD_MS = 200;     // the least time between two rebuilds of a chart from its windows
const STALE_MS = 5000;      // an open feed with no stats for this long is reported as an error
const RESYNC_MS = 10000;    // snapshots refresh watermark and late/invalid counts, which the feed lacks
const PALETTE = ['#2f6fdb', '#e8833a', '#2aa876', '#d64545', '#8a5cd1', '#b0882a', '#1ea3b8', '#d45a9e', '#6b7a8f'];
const OTHER_COLOR = '#9aa3ad';
// Measures whose per-group values do not add up to a meaningful total are drawn as lines.
const NON_ADDITIVE = /(^|_)(avg|mean|min|max|distinct|approx|median|p\d+|rate|ratio|pct|percent)(_|$)/i;

const $ = (sel, root = document) => root.querySelector(sel);
function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  e.append(...kids);
  return e;
}

// ---- formatting -------------------------------------------------------------

const intFmt = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const floatFmt = new Intl.NumberFormat('en-US', { maximumSignificantDigits: 12 });
const fmtInt = (n) => (Number.isFinite(n) ? intFmt.format(n) : '–');
// Horizontal grid lines with their value labels, shared by every chart.
function drawYGrid(ctx, theme, ticks, Y, box, w) {
  ctx.lineWidth = 1;
  ctx.strokeStyle = theme.grid;
  ctx.fillStyle = theme.muted;
  ctx.textAlign = 'right';
  for (const v of ticks) {
    const y = Math.round(Y(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(box.l, y); ctx.lineTo(w - box.r, y); ctx.stroke();
    ctx.fillText(fmtNum(v), box.l - 6, y);
  }
  ctx.textAlign = 'left';
}

function fmtNum(n) {
  if (n == null || !Number.isFinite(n)) return '–';
  const a = Math.abs(n);
  // Thousands stay whole up to 10,000 so "5,000" and "12k" both read at a glance.
  for (const [min, d, u] of [[1e12, 1e12, 'T'], [1e9, 1e9, 'G'], [1e6, 1e6, 'M'], [1e4, 1e3, 'k']]) if (a >= min) return `${+(n / d).toPrecision(3)}${u}`;
  return a >= 100 ? intFmt.format(Math.round(n)) : `${+n.toPrecision(3)}`;
}
function fmtBytes(b) {
  if (!Number.isFinite(b)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return `${i ? b.toFixed(b < 10 ? 2 : 1) : b} ${units[i]}`;
}
const fmtRate = (r) => (r == null ? '–' : r < 10 ? r.toFixed(1) : fmtInt(r));
function fmtSecs(s) {
  if (!Number.isFinite(s)) return '–';
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} m ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} m`;
}
const pad = (n) => String(n).padStart(2, '0');
const hhmm = (ms) => { const d = new Date(ms); return `${pad(d.getHours())}:${pad(d.getMinutes())}`; };
const hhmmss = (ms) => `${hhmm(ms)}:${pad(new Date(ms).getSeconds())}`;
const dayLabel = (ms) => new Date(ms).toLocaleDateString('en-US', { month: 'short', day: 'numeric' });

// ---- state ------------------------------------------------------------------

const streams = new Map(); // name -> { row, cells, samples: [{t, rin, bin}], rates: [], rps, mbps }
const aggs = new Map();    // "stream/aggregate" -> chart state, see aggFor()
const feed = { source: null, open: false, failed: false, openedAt: 0, lastData: 0, error: '' };
let frameRequested = false;

function schedule() {
  if (!frameRequested) { frameRequested = true; requestAnimationFrame(frame); }
}

function frame() {
  frameRequested = false;
  const theme = readTheme();
  for (const s of streams.values()) if (s.sparkDirty) drawSpark(s, theme);
  for (const a of aggs.values()) if (a.dirty) drawChart(a, theme);
  if (query.dirty) drawQueryChart(theme);
}

function readTheme() {
  const cs = getComputedStyle(document.documentElement);
  const v = (n) => cs.getPropertyValue(n).trim();
  return { fg: v('--fg'), muted: v('--muted'), grid: v('--grid'), accent: v('--accent'), card: v('--card'), font: v('--chart-font') || '11px sans-serif' };
}

// ---- the live feed ----------------------------------------------------------

function connect() {
  const es = new EventSource('/-/api/live');
  feed.source = es;
  es.addEventListener('open', () => {
    feed.open = true;
    feed.openedAt = Date.now();
    // Windows may have changed or the server restarted while we were away: start from a snapshot.
    if (feed.failed) loadAggregates();
    feed.failed = false;
    setStatus();
  });
  es.addEventListener('error', () => {
    feed.open = false;
    feed.failed = true;
    // EventSource retries by itself unless the server answered with something that is not a feed.
    if (es.readyState === EventSource.CLOSED) setTimeout(connect, 3000);
    setStatus();
  });
  es.addEventListener('stats', (e) => handle(() => onStats(JSON.parse(e.data))));
  es.addEventListener('windows', (e) => handle(() => onWindows(JSON.parse(e.data))));
  // The server dropped updates for this slow reader; only a fresh snapshot is trustworthy.
  es.addEventListener('lagged', () => loadAggregates());
}

function handle(fn) {
  try {
    fn();
    feed.error = '';
  } catch (err) {
    feed.error = String(err.message || err);
    console.error('dashboard: bad live event', err);
  }
  setStatus();
}

function setStatus() {
  const now = Date.now();
  let state, text;
  if (feed.error) [state, text] = ['error', `error: ${feed.error}`];
  else if (!feed.open) [state, text] = feed.failed || feed.lastData ? ['down', 'disconnected'] : ['connecting', 'connecting'];
  else if (now - Math.max(feed.lastData, feed.openedAt) > STALE_MS) [state, text] = ['error', 'error: no data'];
  else if (feed.lastData >= feed.openedAt) [state, text] = ['live', 'live'];
  else [state, text] = ['connecting', 'connecting'];
  const st = $('#status');
  if (st.textContent !== text) st.textContent = text;
  st.dataset.state = state;
  document.body.dataset.feed = state; // lets the stylesheet dim numbers that are no longer current
  st.title = feed.lastData ? `last data ${Math.round((now - feed.lastData) / 1000)} s ago` : 'no data yet';
}

// ---- streams overview -------------------------------------------------------

const FIELDS = ['records_per_s', 'mb_per_s', 'records_delivered', 'objects_delivered', 'lag_records', 'lag_seconds', 'failures', 'log_bytes'];

function onStats(msg) {
  const t = Number.isFinite(msg.time_ms) ? msg.time_ms : Date.now();
  feed.lastData = Date.now();
  $('#updated').textContent = hhmmss(t);
  $('#updated').dateTime = new Date(t).toISOString();
  const tbody = $('#streams tbody');
  const seen = new Set();
  for (const s of msg.streams || []) {
    seen.add(s.name);
    let st = streams.get(s.name);
    if (!st) {
      st = newStreamRow(s);
      streams.set(s.name, st);
      $('.empty', tbody)?.remove();
      // Keep rows in name order however streams appear.
      const after = [...tbody.rows].find((r) => r.dataset.stream > s.name);
      tbody.insertBefore(st.row, after || null);
    }
    updateStream(st, s, t);
  }
  for (const [name, st] of streams) if (!seen.has(name)) { st.row.remove(); streams.delete(name); }
  showWarehouses((msg.streams || []).filter((s) => s.warehouse));
  showCaptures((msg.streams || []).filter((s) => s.source), t);
  $('#stream-count').textContent = `${streams.size} stream${streams.size === 1 ? '' : 's'}`;
  showTables([...streams.keys()].sort());
  schedule();
}

// One row per stream with a warehouse destination, rebuilt on every update.
function showWarehouses(list) {
  $('#warehouse-card').hidden = list.length === 0;
  const tbody = $('#warehouses tbody');
  tbody.replaceChildren(...list.sort((a, b) => (a.name < b.name ? -1 : 1)).map((s) => {
    const w = s.warehouse;
    const reasons = Object.entries(w.rows_rejected || {});
    const rejected = reasons.reduce((n, [, k]) => n + k, 0);
    const err = w.last_error ? w.last_error.message : '';
    const row = el('tr', { 'data-stream': s.name },
      el('td', { class: 'l name' }, s.name),
      el('td', { class: 'l' }, w.table),
      el('td', { 'data-field': 'objects_staged' }, fmtInt(w.objects_staged)),
      el('td', { 'data-field': 'objects_loaded' }, fmtInt(w.objects_loaded)),
      el('td', { 'data-field': 'rows_loaded' }, fmtInt(w.rows_loaded)),
      el('td', { 'data-field': 'rows_rejected', title: reasons.map(([r, n]) => `${fmtInt(n)} ${r}`).join(', ') || 'none' }, fmtInt(rejected)),
      el('td', { 'data-field': 'manifests_failed' }, fmtInt(w.manifests_failed)),
      el('td', { 'data-field': 'lag_records' }, fmtInt(w.lag_records)),
      el('td', { 'data-field': 'lag_seconds' }, fmtSecs(w.lag_seconds)),
      el('td', { class: 'l', 'data-field': 'last_error', title: err }, err.length > 80 ? err.slice(0, 80) + '…' : err));
    row.cells[5].classList.toggle('bad', rejected > 0);
    row.cells[6].classList.toggle('bad', w.manifests_failed > 0);
    row.cells[9].classList.toggle('bad', !!err);
    return row;
  }));
}

// Change counts per stream/table seen before, for changes per second.
const captureSamples = new Map();

// One row per captured table, rebuilt on every update.
function showCaptures(list, t) {
  $('#capture-card').hidden = list.length === 0;
  const rows = [];
  for (const s of list.sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const src = s.source;
    const state = src.failed ? `stopped: ${src.failed}` : src.last_error ? `retrying: ${src.last_error.message}` : 'streaming';
    // A source not reached yet has no tables: its stream still shows, with why.
    const tables = src.tables.length ? src.tables
      : [{ table: '–', snapshot: '–', snapshot_rows: 0, estimated_rows: 0, changes: 0, lag_seconds: null }];
    for (const tb of tables) {
      const id = `${s.name}/${tb.table}`;
      const seen = captureSamples.get(id) || [];
      if (seen.length && (tb.changes < seen[seen.length - 1].n || t <= seen[seen.length - 1].t)) seen.length = 0;
      seen.push({ t, n: tb.changes });
      while (seen.length > 2 && t - seen[1].t >= RATE_SPAN_MS) seen.shift();
      captureSamples.set(id, seen);
      const rate = seen.length > 1 ? (tb.changes - seen[0].n) / ((t - seen[0].t) / 1000) : null;
      const progress = tb.snapshot === 'COMPLETE' ? fmtInt(tb.snapshot_rows)
        : `${fmtInt(tb.snapshot_rows)} / ~${fmtInt(tb.estimated_rows)}`;
      const row = el('tr', { 'data-stream': s.name, 'data-table': tb.table },
        el('td', { class: 'l name' }, s.name),
        el('td', { class: 'l' }, tb.table),
        el('td', { class: 'l', 'data-field': 'snapshot' }, tb.snapshot),
        el('td', { 'data-field': 'snapshot_rows' }, progress),
        el('td', { 'data-field': 'changes' }, fmtInt(tb.changes)),
        el('td', { 'data-field': 'changes_per_s' }, fmtRate(rate)),
        el('td', { 'data-field': 'lag_seconds' }, tb.changes ? fmtSecs(tb.lag_seconds) : '–'),
        el('td', { class: 'l', 'data-field': 'state', title: state }, state.length > 80 ? state.slice(0, 80) + '…' : state));
      row.cells[7].classList.toggle('bad', state !== 'streaming');
      rows.push(row);
    }
  }
  $('#captures tbody').replaceChildren(...rows);
}

function newStreamRow(s) {
  const spark = el('canvas', { class: 'spark', width: 120, height: 24 });
  const cells = {};
  const row = el('tr', { 'data-stream': s.name },
    el('td', { class: 'l name' }, el('span', { class: 'stream-name' }, s.name), el('span', { class: 'bucket' }, s.bucket || '')),
    el('td', { class: 'l' }, spark));
  for (const f of FIELDS) row.append(cells[f] = el('td', { 'data-field': f }, '–'));
  return { row, cells, spark, samples: [], rates: [], rps: null, mbps: null, sparkDirty: true };
}

function updateStream(st, s, t) {
  // A counter going backwards means the server restarted: rates start over.
  const last = st.samples[st.samples.length - 1];
  if (last && (s.records_in < last.rin || t <= last.t)) st.samples.length = 0;
  st.samples.push({ t, rin: s.records_in, bin: s.bytes_in });
  while (st.samples.length > 2 && t - st.samples[1].t >= RATE_SPAN_MS) st.samples.shift();
  const first = st.samples[0];
  if (st.samples.length > 1) {
    const dt = (t - first.t) / 1000;
    st.rps = (s.records_in - first.rin) / dt;
    st.mbps = (s.bytes_in - first.bin) / dt / 1e6;
    st.rates.push(st.rps);
    if (st.rates.length > RATE_SAMPLES) st.rates.shift();
    st.sparkDirty = true;
  }
  const routed = Object.values(s.failed_records || {}).reduce((x, y) => x + y, 0);
  const failures = (s.records_rejected || 0) + (s.delivery_failures || 0) + routed;
  const c = st.cells;
  c.records_per_s.textContent = fmtRate(st.rps);
  c.mb_per_s.textContent = st.mbps == null ? '–' : st.mbps.toFixed(st.mbps < 10 ? 3 : 1);
  c.records_delivered.textContent = fmtInt(s.records_delivered);
  c.objects_delivered.textContent = fmtInt(s.objects_delivered);
  c.lag_records.textContent = fmtInt(s.lag_records);
  c.lag_seconds.textContent = fmtSecs(s.lag_seconds);
  c.failures.textContent = fmtInt(failures);
  const reasons = Object.entries(s.failed_records || {}).map(([code, n]) => `, ${fmtInt(n)} ${code}`).join('');
  c.failures.title = `${fmtInt(s.records_rejected)} rejected at intake, ${fmtInt(s.delivery_failures)} delivery failures${reasons}`;
  c.failures.classList.toggle('bad', failures > 0);
  c.lag_seconds.classList.toggle('warn', s.lag_seconds > 60);
  c.log_bytes.textContent = fmtBytes(s.log_bytes);
  c.log_bytes.title = `${fmtInt(s.log_bytes)} bytes`;
}

function drawSpark(st, theme) {
  st.sparkDirty = false;
  const ctx = fitCanvas(st.spark);
  if (!ctx) return;
  const { w, h } = st.spark._size;
  ctx.clearRect(0, 0, w, h);
  // A baseline from the start, so a young row does not look broken while samples arrive.
  ctx.fillStyle = theme.grid;
  ctx.fillRect(0, h - 1, w, 1);
  const r = st.rates;
  if (r.length < 2) return;
  const max = Math.max(...r) * 1.2 || 1; // headroom keeps a steady rate off the top edge
  // The newest sample sits at the right edge; the first half minute is stretched so a young
  // history is readable, after which the line grows leftwards to RATE_SAMPLES.
  const span = Math.max(r.length, 30) - 1;
  const x = (i) => w - 1 - (r.length - 1 - i) * ((w - 2) / span);
  const y = (v) => h - 2 - (v / max) * (h - 4);
  ctx.beginPath();
  r.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
  ctx.strokeStyle = theme.accent;
  ctx.lineWidth = 1.25;
  ctx.stroke();
  ctx.lineTo(x(r.length - 1), h);
  ctx.lineTo(x(0), h);
  ctx.closePath();
  ctx.globalAlpha = 0.15;
  ctx.fillStyle = theme.accent;
  ctx.fill();
  ctx.globalAlpha = 1;
}

// Sizes the backing store to the element's CSS size times devicePixelRatio, so lines stay
// crisp on HiDPI screens and after zooming, and returns a context drawing in CSS pixels.
function fitCanvas(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (!w || !h) return null;
  const bw = Math.round(w * dpr), bh = Math.round(h * dpr);
  if (canvas.width !== bw || canvas.height !== bh) { canvas.width = bw; canvas.height = bh; }
  canvas._size = { w, h };
  const ctx = canvas.getContext('2d');
  ctx.setTransform(bw / w, 0, 0, bh / h, 0, 0);
  return ctx;
}

// ---- aggregates -------------------------------------------------------------

// With replace, the snapshot becomes the whole truth (after a reconnect or a lagged feed);
// without, it only adds to what the feed built, which may reach further back than the server keeps.
async function loadAggregates(replace = true) {
  const note = $('#agg-note');
  const since = Date.now();
  try {
    const res = await fetch('/-/api/aggregates', { cache: 'no-store' });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const body = await res.json();
    const list = body.aggregates || [];
    const fresh = new Set();
    for (const { stream, snapshot } of list) {
      const a = aggFor(stream, snapshot.aggregate);
      fresh.add(a.key);
      a.meta = snapshot;
      mergeWindows(a, snapshot.windows || []);
      // Drop what neither this snapshot nor the feed (while it was fetched) has confirmed.
      if (replace) for (const [k, w] of a.windows) if (w._seen < since) a.windows.delete(k);
      renderMeta(a);
    }
    for (const [key, a] of aggs) if (!fresh.has(key)) { a.card.remove(); aggs.delete(key); }
    note.textContent = list.length ? '' : 'no aggregates configured';
  } catch (err) {
    note.textContent = `aggregates unavailable (${err.message})`;
  }
}

function onWindows(msg) {
  mergeWindows(aggFor(msg.stream, msg.aggregate), msg.windows || []);
}

const groupKey = (g) => JSON.stringify(Object.keys(g || {}).sort().map((k) => [k, g[k]]));
function groupLabel(g) {
  const keys = Object.keys(g || {});
  if (!keys.length) return 'all';
  const val = (v) => (v === null ? 'null' : typeof v === 'string' ? v : JSON.stringify(v));
  return keys.length === 1 ? val(g[keys[0]]) : keys.map((k) => `${k}=${val(g[k])}`).join(', ');
}

function aggFor(stream, aggregate) {
  const key = `${stream}/${aggregate}`;
  let a = aggs.get(key);
  if (a) return a;
  const canvas = el('canvas', { class: 'chart', 'data-points': '0', role: 'img', 'aria-label': `${aggregate} of ${stream} per window` });
  const tip = el('div', { class: 'tip', hidden: '' });
  const select = el('select', { class: 'measure', 'aria-label': 'measure', hidden: '', onchange: () => {
    a.measure = select.value;
    a.mode = prefs(key, { measure: a.measure }).modes?.[a.measure] || null;
    a.model = null; a.dirty = true; schedule();
  } });
  const modeBtn = el('button', { class: 'mode', type: 'button', title: 'switch between stacked bars and lines', onclick: () => {
    a.mode = a.model?.mode === 'bars' ? 'lines' : 'bars';
    prefs(key, { modes: { ...prefs(key).modes, [a.measure]: a.mode } });
    a.model = null; a.dirty = true; schedule();
  } });
  const card = el('section', { class: 'card aggregate-chart', 'data-aggregate': key, 'data-updated': '0' },
    el('div', { class: 'card-head' },
      el('h3', {}, aggregate), el('span', { class: 'meta stream' }, stream),
      el('span', { class: 'spacer' }), select, modeBtn),
    el('div', { class: 'meta snapmeta' }),
    el('div', { class: 'plot' }, canvas, tip),
    el('div', { class: 'legend' }));
  a = { key, stream, aggregate, card, canvas, tip, select, modeBtn, windows: new Map(), measures: [], measure: null, mode: null,
    colors: new Map(), hidden: new Set(), model: null, stale: false, builtAt: 0, rebuildTimer: 0, dirty: true, hover: null, meta: null };
  canvas.addEventListener('mousemove', (e) => { a.hover = e.offsetX; a.dirty = true; schedule(); });
  canvas.addEventListener('mouseleave', () => { a.hover = null; a.dirty = true; schedule(); });
  new ResizeObserver(() => { a.dirty = true; schedule(); }).observe(canvas);
  aggs.set(key, a);
  const grid = $('#aggregates');
  grid.insertBefore(card, [...grid.children].find((c) => c.dataset.aggregate > key) || null);
  $('#agg-note').textContent = '';
  return a;
}

function mergeWindows(a, windows) {
  let newMeasure = false;
  for (const w of windows) {
    w._gk = groupKey(w.group);
    const k = `${w.start_ms}|${w._gk}`;
    // A closed window is final: an open copy can only be older news (a snapshot that
    // crossed the feed in flight), so it must not reopen it.
    const old = a.windows.get(k);
    if (!w.closed && old?.closed) { old._seen = Date.now(); continue; }
    w._seen = Date.now();
    a.windows.set(k, w);
    for (const m of Object.keys(w.measures || {})) if (!a.measures.includes(m)) { a.measures.push(m); newMeasure = true; }
  }
  if (a.windows.size > MAX_WINDOWS) {
    // Drop a tenth at once so the sort is paid rarely.
    const byAge = [...a.windows].sort((x, y) => x[1].start_ms - y[1].start_ms);
    for (const [k] of byAge.slice(0, a.windows.size - Math.floor(MAX_WINDOWS * 0.9))) a.windows.delete(k);
  }
  if (newMeasure) {
    a.select.replaceChildren(...a.measures.map((m) => el('option', { value: m }, m)));
    a.measure ??= defaultMeasure(a);
    a.select.value = a.measure;
    a.mode ??= prefs(a.key).modes?.[a.measure] || null;
    a.select.hidden = a.measures.length < 2;
  }
  a.updated = Date.now();
  a.card.dataset.updated = String(a.updated);
  a.stale = true;
  a.dirty = true;
  schedule();
}

// Measures arrive in no meaningful order (the server sorts them by name), so pick the one
// the reader most likely wants: their own last choice, the one the aggregate is named after
// ("revenue" for revenue_per_minute), the first additive one (a count), or just the first.
function defaultMeasure(a) {
  const saved = prefs(a.key).measure;
  const words = `_${a.aggregate.toLowerCase().replace(/\W+/g, '_')}_`;
  const named = a.measures.find((m) => words.includes(`_${m.toLowerCase()}_`));
  return [saved, named, a.measures.find((m) => !NON_ADDITIVE.test(m))].find((m) => a.measures.includes(m)) || a.measures[0];
}

// Per-chart choices survive reloads; storage may be unavailable (privacy modes), which is fine.
function prefs(key, update) {
  const id = `hydrant.chart.${key}`;
  let p = {};
  try { p = JSON.parse(localStorage.getItem(id)) || {}; } catch { /* no storage */ }
  if (update) {
    p = { ...p, ...update };
    try { localStorage.setItem(id, JSON.stringify(p)); } catch { /* no storage */ }
  }
  return p;
}

function renderMeta(a) {
  const s = a.meta;
  if (!s) return;
  const parts = [`watermark ${s.watermark_ms == null ? '–' : hhmmss(s.watermark_ms)}`];
  if (s.late_count) parts.push(`${fmtInt(s.late_count)} late`);
  if (s.overflow_count) parts.push(`${fmtInt(s.overflow_count)} over group limit`);
  const inv = Object.entries(s.invalid_counts || {}).filter(([, n]) => n);
  if (inv.length) parts.push(`invalid: ${inv.map(([r, n]) => `${r} ${fmtInt(n)}`).join(', ')}`);
  const m = $('.snapmeta', a.card);
  m.textContent = parts.join(' · ');
  m.classList.toggle('warn', parts.length > 1);
}

// Turns the windows into what one draw needs: series per group for the chosen measure,
// the largest MAX_SERIES kept, in stacked mode the rest summed into "other".
function buildModel(a) {
  const m = a.measure;
  const mode = a.mode || (m && NON_ADDITIVE.test(m) ? 'lines' : 'bars');
  const groups = new Map();
  const starts = new Set();
  let minSpan = Infinity;
  for (const w of a.windows.values()) {
    const y = w.measures?.[m];
    if (typeof y !== 'number' || !Number.isFinite(y)) continue; // null: the window saw no value
    let g = groups.get(w._gk);
    if (!g) {
      g = { key: w._gk, label: groupLabel(w.group), points: [], total: 0 };
      groups.set(w._gk, g);
      if (!a.colors.has(w._gk)) a.colors.set(w._gk, PALETTE[a.colors.size % PALETTE.length]);
    }
    g.points.push({ x: w.start_ms, end: w.end_ms, y, open: !w.closed });
    g.total += Math.abs(y);
    starts.add(w.start_ms);
    minSpan = Math.min(minSpan, w.end_ms - w.start_ms);
  }
  const ranked = [...groups.values()].sort((p, q) => q.total - p.total);
  // Largest groups are chosen, but shown in name order: a live chart whose stacking order
  // and legend reshuffled whenever two totals crossed would be hard to follow.
  const series = ranked.slice(0, MAX_SERIES).sort((p, q) => p.label.localeCompare(q.label, undefined, { numeric: true }));
  const rest = ranked.slice(MAX_SERIES);
  if (mode === 'bars' && rest.length) {
    const byX = new Map();
    for (const g of rest) for (const p of g.points) {
      const o = byX.get(p.x) || { ...p, y: 0, open: false };
      o.y += p.y;
      o.open ||= p.open;
      byX.set(p.x, o);
    }
    series.push({ key: '\0other', label: `other (${rest.length} groups)`, points: [...byX.values()], other: true });
  }
  for (const g of series) {
    g.points.sort((p, q) => p.x - q.x);
    g.color = g.other ? OTHER_COLOR : a.colors.get(g.key);
    g.last = g.points[g.points.length - 1];
  }
  return { mode, series, dropped: mode === 'bars' ? 0 : rest.length, starts: [...starts].sort((p, q) => p - q), span: minSpan };
}

function renderLegend(a) {
  const { series, dropped } = a.model;
  const items = series.map((g) => el('button', {
    type: 'button', class: `item${a.hidden.has(g.key) ? ' off' : ''}`, title: 'show or hide this group',
    onclick: () => { a.hidden.has(g.key) ? a.hidden.delete(g.key) : a.hidden.add(g.key); renderLegend(a); a.dirty = true; schedule(); },
  }, el('i', { style: `background:${g.color}` }), el('span', { class: 'g' }, g.label),
  el('b', { title: 'latest window' }, fmtNum(g.last?.y))));
  if (dropped) items.push(el('span', { class: 'meta' }, `+${dropped} smaller groups not drawn`));
  if (series.some((g) => g.last?.open)) items.push(el('span', { class: 'meta key' }, el('i', { class: `open-${a.model.mode}` }), 'window still open'));
  $('.legend', a.card).replaceChildren(...items);
  a.modeBtn.textContent = a.model.mode === 'bars' ? 'stacked' : 'lines';
}

// ---- chart drawing ----------------------------------------------------------

function niceStep(range, target) {
  const raw = range / Math.max(1, target);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const f = raw / mag;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400].map((s) => s * 1000);

function drawChart(a, theme) {
  a.dirty = false;
  // The feed can update a chart many times a second; rebuilding from every window that
  // often would be wasted on a screen, so data changes are folded in at most 5 times a second.
  const now = performance.now();
  if (!a.model || (a.stale && now - a.builtAt >= REBUILD_MS)) {
    a.model = buildModel(a);
    a.stale = false;
    a.builtAt = now;
    renderLegend(a);
  } else if (a.stale && !a.rebuildTimer) {
    a.rebuildTimer = setTimeout(() => { a.rebuildTimer = 0; a.dirty = true; schedule(); }, REBUILD_MS);
  }
  const ctx = fitCanvas(a.canvas);
  if (!ctx) return;
  const { w, h } = a.canvas._size;
  const { mode, series, starts } = a.model;
  const visible = series.filter((g) => !a.hidden.has(g.key));
  ctx.clearRect(0, 0, w, h);
  ctx.font = theme.font;
  ctx.textBaseline = 'middle';
  if (!starts.length || !visible.length) {
    ctx.fillStyle = theme.muted;
    ctx.textAlign = 'center';
    ctx.fillText(a.windows.size ? 'no values for this measure yet' : 'waiting for windows…', w / 2, h / 2);
    a.canvas.dataset.points = '0';
    a.tip.hidden = true;
    return;
  }

  // One slot is the window step (the slide, for hopping windows). Stacked bars need about
  // 6 px a slot to stay readable, so they show only as many recent windows as fit.
  const slot = Math.min(a.model.span, minGap(starts));
  const xs = mode === 'bars' ? starts.slice(-Math.max(1, Math.floor((w - 60) / 6))) : starts;
  const first = xs[0], last = xs[xs.length - 1];
  // A young chart spans at least MIN_SLOTS windows, newest on the right, so one window
  // is one slim bar rather than a wall, and a lone point is not stuck on the edge.
  const x1 = mode === 'bars' ? last + slot : first === last ? last + slot / 2 : last;
  const x0 = Math.min(mode === 'bars' ? first : first === last ? first - slot / 2 : first, x1 - MIN_SLOTS * slot);
  const inRange = (p) => p.x >= first;

  // y range: stacked sums for bars, raw values for lines; always include 0 for honest bars.
  let lo = 0, hi = 0;
  if (mode === 'bars') {
    const pos = new Map(), neg = new Map();
    for (const g of visible) for (const p of g.points) if (inRange(p)) {
      const m = p.y >= 0 ? pos : neg;
      m.set(p.x, (m.get(p.x) || 0) + p.y);
    }
    hi = Math.max(0, ...pos.values());
    lo = Math.min(0, ...neg.values());
  } else {
    lo = Infinity; hi = -Infinity;
    for (const g of visible) for (const p of g.points) if (inRange(p)) { lo = Math.min(lo, p.y); hi = Math.max(hi, p.y); }
    if (lo > 0 && lo < hi * 0.5) lo = 0;
  }
  if (hi === lo) { hi += Math.abs(hi) * 0.1 || 1; lo -= lo ? Math.abs(lo) * 0.1 : 0; }
  const plotH = h - 34;
  const yStep = niceStep(hi - lo, Math.max(2, Math.floor(plotH / 40)));
  lo = Math.floor(lo / yStep) * yStep;
  hi = Math.ceil(hi / yStep) * yStep;
  const yTicks = [];
  for (let i = 0; lo + i * yStep <= hi + yStep / 2; i++) yTicks.push(+(lo + i * yStep).toPrecision(12));
  const left = 8 + Math.max(...yTicks.map((v) => ctx.measureText(fmtNum(v)).width));
  const box = { l: left + 6, r: 12, t: 16, b: 20 };
  const pw = w - box.l - box.r, ph = h - box.t - box.b;
  const X = (t) => box.l + ((t - x0) / (x1 - x0 || 1)) * pw;
  const Y = (v) => box.t + (1 - (v - lo) / (hi - lo)) * ph;

  // grid and axes
  drawYGrid(ctx, theme, yTicks, Y, box, w);
  ctx.fillText(a.measure, box.l, 7);
  const tStep = TIME_STEPS.find((s) => (s / (x1 - x0 || 1)) * pw >= 70) || 86400000;
  const tz = new Date(x0).getTimezoneOffset() * 60000; // align ticks to local clock boundaries
  ctx.textAlign = 'center';
  for (let t = Math.ceil((x0 - tz) / tStep) * tStep + tz; t <= x1; t += tStep) {
    const x = Math.round(X(t)) + 0.5;
    const label = tStep >= 86400000 ? dayLabel(t) : tStep < 60000 ? hhmmss(t) : hhmm(t);
    ctx.beginPath(); ctx.moveTo(x, box.t + ph); ctx.lineTo(x, box.t + ph + 4); ctx.stroke();
    if (x + ctx.measureText(label).width / 2 <= w) ctx.fillText(label, x, h - 8);
  }
  if (lo <= 0 && hi >= 0) {
    ctx.strokeStyle = theme.muted;
    ctx.beginPath(); ctx.moveTo(box.l, Math.round(Y(0)) + 0.5); ctx.lineTo(w - box.r, Math.round(Y(0)) + 0.5); ctx.stroke();
  }

  let drawn = 0;
  if (mode === 'bars') drawn = drawBars(ctx, visible, xs, slot, X, Y, pw / (x1 - x0 || 1), theme);
  else drawn = drawLines(ctx, visible, first, X, Y, pw, theme);
  a.canvas.dataset.points = String(drawn);
  drawHover(a, ctx, visible, xs, slot, X, Y, box, ph, mode, theme);
}

function minGap(sorted) {
  let g = Infinity;
  for (let i = 1; i < sorted.length; i++) g = Math.min(g, sorted[i] - sorted[i - 1]);
  return g;
}

function drawBars(ctx, visible, xs, slot, X, Y, pxPerMs, theme) {
  const bw = Math.max(1, slot * pxPerMs * 0.78);
  const first = xs[0];
  const stackPos = new Map(), stackNeg = new Map();
  let drawn = 0;
  for (const g of visible) {
    for (const p of g.points) {
      if (p.x < first) continue;
      const stack = p.y >= 0 ? stackPos : stackNeg;
      const base = stack.get(p.x) || 0;
      stack.set(p.x, base + p.y);
      const x = X(p.x) + (slot * pxPerMs - bw) / 2;
      const yTop = Y(base + p.y), yBase = Y(base);
      const top = Math.min(yTop, yBase), hgt = Math.abs(yBase - yTop);
      // Still-filling windows are translucent with a dashed outline: their values will grow.
      ctx.globalAlpha = p.open ? 0.35 : 0.9;
      ctx.fillStyle = g.color;
      ctx.fillRect(x, top, bw, hgt);
      if (p.open && hgt > 1) {
        ctx.globalAlpha = 1;
        ctx.setLineDash([3, 2]);
        ctx.strokeStyle = g.color;
        ctx.strokeRect(x + 0.5, top + 0.5, bw - 1, hgt - 1);
        ctx.setLineDash([]);
      }
      drawn++;
    }
  }
  ctx.globalAlpha = 1;
  return drawn;
}

// Keeps at most two points (min and max) per pixel column, so a long history costs
// as much as the chart is wide while spikes stay visible.
function decimate(points, X, maxPoints) {
  if (points.length <= maxPoints) return points;
  const out = [];
  let col = null, lo = null, hi = null;
  const flush = () => { if (lo) out.push(...(lo === hi ? [lo] : lo.x < hi.x ? [lo, hi] : [hi, lo])); };
  for (const p of points) {
    const c = Math.floor(X(p.x));
    if (c !== col) { flush(); col = c; lo = hi = p; continue; }
    if (p.y < lo.y) lo = p;
    if (p.y > hi.y) hi = p;
  }
  flush();
  return out;
}

function drawLines(ctx, visible, x0, X, Y, pw, theme) {
  let drawn = 0;
  for (const g of visible) {
    const pts = decimate(g.points.filter((p) => p.x >= x0), X, Math.max(2, Math.floor(pw)));
    drawn += pts.length;
    ctx.strokeStyle = g.color;
    ctx.lineWidth = 1.75;
    ctx.lineJoin = 'round';
    // Solid through closed windows; the segment into an open (still filling) window is dashed.
    ctx.beginPath();
    let started = false;
    for (const p of pts) {
      if (p.open) break;
      started ? ctx.lineTo(X(p.x), Y(p.y)) : ctx.moveTo(X(p.x), Y(p.y));
      started = true;
    }
    ctx.stroke();
    const firstOpen = pts.findIndex((p) => p.open);
    if (firstOpen >= 0) {
      ctx.setLineDash([4, 3]);
      ctx.beginPath();
      const from = pts[Math.max(0, firstOpen - 1)];
      ctx.moveTo(X(from.x), Y(from.y));
      for (const p of pts.slice(firstOpen)) ctx.lineTo(X(p.x), Y(p.y));
      ctx.stroke();
      ctx.setLineDash([]);
    }
    // Markers only while they stay apart from each other.
    if (pts.length <= pw / 12) {
      for (const p of pts) {
        ctx.beginPath();
        ctx.arc(X(p.x), Y(p.y), p.open ? 3 : 2.25, 0, Math.PI * 2);
        if (p.open) { ctx.fillStyle = theme.card; ctx.fill(); ctx.lineWidth = 1.5; ctx.stroke(); }
        else { ctx.fillStyle = g.color; ctx.fill(); }
      }
    }
  }
  return drawn;
}

function drawHover(a, ctx, visible, xs, slot, X, Y, box, ph, mode, theme) {
  if (a.hover == null) { a.tip.hidden = true; return; }
  const center = (t) => (mode === 'bars' ? X(t + slot / 2) : X(t));
  let best = xs[0];
  for (const t of xs) if (Math.abs(center(t) - a.hover) < Math.abs(center(best) - a.hover)) best = t;
  const cx = Math.round(center(best)) + 0.5;
  ctx.strokeStyle = theme.muted;
  ctx.setLineDash([2, 3]);
  ctx.beginPath(); ctx.moveTo(cx, box.t); ctx.lineTo(cx, box.t + ph); ctx.stroke();
  ctx.setLineDash([]);
  const rows = [];
  let open = false, end = null, total = 0;
  for (const g of visible) {
    const p = g.points.find((q) => q.x === best);
    if (!p) continue;
    open ||= p.open;
    end = p.end;
    total += p.y;
    rows.push([g, p.y]);
  }
  rows.sort((p, q) => q[1] - p[1]);
  const head = el('div', { class: 'tip-head' }, `${hhmmss(best)}–${end ? hhmmss(end) : '?'}`, el('span', { class: open ? 'open' : 'closed' }, open ? ' open' : ' closed'));
  const lines = rows.map(([g, y]) => el('div', {}, el('i', { style: `background:${g.color}` }), el('span', {}, g.label), el('b', {}, fmtNum(y))));
  if (mode === 'bars' && rows.length > 1) lines.push(el('div', { class: 'total' }, el('i'), el('span', {}, 'total'), el('b', {}, fmtNum(total))));
  a.tip.replaceChildren(head, ...lines);
  a.tip.hidden = false;
  const tw = a.tip.offsetWidth;
  a.tip.style.left = `${cx + 12 + tw > a.canvas._size.w ? cx - 12 - tw : cx + 12}px`;
  a.tip.style.top = `${box.t}px`;
}

// ---- the query box ----------------------------------------------------------

const QUERY_ROWS = 1000; // rows put into the table; more only slow the page down
const QUERY_BARS = 200;  // bars drawn at most; past that a bar chart is no longer readable
const QUERY_KEY = 'hydrant.query';
// For the demo's streams. revenue_by_minute gets its first rows a minute or two in:
// a window lands once it has closed and the stream's 60 s buffer has flushed.
const EXAMPLES = [
  ['events by name', 'SELECT event_name, count(*) AS events FROM my_event_staging GROUP BY event_name ORDER BY events DESC'],
  ['revenue by source', 'SELECT source, round(sum(amount), 2) AS revenue, count(*) AS orders, round(avg(amount), 2) AS avg_order\nFROM revenue GROUP BY source ORDER BY revenue DESC'],
  ['closed windows', 'SELECT window_start, round(sum(revenue), 2) AS revenue, sum(orders) AS orders\nFROM revenue_by_minute GROUP BY window_start ORDER BY window_start'],
];
// Arrow type names as the server spells them ("Int64", "Utf8View", "Timestamp(ns)", …).
const NUMERIC_TYPE = /^(U?Int|Float|Decimal)\d/;
const LABEL_TYPE = /^(Utf8|LargeUtf8|Utf8View|Timestamp|Date|Time)|^Dictionary\(.*Utf8/;
const ISO_TIME = /^\d{4}-\d\d-\d\d[T ]\d\d:\d\d/;

const query = { ctrl: null, chart: null, hover: null, dirty: false };

function setupQuery() {
  const sql = $('#query-sql');
  try { sql.value = localStorage.getItem(QUERY_KEY) || sql.value; } catch { /* no storage */ }
  sql.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); runQuery(); }
  });
  $('#query-run').addEventListener('click', () => runQuery());
  $('#query-examples').append(...EXAMPLES.map(([label, text]) => el('button', {
    type: 'button', class: 'example', title: text,
    onclick: () => { sql.value = text; runQuery(); },
  }, label)));
  const canvas = $('#query-chart');
  canvas.addEventListener('mousemove', (e) => { query.hover = e.offsetX; query.dirty = true; schedule(); });
  canvas.addEventListener('mouseleave', () => { query.hover = null; query.dirty = true; schedule(); });
  new ResizeObserver(() => { query.dirty = true; schedule(); }).observe(canvas);
}

// Streams come and go with the config; the hint names them as SQL can write them unquoted.
function showTables(names) {
  const text = names.length ? `every stream is a table: ${names.map((n) => n.replace(/[-.]/g, '_')).join(', ')}` : '';
  const hint = $('#query-tables');
  if (hint.textContent !== text) hint.textContent = text;
}

async function runQuery() {
  const sql = $('#query-sql').value;
  if (!sql.trim()) return;
  try { localStorage.setItem(QUERY_KEY, sql); } catch { /* no storage */ }
  // A newer run replaces one still in flight, so results never arrive out of order.
  query.ctrl?.abort();
  const ctrl = query.ctrl = new AbortController();
  setQueryStatus('running', 'running…');
  const t0 = performance.now();
  let body = null, error = '';
  try {
    const res = await fetch('/-/query?format=json', {
      method: 'POST', headers: { 'content-type': 'text/plain; charset=utf-8' }, body: sql, cache: 'no-store', signal: ctrl.signal,
    });
    // Errors are {"error": …}; anything else (a proxy's page, an older hydrant) falls back to the status.
    body = await res.json().catch(() => null);
    if (!res.ok || !Array.isArray(body?.rows)) error = body?.error || `HTTP ${res.status} ${res.statusText}`.trim();
  } catch (err) {
    error = `the query did not reach hydrant: ${err.message}`;
  }
  if (query.ctrl !== ctrl) return;
  query.ctrl = null;
  const ms = Math.round(performance.now() - t0);
  if (error) {
    showResult([], []);
    setQueryStatus('error', el('span', { class: 'query-error' }, error), el('span', { class: 'elapsed' }, ` · ${fmtInt(ms)} ms`));
  } else {
    const { columns = [], rows } = body;
    showResult(columns, rows);
    const n = rows.length;
    setQueryStatus('ok', `${n ? fmtInt(n) : 'no'} row${n === 1 ? '' : 's'} · ${fmtInt(ms)} ms`,
      n > QUERY_ROWS ? el('span', { class: 'warn' }, ` · the table shows the first ${fmtInt(QUERY_ROWS)}; add a LIMIT or aggregate`) : '');
  }
}

function setQueryStatus(state, ...parts) {
  const st = $('#query-status');
  st.dataset.state = state;
  st.replaceChildren(...parts);
}

function showResult(columns, rows) {
  const numeric = columns.map((c) => NUMERIC_TYPE.test(c.type));
  const head = el('tr', {}, ...columns.map((c, i) => el('th', { class: numeric[i] ? '' : 'l', title: c.type }, c.name)));
  const body = rows.slice(0, QUERY_ROWS).map((r) => el('tr', {}, ...r.map((v, i) => resultCell(v, numeric[i]))));
  $('#query-result').replaceChildren(...(columns.length ? [el('thead', {}, head), el('tbody', {}, ...body)] : []));
  query.chart = chartOf(columns, rows);
  query.hover = null;
  $('#query-chart').closest('.plot').hidden = !query.chart;
  $('.query-out').classList.toggle('with-chart', !!query.chart);
  query.dirty = true;
  schedule();
}

function resultCell(v, numeric) {
  if (v === null) return el('td', { class: numeric ? 'null' : 'l null' }, 'null');
  if (typeof v === 'number') {
    // 12 digits hide float noise (0.30000000000000004); the title keeps the value as it came.
    return el('td', { title: String(v) }, (Number.isInteger(v) ? intFmt : floatFmt).format(v));
  }
  const text = typeof v === 'object' ? JSON.stringify(v) : String(v);
  // Long cells are cut by the stylesheet; the title shows them whole.
  return el('td', text.length > 60 ? { class: 'l', title: text } : { class: 'l' }, text);
}

// A bar chart of the first numeric column by the first text or time column, in result order.
function chartOf(columns, rows) {
  const li = columns.findIndex((c) => LABEL_TYPE.test(c.type));
  const vi = columns.findIndex((c) => NUMERIC_TYPE.test(c.type));
  if (li < 0 || vi < 0) return null;
  const bars = rows.slice(0, QUERY_BARS).map((r) => ({
    full: r[li] === null ? 'null' : String(r[li]),
    y: typeof r[vi] === 'number' ? r[vi] : null, // null and NaN (sent as text) leave a gap
  }));
  if (!bars.some((b) => b.y !== null)) return null;
  const labels = timeLabels(bars.map((b) => b.full));
  bars.forEach((b, i) => { b.label = labels[i]; });
  return { bars, total: rows.length, what: `${columns[vi].name} by ${columns[li].name}`, value: columns[vi].name };
}

// ISO timestamps are too long for an axis: local clock times, with the day only when it varies.
function timeLabels(texts) {
  if (!texts.every((s) => ISO_TIME.test(s))) return texts;
  const ms = texts.map((s) => Date.parse(s.replace(' ', 'T')));
  if (ms.some(Number.isNaN)) return texts;
  const days = new Set(ms.map(dayLabel)).size > 1;
  const secs = ms.some((t) => t % 60000);
  return ms.map((t) => `${days ? `${dayLabel(t)} ` : ''}${secs ? hhmmss(t) : hhmm(t)}`);
}

function fitText(ctx, s, max) {
  if (ctx.measureText(s).width <= max) return s;
  s = s.slice(0, 40);
  while (s.length > 1 && ctx.measureText(`${s}…`).width > max) s = s.slice(0, -1);
  return `${s}…`;
}

function drawQueryChart(theme) {
  query.dirty = false;
  const m = query.chart;
  const canvas = $('#query-chart');
  const tip = $('.tip', canvas.parentElement);
  if (!m) { canvas.dataset.bars = '0'; tip.hidden = true; return; }
  const ctx = fitCanvas(canvas);
  if (!ctx) return;
  const { w, h } = canvas._size;
  ctx.clearRect(0, 0, w, h);
  ctx.font = theme.font;
  ctx.textBaseline = 'middle';

  const ys = m.bars.filter((b) => b.y !== null).map((b) => b.y);
  let lo = Math.min(0, ...ys), hi = Math.max(0, ...ys);
  if (hi === lo) hi = 1;
  const yStep = niceStep(hi - lo, Math.max(2, Math.floor((h - 40) / 40)));
  lo = Math.floor(lo / yStep) * yStep;
  hi = Math.ceil(hi / yStep) * yStep;
  const yTicks = [];
  for (let i = 0; lo + i * yStep <= hi + yStep / 2; i++) yTicks.push(+(lo + i * yStep).toPrecision(12));
  const box = { l: 14 + Math.max(...yTicks.map((v) => ctx.measureText(fmtNum(v)).width)), r: 8, t: 18, b: 22 };
  const pw = w - box.l - box.r, ph = h - box.t - box.b;
  const slot = pw / m.bars.length;
  const Y = (v) => box.t + (1 - (v - lo) / (hi - lo)) * ph;

  drawYGrid(ctx, theme, yTicks, Y, box, w);
  ctx.fillText(m.total > m.bars.length ? `${m.what} · first ${fmtInt(m.bars.length)} of ${fmtInt(m.total)} rows` : m.what, box.l, 7);

  // Labels are thinned to every k-th bar so they never overlap; the tooltip has them all.
  const widest = Math.min(120, Math.max(...m.bars.map((b) => ctx.measureText(b.label).width)));
  const every = Math.max(1, Math.ceil((widest + 10) / slot));
  const bw = Math.max(1, Math.min(slot * 0.72, 80));
  // Values go on the bars while they fit above them.
  const showValues = m.bars.every((b) => b.y === null || ctx.measureText(fmtNum(b.y)).width + 6 <= slot);
  const hover = query.hover == null ? -1 : Math.floor((query.hover - box.l) / slot);
  ctx.textAlign = 'center';
  let drawn = 0;
  m.bars.forEach((b, i) => {
    const cx = box.l + (i + 0.5) * slot;
    if (i % every === 0) {
      ctx.fillStyle = theme.muted;
      ctx.fillText(fitText(ctx, b.label, every * slot - 6), cx, h - 9);
    }
    if (b.y === null) return;
    const top = Math.min(Y(b.y), Y(0)), hgt = Math.max(1, Math.abs(Y(b.y) - Y(0)));
    ctx.globalAlpha = hover === i ? 1 : 0.85;
    ctx.fillStyle = theme.accent;
    ctx.fillRect(cx - bw / 2, top, bw, hgt);
    ctx.globalAlpha = 1;
    if (showValues) {
      ctx.fillStyle = theme.fg;
      ctx.fillText(fmtNum(b.y), cx, b.y >= 0 ? top - 7 : top + hgt + 7);
    }
    drawn++;
  });
  if (lo < 0) {
    ctx.strokeStyle = theme.muted;
    ctx.beginPath(); ctx.moveTo(box.l, Math.round(Y(0)) + 0.5); ctx.lineTo(w - box.r, Math.round(Y(0)) + 0.5); ctx.stroke();
  }
  canvas.dataset.bars = String(drawn);

  const b = m.bars[hover];
  if (!b) { tip.hidden = true; return; }
  tip.replaceChildren(el('div', { class: 'tip-head' }, b.full),
    el('div', {}, el('i', { style: `background:${theme.accent}` }), el('span', {}, m.value), el('b', {}, b.y === null ? 'null' : String(b.y))));
  tip.hidden = false;
  const cx = box.l + (hover + 0.5) * slot, tw = tip.offsetWidth;
  tip.style.left = `${cx + 12 + tw > w ? cx - 12 - tw : cx + 12}px`;
  tip.style.top = `${box.t}px`;
}

// ---- start ------------------------------------------------------------------

setupQuery();
loadAggregates();
connect();
setInterval(setStatus, 1000);
// Periodic snapshots carry what the feed does not (watermark, late and invalid counts).
setInterval(() => { if (feed.open) loadAggregates(false); }, RESYNC_MS);
window.addEventListener('resize', () => { for (const s of streams.values()) s.sparkDirty = true; schedule(); });
