// The policy tester: which rule decides and what each leg does (`smtpgate rules test`).
import { api, ApiError } from '../api.js';
import { field, h, table } from '../dom.js';

export async function testerPage() {
  const [policies, actions] = await Promise.all([api('GET', '/policies'), api('GET', '/actions')]);
  const target = h('select', { name: 'target' },
    h('optgroup', { label: 'Policies' }, policies.map((p) => h('option', { value: `policy:${p.name}` }, p.name))),
    h('optgroup', { label: 'Proxy actions' }, actions.map((a) => h('option', { value: `action:${a.name}` }, a.name))));
  const sender = h('input', { name: 'sender', placeholder: 'alice@partner.example' });
  const recipients = h('input', { name: 'recipients', placeholder: 'bob@corp.example, carol@legacy.example' });
  const clientTls = h('input', { type: 'checkbox', name: 'client_tls', id: 'client-tls' });
  const answer = h('div', { class: 'answer', 'aria-live': 'polite' });
  async function run(event) {
    event.preventDefault();
    const [kind, name] = target.value.split(/:(.*)/s);
    try {
      const result = await api('POST', '/rules/test', {
        body: {
          sender: sender.value.trim(),
          recipients: recipients.value.split(/[\s,]+/).filter(Boolean),
          [kind]: name,
          client_tls: clientTls.checked,
        },
      });
      answer.replaceChildren(
        h('h2', {}, `Proxy action ${result.action}`),
        table(['Recipient', 'Rule', 'Sender encryption', 'Recipient encryption', 'Client leg', 'Upstream leg'],
          result.results.map((r) => h('tr', {},
            h('th', { scope: 'row' }, r.recipient),
            h('td', {}, r.rule), h('td', {}, r.sender_encryption), h('td', {}, r.recipient_encryption),
            h('td', {}, r.client_leg), h('td', {}, r.upstream_leg)))));
    } catch (error) {
      answer.replaceChildren(h('p', { class: 'error', role: 'alert' },
        error instanceof ApiError ? error.message : String(error)));
    }
  }
  return h('section', {},
    h('h1', {}, 'Policy tester'),
    h('p', {}, 'The same answer as `smtpgate rules test`: which rule matches and what each leg will do.'),
    h('form', { onsubmit: run },
      field('Policy or proxy action', target),
      field('Sender (address or domain; empty: the null sender)', sender),
      field('Recipients (addresses or domains, separated by commas)', recipients),
      h('p', { class: 'check' }, clientTls, h('label', { for: 'client-tls' }, 'The client uses TLS (STARTTLS)')),
      h('p', {}, h('button', { type: 'submit', class: 'primary' }, 'Test'))),
    answer);
}
