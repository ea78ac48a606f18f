// TLS profiles: the list (predefined ones read-only), Clone, and the editor of a clone.
import { api, ApiError } from '../api.js';
import { field, h, table } from '../dom.js';
import { go, notify, showError } from '../ui.js';
import { clearFieldErrors, showFieldErrors } from './errors.js';


export async function profilesPage() {
  const profiles = await api('GET', '/profiles');
  const rows = profiles.map((p) => h('tr', {},
    h('th', { scope: 'row' }, h('a', { href: `#/profiles/${encodeURIComponent(p.name)}` }, p.name),
      p.read_only ? h('span', { class: 'badge' }, 'predefined (locked)') : null),
    h('td', {}, p.versions), h('td', {}, p.pfs), h('td', {}, p.validation), h('td', {}, p.ca),
    h('td', {}, p.ocsp),
    h('td', {}, h('button', {
      type: 'button', 'aria-label': `Clone ${p.name}`, onclick: () => cloneProfile(p.name),
    }, 'Clone'))));
  return h('section', {},
    h('h1', {}, 'TLS profiles'),
    h('p', {}, 'The TLS settings a proxy action uses on both legs. Predefined profiles are read-only: clone one to change it.'),
    table(['Name', 'Versions', 'Forward secrecy', 'Certificate validation', 'CA', 'OCSP', ''], rows));
}

async function cloneProfile(name) {
  try {
    const made = await api('POST', `/profiles/${encodeURIComponent(name)}/clone`, { body: {} });
    go(`/profiles/${made.name}`, `Cloned ${name} as ${made.name}.`);
  } catch (error) {
    showError(error);
  }
}

export async function profileEditorPage(name) {
  const [profile, choices] = await Promise.all([
    api('GET', `/profiles/${encodeURIComponent(name)}`),
    api('GET', '/choices'),
  ]);
  const section = h('section', { class: 'editor' });
  const original = profile.settings;
  const draft = { ...original };
  const errors = h('ul', { class: 'form-errors error', 'aria-live': 'polite' });
  const controls = Object.entries(original).filter(([key]) => key !== 'name').map(([key, value]) => {
    let control;
    if (typeof value === 'boolean') {
      control = h('input', { type: 'checkbox', checked: value, onchange: (e) => { draft[key] = e.target.checked; } });
    } else if (choices[key]) {
      control = h('select', { value, onchange: (e) => { draft[key] = e.target.value; } },
        choices[key].map((v) => h('option', { value: v }, v)));
    } else {
      control = h('input', {
        value: value ?? '',
        onchange: (e) => { draft[key] = e.target.value === '' ? null : e.target.value; },
      });
    }
    control.disabled = profile.read_only;
    const wrapper = field(key.replaceAll('_', ' '), control);
    wrapper.dataset.key = key;
    return wrapper;
  });
  async function save() {
    const body = {};
    for (const [key, value] of Object.entries(draft)) {
      if (value !== original[key]) body[key] = value;
    }
    if (Object.keys(body).length === 0) {
      notify('Nothing to save.');
      return;
    }
    clearFieldErrors(section);
    errors.replaceChildren();
    try {
      const saved = await api('PATCH', `/profiles/${encodeURIComponent(name)}`, { body });
      Object.assign(original, saved.settings);
      notify(`Saved ${name} (version ${saved.version}).`);
    } catch (error) {
      if (error instanceof ApiError && error.status === 422) {
        for (const text of showFieldErrors(section, error, 'tls_profiles')) errors.append(h('li', {}, text));
        notify('Not saved: correct the marked fields.', 'error');
      } else {
        showError(error);
      }
    }
  }
  section.append(
    h('p', {}, h('a', { href: '#/profiles' }, '← TLS profiles')),
    h('h1', {}, `TLS profile ${name}`,
      profile.read_only ? h('span', { class: 'badge' }, 'predefined (locked)') : null),
    profile.read_only ? h('p', { class: 'hint' }, 'Predefined profiles cannot be changed: clone it to edit a copy.') : null,
    errors,
    h('form', { onsubmit: (e) => { e.preventDefault(); save(); } }, controls,
      h('p', { class: 'buttons' },
        profile.read_only ? null : h('button', { type: 'submit', class: 'primary' }, 'Save'),
        h('button', { type: 'button', onclick: () => cloneProfile(name) }, 'Clone'))));
  return section;
}
