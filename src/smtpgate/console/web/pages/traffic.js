// Traffic: the transaction records, filtered by domain, outcome and time, and a chart of
// the TLS versions per leg over time (drawn here as SVG: no chart library).
import { api, ApiError } from '../api.js';
import { field, formatTime, h, s, table } from '../dom.js';
import { showError } from '../ui.js';
import { clearFieldErrors, showFieldErrors } from './errors.js';

const OUTCOMES = ['delivered', 'tempfail', 'rejected', 'aborted'];

export async function trafficPage() {
  const section = h('section', { class: 'traffic' });
  const domain = h('input', { name: 'domain', placeholder: 'partner.example' });
  const outcome = h('select', { name: 'outcome' }, h('option', { value: '' }, 'any'),
    OUTCOMES.map((o) => h('option', { value: o }, o)));
  const since = h('input', { name: 'since', value: '24h', placeholder: '24h, 7d or 2026-11-29T15:00:00Z' });
  const until = h('input', { name: 'until', placeholder: 'now' });
  const chart = h('div', { class: 'chart-area' });
  const records = h('div', { class: 'records' });
  const errors = h('ul', { class: 'form-errors error', 'aria-live': 'polite' });
  const form = h('form', { class: 'filters', onsubmit: (e) => { e.preventDefault(); refresh(); } },
    keyed(field('Domain (sender or recipient)', domain), 'query.domain'),
    keyed(field('Outcome', outcome), 'query.outcome'),
    keyed(field('Since', since, 'a duration back from now, or a time with its offset'), 'query.since'),
    keyed(field('Until', until), 'query.until'),
    h('p', {}, h('button', { type: 'submit', class: 'primary' }, 'Show')));

  async function refresh() {
    clearFieldErrors(section);
    errors.replaceChildren();
    const filters = {
      domain: domain.value.trim(), outcome: outcome.value, since: since.value.trim(), until: until.value.trim(),
    };
    try {
      const [page, versions] = await Promise.all([
        api('GET', '/traffic', { query: filters }),
        api('GET', '/traffic/tls-versions', {
          query: { since: filters.since, until: filters.until, bucket: bucketFor(filters.since) },
        }),
      ]);
      chart.replaceChildren(...versionCharts(versions));
      records.replaceChildren(recordTable(page.records));
      addOlder(page.next_before, filters);
    } catch (error) {
      if (error instanceof ApiError && error.status === 422) {
        for (const text of showFieldErrors(section, error)) errors.append(h('li', {}, text));
      } else {
        showError(error);
      }
    }
  }

  function addOlder(before, filters) {
    if (!before) return;
    const more = h('button', {
      type: 'button',
      onclick: async () => {
        try {
          const page = await api('GET', '/traffic', { query: { ...filters, before } });
          records.querySelector('tbody').append(...page.records.map(recordRow));
          more.remove();
          addOlder(page.next_before, filters);
        } catch (error) {
          showError(error);
        }
      },
    }, 'Older records');
    records.append(h('p', {}, more));
  }

  section.append(h('h1', {}, 'Traffic'), errors, form, chart, records);
  await refresh();
  return section;
}

function keyed(element, key) {
  element.dataset.key = key;
  return element;
}

