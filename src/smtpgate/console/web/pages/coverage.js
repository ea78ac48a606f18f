// Coverage: per sender and recipient domain, how much mail was encrypted on each leg,
// with which TLS versions and whether the upstream certificate verified; and the rules
// that would require TLS without refusing any message seen, one button each.
import { api, ApiError } from '../api.js';
import { field, h, table } from '../dom.js';
import { go, showError } from '../ui.js';
import { clearFieldErrors, showFieldErrors } from './errors.js';

const PERIODS = [['24h', 'the last 24 hours'], ['7d', 'the last 7 days'], ['30d', 'the last 30 days'], ['', 'everything kept']];

export async function coveragePage(period = '30d') {
  const section = h('section', { class: 'coverage' });
  const since = h('select', { name: 'since', value: period },
    PERIODS.map(([value, label]) => h('option', { value }, label)));
  const content = h('div', {});
  const errors = h('ul', { class: 'form-errors error', 'aria-live': 'polite' });
  const form = h('form', { class: 'filters', onsubmit: (e) => { e.preventDefault(); refresh(); } },
    keyed(field('Period', since), 'query.since'),
    h('p', {}, h('button', { type: 'submit', class: 'primary' }, 'Show')));

  async function refresh() {
    clearFieldErrors(section);
    errors.replaceChildren();
    try {
      const data = await api('GET', '/coverage', { query: { since: since.value }, keepVersion: true });
      content.replaceChildren(
        suggestions(data, refresh),
        domains('Sender domains (mail arriving from them)', data.senders, 'sender'),
        domains('Recipient domains (mail leaving for them)', data.recipients, 'recipient'));
    } catch (error) {
      if (error instanceof ApiError && error.status === 422) {
        for (const text of showFieldErrors(section, error)) errors.append(h('li', {}, text));
      } else {
        showError(error);
      }
    }
  }

  section.append(h('h1', {}, 'Encryption coverage'),
    h('p', {}, 'How much mail each domain sent and received encrypted, and which domains could be switched to '
      + 'Required on a leg without refusing any message seen in the period.'),
    errors, form, content);
  await refresh();
  return section;
}

function keyed(element, key) {
  element.dataset.key = key;
  return element;
}

function percent(share) {
  return `${Math.round(share * 1000) / 10}%`;
}

function versionsText(versions) {
  return Object.entries(versions).map(([v, n]) => `${v === 'none' ? 'clear' : v} ${n}`).join(', ');
}

function meter(share, label) {
  return h('span', { class: 'share' },
    h('meter', { min: '0', max: '1', value: String(share), 'aria-label': label }), ` ${percent(share)}`);
}

function domains(title, entries, kind) {
  const rows = entries.map((d) => {
    const name = d.domain || '<> (null sender)';
    return h('tr', {},
      h('th', { scope: 'row' }, name),
      h('td', {}, String(d.messages)),
      h('td', {}, meter(d.client.share, `${name}: share arriving encrypted`), h('div', { class: 'hint' }, versionsText(d.client.versions))),
      h('td', {}, meter(d.upstream.share, `${name}: share leaving encrypted`), h('div', { class: 'hint' }, versionsText(d.upstream.versions))),
      h('td', {}, `${d.upstream.verified} verified`, d.upstream.verify_failed ? h('span', { class: 'warn' }, `, ${d.upstream.verify_failed} failed`) : null));
  });
  return h('div', { class: `domains ${kind}` }, h('h2', {}, title),
    rows.length ? table(['Domain', 'Messages', 'Arrived encrypted', 'Left encrypted', 'Upstream certificate'], rows)
      : h('p', {}, 'No mail in this period.'));
}

function suggestions(data, refresh) {
  const items = data.suggestions.map((sug) => {
    const button = h('button', {
      type: 'button', class: 'primary',
      disabled: sug.action_read_only,
      'aria-label': `Create the rule requiring TLS ${sug.leg === 'sender' ? 'from' : 'to'} ${sug.domain} in ${sug.action}`,
      onclick: async () => {
        try {
          const made = await api('POST', `/actions/${encodeURIComponent(sug.action)}/rules`, {
            body: sug.rule, ifMatch: data.etag,
          });
          go(`/actions/${sug.action}`, `Created rule ${made.position} in ${sug.action}: `
            + `${sug.leg} encryption required for ${sug.domain}.`);
        } catch (error) {
          showError(error);
          if (error instanceof ApiError && error.status === 409) refresh();
        }
      },
    }, 'Create this rule');
    return h('li', { class: 'suggestion', dataset: { domain: sug.domain, leg: sug.leg } },
      h('strong', {}, `${sug.domain}: require TLS on the ${sug.leg === 'sender' ? 'client' : 'upstream'} leg`),
      h('div', {}, `${sug.reason}. Proxy action ${sug.action} (policies ${sug.policies.join(', ')}); `
        + `today decided by ${sug.decided_by === 'default' ? 'the default' : `rule ${sug.decided_by}`}.`),
      sug.action_read_only ? h('div', { class: 'hint' },
        `${sug.action} is predefined: clone it and point the policy at the clone first.`) : null,
      button);
  });
  return h('div', { class: 'suggestions' }, h('h2', {}, 'Domains that could require TLS'),
    items.length ? h('ul', {}, items) : h('p', {}, 'No suggestion: no domain used TLS for all its mail in this period.'));
}
