// Proxy actions: the list, predefined ones locked, Clone.
import { api } from '../api.js';
import { h, table } from '../dom.js';
import { go, showError } from '../ui.js';

export async function actionsPage() {
  const actions = await api('GET', '/actions');
  const rows = actions.map((action) => h('tr', { dataset: { action: action.name } },
    h('th', { scope: 'row' },
      h('a', { href: `#/actions/${encodeURIComponent(action.name)}` }, action.name),
      action.read_only ? h('span', { class: 'badge', title: 'predefined: read-only, clone it to change it' },
        'predefined (locked)') : null),
    h('td', {}, action.direction),
    h('td', {}, action.starttls ? 'on' : 'off'),
    h('td', {}, action.tls_profile),
    h('td', {}, String(action.rules.length)),
    h('td', {}, action.used_by.join(', ') || '—'),
    h('td', {}, h('button', {
      type: 'button',
      'aria-label': `Clone ${action.name}`,
      onclick: () => cloneAction(action.name),
    }, 'Clone'))));
  return h('section', {},
    h('h1', {}, 'Proxy actions'),
    h('p', {}, 'What a policy does with the mail it accepts. Predefined actions are locked: clone one to change it.'),
    table(['Name', 'Direction', 'STARTTLS', 'TLS profile', 'Rules', 'Used by', ''], rows));
}

async function cloneAction(name) {
  try {
    const made = await api('POST', `/actions/${encodeURIComponent(name)}/clone`, { body: {} });
    go(`/actions/${made.name}`, `Cloned ${name} as ${made.name}.`);
  } catch (error) {
    showError(error);
  }
}