/** Buckets of a sensible width for the period asked: about a day in hours, longer in days. */
function bucketFor(since) {
  const match = since.match(/^(\d+)([smhd])$/);
  if (!match) return '1h';
  const seconds = Number(match[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[match[2]];
  if (seconds <= 2 * 3600) return '5m';
  if (seconds <= 2 * 86400) return '1h';
  return '1d';
}

/** The next hop that took the transaction: host:port, with its address and MX preference
 * when DNS gave them, and the name its certificate was checked against on hover. */
function nextHop(r) {
  const details = [];
  if (r.next_hop_address && !r.upstream.startsWith(r.next_hop_address)) details.push(r.next_hop_address);
  if (r.mx_preference !== null && r.mx_preference !== undefined) details.push(`MX ${r.mx_preference}`);
  return h('span', { title: r.tls_name ? `TLS name ${r.tls_name}` : undefined }, r.upstream || '',
    details.length ? h('span', { class: 'hint' }, ` ${details.join(', ')}`) : null);
}

function recordRow(r) {
  const tls = (version, cipher) => (version && version !== 'none'
    ? h('span', { title: cipher || '' }, version, h('span', { class: 'hint' }, ` ${cipher || ''}`))
    : h('span', { class: 'clear' }, 'none'));
  return h('tr', { class: `outcome-${r.outcome}` },
    h('td', {}, formatTime(r.time)),
    h('td', {}, r.client),
    h('td', {}, r.sender_domain || '<>'),
    h('td', {}, r.recipient_domains.join(', ')),
    h('td', {}, r.rule),
    h('td', {}, tls(r.client_tls, r.client_cipher)),
    h('td', {}, nextHop(r)),
    h('td', {}, tls(r.upstream_tls, r.upstream_cipher)),
    h('td', {}, r.upstream_verify || ''),
    h('td', {}, r.outcome),
    h('td', {}, r.upstream_reply || String(r.reply ?? '')));
}

function recordTable(rows) {
  if (!rows.length) return h('p', {}, 'No transaction in this period matches.');
  return table(['Time', 'Client', 'Sender domain', 'Recipient domains', 'Rule', 'Client TLS', 'Next hop',
    'Upstream TLS', 'Verification', 'Outcome', 'Reply'], rows.map(recordRow), 'Transactions, newest first');
}

/** One stacked bar chart per leg: transactions per bucket, one colour per TLS version. */
function versionCharts(data) {
  const versions = data.versions;
  const seriesClass = (v) => (v === 'none' ? 'series-none' : `series-${versions.indexOf(v) % 6}`);
  const legend = h('ul', { class: 'legend', 'aria-label': 'TLS versions' },
    versions.map((v) => h('li', {}, s('svg', { width: 12, height: 12, 'aria-hidden': 'true' },
      s('rect', { width: 12, height: 12, class: seriesClass(v) })), ` ${v === 'none' ? 'in clear' : v}`)));
  const charts = [['client', 'Client leg (mail arriving)'], ['upstream', 'Upstream leg (mail leaving)']]
    .map(([leg, title]) => {
      const totals = data.buckets.map((b) => Object.values(b[leg]).reduce((a, n) => a + n, 0));
      const most = Math.max(1, ...totals);
      const width = 600;
      const height = 160;
      const slot = width / Math.max(1, data.buckets.length);
      const bars = data.buckets.flatMap((bucket, i) => {
        let y = height;
        return versions.filter((v) => bucket[leg][v]).map((v) => {
          const size = (bucket[leg][v] / most) * (height - 10);
          y -= size;
          return s('rect', {
            x: (i * slot + 1).toFixed(1), y: y.toFixed(1), width: Math.max(1, slot - 2).toFixed(1),
            height: size.toFixed(1), class: seriesClass(v),
          }, s('title', {}, `${formatTime(bucket.start)}: ${bucket[leg][v]} ${v}`));
        });
      });
      const summary = versions.map((v) => `${v}: ${data.buckets.reduce((a, b) => a + (b[leg][v] || 0), 0)}`).join(', ');
      return h('figure', { class: 'chart' },
        s('svg', { viewBox: `0 0 ${width} ${height + 20}`, role: 'img', 'aria-label': `${title}: ${summary || 'no mail'}` },
          s('line', { x1: 0, y1: height, x2: width, y2: height, class: 'axis' }),
          s('text', { x: 0, y: height + 16, class: 'tick' }, formatTime(data.since)),
          s('text', { x: width, y: height + 16, class: 'tick end' }, formatTime(data.until)),
          s('text', { x: 2, y: 10, class: 'tick' }, `${most} per ${data.bucket / 60} min`),
          bars),
        h('figcaption', {}, title));
    });
  return [h('h2', {}, 'TLS versions per leg'), legend, h('div', { class: 'charts' }, charts)];
}
