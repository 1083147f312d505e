// The usage dashboard: totals, tokens and cost per day, usage per model. Polls every few seconds with
// If-None-Match, so an unchanged answer is a bodiless 304 and nothing is redrawn.
import { api, el, signIn, usd } from './common.js';

const $ = (id) => document.getElementById(id);
const POLL_MS = Number(new URLSearchParams(location.search).get('poll_ms')) || 5000;
const etags = new Map();
const cache = new Map();
const stats = { polls: 0, unchanged: 0 };

/** GET with the last ETag of `path`; `{changed, body}` where `body` is the last full answer. */
async function poll(path) {
  const headers = {};
  if (etags.has(path)) headers['If-None-Match'] = etags.get(path);
  const response = await api(path, { headers, cache: 'no-store' });
  stats.polls += 1;
  if (response.status === 304) {
    stats.unchanged += 1;
    return { changed: false, body: cache.get(path) };
  }
  const body = await response.json();
  etags.set(path, response.headers.get('ETag'));
  cache.set(path, body);
  return { changed: true, body };
}

function card(label, value, id) {
  return el('div', { class: 'card' }, label, el('b', { id }, String(value)));
}

function totals(summary, usage) {
  $('totals').replaceChildren(
    card('Conversations', summary.total_conversations, 'total-conversations'),
    card('Messages', summary.total_messages, 'total-messages'),
    card('Tokens', usage.totals.total_tokens ?? usage.totals.prompt_tokens + usage.totals.completion_tokens, 'total-tokens'),
    card('Cost', usd(usage.totals.cost_usd ?? 0), 'total-cost'));
}

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

/** The chart's key: a swatch and a name per series. */
function legend(series) {
  return el('div', { class: 'legend' }, ...series.map((s) => el('span', { 'data-series': s.key }, el('i', { class: s.class }), s.label ?? s.key)));
}

/**
 * A bar chart of `series` (each `{key, label, class, value(bucket)}`) stacked per bucket, with its legend; when
 * every value is 0, says `empty` instead of drawing flat bars.
 */
function barChart(container, buckets, series, format, label = (key) => key.slice(5), empty = 'Nothing yet.') {
  const total = buckets.reduce((sum, b) => sum + series.reduce((s, x) => s + x.value(b), 0), 0);
  if (!total) {
    container.replaceChildren(el('p', { class: 'hint empty' }, empty), legend(series));
    return;
  }
  const width = 900;
  const height = 180;
  const pad = 24;
  const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img' });
  const max = Math.max(...buckets.map((b) => series.reduce((sum, s) => sum + s.value(b), 0))) || 1;
  const every = Math.ceil(buckets.length / 10);
  const slot = (width - pad) / Math.max(1, buckets.length);
  buckets.forEach((bucket, i) => {
    let y = height - pad;
    for (const s of series) {
      const h = ((height - 2 * pad) * s.value(bucket)) / max;
      y -= h;
      const bar = svg('rect', { x: pad + i * slot + slot * 0.15, y, width: slot * 0.7, height: h, class: s.class });
      const title = svg('title', {});
      title.textContent = `${bucket.key} ${s.key}: ${format(s.value(bucket))}`;
      bar.append(title);
      chart.append(bar);
    }
    if ((buckets.length - 1 - i) % every === 0) {
      const text = svg('text', { x: pad + i * slot + slot / 2, y: height - 6, 'text-anchor': 'middle' });
      text.textContent = label(bucket.key);
      chart.append(text);
    }
  });
  const top = svg('text', { x: 2, y: 12 });
  top.textContent = format(max);
  chart.append(top);
  container.replaceChildren(chart, legend(series));
}

function byModel(buckets) {
  $('by-model').tBodies[0].replaceChildren(...buckets.map((b) => el('tr', { 'data-model': b.key },
    el('td', {}, b.key), el('td', {}, String(b.requests)), el('td', {}, String(b.prompt_tokens)),
    el('td', {}, String(b.completion_tokens)), el('td', {}, usd(b.cost_usd)))));
}

async function refresh() {
  try {
    const [summary, days, models] = await Promise.all([
      poll('/api/v1/usage/summary'),
      poll('/api/v1/usage?group_by=day'),
      poll('/api/v1/usage?group_by=model'),
    ]);
    if (summary.changed || days.changed) totals(summary.body, days.body);
    if (days.changed) {
      barChart($('tokens-chart'), days.body.buckets, [
        { key: 'prompt', label: 'prompt tokens', class: 'prompt', value: (b) => b.prompt_tokens },
        { key: 'completion', label: 'completion tokens', class: 'completion', value: (b) => b.completion_tokens },
      ], (v) => `${Math.round(v)} tokens`, undefined, 'No tokens yet: send a message.');
      barChart($('cost-chart'), days.body.buckets, [
        { key: 'cost', label: 'cost (USD)', class: 'cost', value: (b) => b.cost_usd ?? 0 },
      ], usd, undefined, 'No cost yet: the models used so far have no prices (the built-in mock is free).');
    }
    if (models.changed) {
      byModel(models.body.buckets);
      barChart($('model-chart'), models.body.buckets, [
        { key: 'prompt', label: 'prompt tokens', class: 'prompt', value: (b) => b.prompt_tokens },
        { key: 'completion', label: 'completion tokens', class: 'completion', value: (b) => b.completion_tokens },
      ], (v) => `${Math.round(v)} tokens`, (key) => key, 'No tokens yet: send a message.');
    }
    const changed = summary.changed || days.changed || models.changed;
    $('poll-status').textContent = `${changed ? 'updated' : 'unchanged (304)'} at ${new Date().toLocaleTimeString()}`
      + ` · ${stats.polls} requests, ${stats.unchanged} answered 304 · polling every ${POLL_MS / 1000} s`;
    document.body.dataset.polls = String(stats.polls);
    document.body.dataset.unchanged = String(stats.unchanged);
  } catch (error) {
    $('poll-status').textContent = error.message;
  }
}

async function main() {
  await signIn($('app'));
  await refresh();
  document.body.dataset.ready = 'true';
  setInterval(refresh, POLL_MS);
}

main();
