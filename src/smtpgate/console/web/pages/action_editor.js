// The proxy action editor: General, ESMTP and STARTTLS tabs over one draft, saved
// with one PATCH /actions/{name} (the rules as a whole list). Every committed cell is
// checked by the API with ?dry_run=true, and its errors land on the cell that caused them.
import { api, ApiError } from '../api.js';
import { append, field, h, uid } from '../dom.js';
import { go, notify, showError } from '../ui.js';
import { clearFieldErrors, showFieldErrors } from './errors.js';

// A new row: any sender (`*`), the domain typed, the encryptions the API says are the
// defaults (GET /choices: rule_defaults, with the drop-downs' values).
const NEW_RULE = { name: null, comment: null, enabled: true, sender: '*', recipient: '' };
const RULE_FIELDS = [...Object.keys(NEW_RULE), 'sender_encryption', 'recipient_encryption', 'tls_name_from'];
const LABEL = { sender: 'Sender domain', recipient: 'Recipient domain' };
// The drop-downs of a rule: what each is called, and how its values read.
const SELECT_LABEL = {
  sender_encryption: 'Sender encryption',
  recipient_encryption: 'Recipient encryption',
  tls_name_from: 'Certificate name',
};
const VALUE_TEXT = { next_hop: 'Next hop host', recipient_domain: 'Recipient domain' };

export async function actionEditorPage(name) {
  const [action, profiles, policies, choices] = await Promise.all([
    api('GET', `/actions/${encodeURIComponent(name)}`),
    api('GET', '/profiles'),
    api('GET', '/policies'),
    api('GET', '/choices'),
  ]);
  return new ActionEditor(action, profiles, policies, choices).element;
}

function ruleFields(rule) {
  return Object.fromEntries(RULE_FIELDS.map((key) => [key, rule[key] ?? null]));
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

class ActionEditor {
  constructor(action, profiles, policies, choices) {
    this.choices = choices;
    this.profiles = profiles;
    this.policies = policies;
    this.tab = 'starttls';
    this.errors = null;
    this.checks = 0;
    this.nextId = 1;
    this.element = h('section', { class: 'editor' });
    this.load(action);
  }

  load(action) {
    this.action = action;
    this.name = action.name;
    const { settings } = action;
    this.original = {
      direction: settings.direction,
      general: { ...settings.general },
      esmtp: { ...settings.esmtp },
      starttls: {
        enabled: settings.starttls.enabled,
        tls_profile: settings.starttls.tls_profile,
        require_tls_for_envelope: settings.starttls.require_tls_for_envelope,
      },
      rules: action.rules.map(ruleFields),
    };
    this.draft = structuredClone(this.original);
    this.draft.rules = this.draft.rules.map((rule) => ({ ...rule, id: this.nextId++ }));
    this.editing = null;
    this.errors = null;
    this.render();
  }

  // -- what changed: the PATCH body ------------------------------------------------------

  changes() {
    const body = {};
    const { draft, original } = this;
    if (draft.direction !== original.direction) body.direction = draft.direction;
    for (const section of ['general', 'esmtp', 'starttls']) {
      for (const [key, value] of Object.entries(draft[section])) {
        if (!same(value, original[section][key])) body[`${section}.${key}`] = value;
      }
    }
    const rules = draft.rules.map(ruleFields);
    if (!same(rules, original.rules)) body['starttls.rules'] = rules;
    return body;
  }

  /** Ask the API whether the draft would be accepted (nothing is saved). */
  async check() {
    const body = this.changes();
    const number = ++this.checks;
    if (this.action.read_only || Object.keys(body).length === 0) {
      this.errors = null;
      this.showErrors();
      return;
    }
    try {
      await api('PATCH', `/actions/${encodeURIComponent(this.name)}`, {
        body, query: { dry_run: 'true' }, keepVersion: true,
      });
      if (number === this.checks) this.errors = null;
    } catch (error) {
      if (number !== this.checks) return;
      if (!(error instanceof ApiError) || error.status !== 422) {
        showError(error);
        return;
      }
      this.errors = error;
    }
    if (number === this.checks) this.showErrors();
  }

  showErrors() {
    clearFieldErrors(this.element);
    const box = this.element.querySelector('.form-errors');
    box.replaceChildren();
    if (!this.errors) return;
    const left = showFieldErrors(this.element, this.errors, 'proxy_actions');
    for (const text of left) box.append(h('li', {}, text));
    const first = this.element.querySelector('.invalid');
    const panel = first?.closest('[role="tabpanel"]');
    if (panel && panel.hidden) this.select(panel.dataset.tab, false);
  }

  // -- saving -----------------------------------------------------------------------------

  async save() {
    const body = this.changes();
    if (Object.keys(body).length === 0) {
      notify('Nothing to save: no change since the last save.');
      return;
    }
    if (this.action.read_only) {
      this.offerClone(body);
      return;
    }
    await this.patch(this.name, body);
  }

  async patch(name, body) {
    try {
      const saved = await api('PATCH', `/actions/${encodeURIComponent(name)}`, { body });
      this.load(saved);
      notify(saved.applied
        ? `Saved ${name} (version ${saved.version}); the proxy applies it to new sessions.`
        : `Saved ${name} (version ${saved.version}), but the running proxy refused it: see its log.`,
      saved.applied ? 'ok' : 'error');
      history.replaceState(null, '', `#/actions/${encodeURIComponent(name)}`);
    } catch (error) {
      if (error instanceof ApiError && error.status === 422) {
        this.errors = error;
        this.showErrors();
        notify('Not saved: correct the marked fields.', 'error');
      } else {
        showError(error);
      }
    }
  }

  offerClone(body) {
    const input = h('input', { id: uid('clone-name'), placeholder: `${this.name}.1` });
    const dialog = h('dialog', { class: 'confirm', 'aria-labelledby': 'clone-title' },
      h('form', { method: 'dialog' },
        h('h2', { id: 'clone-title' }, `${this.name} is predefined`),
        h('p', {}, 'A predefined action cannot be changed. Save your changes as a clone of it instead? '
          + 'Policies keep using the action they name until you point them at the clone.'),
        field('Name of the clone (empty: the next free name)', input),
        h('p', { class: 'buttons' },
          h('button', { type: 'submit', value: 'clone' }, 'Save as a clone'),
          h('button', { type: 'submit', value: 'cancel' }, 'Cancel'))));
    dialog.addEventListener('close', async () => {
      dialog.remove();
      if (dialog.returnValue !== 'clone') return;
      try {
        const made = await api('POST', `/actions/${encodeURIComponent(this.name)}/clone`, {
          body: input.value.trim() ? { name: input.value.trim() } : {},
        });
        // From here on the editor edits the clone, with the draft as it was.
        this.action = { ...made, read_only: false };
        this.name = made.name;
        history.replaceState(null, '', `#/actions/${encodeURIComponent(made.name)}`);
        this.render();
        await this.patch(made.name, body);
      } catch (error) {
        showError(error);
      }
    });
    this.element.append(dialog);
    dialog.showModal();
  }

  // -- rendering --------------------------------------------------------------------------

  render() {
    const tabs = [['general', 'General'], ['esmtp', 'ESMTP'], ['starttls', 'STARTTLS']];
    const tablist = h('div', { role: 'tablist', 'aria-label': 'Settings', onkeydown: (e) => this.tabKeys(e) },
      tabs.map(([key, label]) => h('button', {
        type: 'button',
        role: 'tab',
        id: `tab-${key}`,
        'aria-controls': `panel-${key}`,
        'aria-selected': String(key === this.tab),
        tabindex: key === this.tab ? '0' : '-1',
        dataset: { tab: key },
        onclick: () => this.select(key, true),
      }, label)));
    const panels = [
      this.panel('general', this.generalPanel()),
      this.panel('esmtp', this.esmtpPanel()),
      this.panel('starttls', this.starttlsPanel()),
    ];
    const readOnly = this.action.read_only;
    this.element.replaceChildren();
    append(this.element, [
      h('p', {}, h('a', { href: '#/actions' }, '← Proxy actions')),
      h('h1', {}, `Proxy action ${this.name}`,
        readOnly ? h('span', { class: 'badge' }, 'predefined (locked)') : null),
      readOnly ? h('p', { class: 'hint' }, 'Predefined: your changes are saved as a clone of it.') : null,
      h('p', {}, `Used by: ${this.action.used_by.join(', ') || 'no policy'}`),
      h('ul', { class: 'form-errors error', 'aria-live': 'polite' }),
      tablist,
      panels,
      h('p', { class: 'buttons' },
        h('button', { type: 'button', class: 'primary', id: 'save', onclick: () => this.save() }, 'Save'),
        h('button', { type: 'button', onclick: () => this.load(this.action) }, 'Revert')),
    ]);
    if (this.errors) this.showErrors();
  }

  panel(key, content) {
    return h('div', {
      role: 'tabpanel',
      id: `panel-${key}`,
      'aria-labelledby': `tab-${key}`,
      dataset: { tab: key },
      hidden: key !== this.tab,
    }, content);
  }

  select(key, focus) {
    this.tab = key;
    for (const tab of this.element.querySelectorAll('[role="tab"]')) {
      const on = tab.dataset.tab === key;
      tab.setAttribute('aria-selected', String(on));
      tab.tabIndex = on ? 0 : -1;
      if (on && focus) tab.focus();
    }
    for (const panel of this.element.querySelectorAll('[role="tabpanel"]')) {
      panel.hidden = panel.dataset.tab !== key;
    }
  }

  tabKeys(event) {
    const order = ['general', 'esmtp', 'starttls'];
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (!step) return;
    event.preventDefault();
    this.select(order[(order.indexOf(this.tab) + step + order.length) % order.length], true);
  }

  // -- General and ESMTP ------------------------------------------------------------------

  setValue(section, key, value) {
    if (section) this.draft[section][key] = value;
    else this.draft[key] = value;
    this.check();
  }

  generalPanel() {
    const direction = h('select', {
      dataset: { key: 'direction' },
      value: this.draft.direction,
      onchange: (e) => this.setValue(null, 'direction', e.target.value),
    }, this.choices.direction.map((v) => h('option', { value: v }, v)));
    const fields = Object.entries(this.draft.general).map(([key, value]) => {
      const original = this.original.general[key];
      let control;
      if (typeof original === 'boolean') {
        control = h('input', {
          type: 'checkbox', checked: value,
          onchange: (e) => this.setValue('general', key, e.target.checked),
        });
      } else if (this.choices[key]) {
        control = h('select', {
          value, onchange: (e) => this.setValue('general', key, e.target.value),
        }, this.choices[key].map((v) => h('option', { value: v }, v)));
      } else {
        control = h('input', {
          value: String(value),
          onchange: (e) => this.setValue('general', key, typed(e.target.value, original)),
        });
      }
      control.dataset.key = `general.${key}`;
      return keyed(field(key.replaceAll('_', ' '), control), `general.${key}`);
    });
    return [this.policyChooser(), keyed(field('Direction', direction), 'direction'), fields];
  }

  /** Point a policy at this action (saved at once: PATCH /policies/{name}). */
  policyChooser() {
    const others = this.policies.filter((p) => p.proxy_action !== this.name);
    if (this.action.read_only || others.length === 0) return null;
    const select = h('select', { id: 'use-for-policy' },
      others.map((p) => h('option', { value: p.name }, `${p.name} (now ${p.proxy_action})`)));
    const use = async () => {
      const policy = select.value;
      try {
        await api('PATCH', `/policies/${encodeURIComponent(policy)}`, { body: { proxy_action: this.name } });
        this.policies = await api('GET', '/policies');
        this.action = { ...this.action, used_by: [...this.action.used_by, policy] };
        this.render();
        notify(`Policy ${policy} now uses ${this.name} for new sessions.`);
      } catch (error) {
        showError(error);
      }
    };
    return h('p', { class: 'field' }, h('label', { for: 'use-for-policy' }, 'Use this action for policy'), select,
      h('button', { type: 'button', onclick: use }, 'Use for this policy'));
  }

  esmtpPanel() {
    const enabled = h('input', {
      type: 'checkbox', checked: this.draft.esmtp.enabled, dataset: { key: 'esmtp.enabled' },
      onchange: (e) => this.setValue('esmtp', 'enabled', e.target.checked),
    });
    const keywords = h('input', {
      value: this.draft.esmtp.keywords.join(' '),
      dataset: { key: 'esmtp.keywords' },
      onchange: (e) => this.setValue('esmtp', 'keywords', e.target.value.split(/[\s,]+/).filter(Boolean)),
    });
    return [
      keyed(field('ESMTP enabled (off: the proxy answers HELO only)', enabled), 'esmtp.enabled'),
      keyed(field('ESMTP keywords offered to clients', keywords, 'separated by spaces'), 'esmtp.keywords'),
    ];
  }

  // -- STARTTLS ---------------------------------------------------------------------------

  starttlsPanel() {
    const { starttls } = this.draft;
    const enable = h('input', {
      type: 'checkbox', id: 'starttls-enabled', checked: starttls.enabled,
      dataset: { key: 'starttls.enabled' },
      onchange: (e) => this.setValue('starttls', 'enabled', e.target.checked),
    });
    const required = this.draft.rules.some((rule) => rule.sender_encryption === 'required');
    const envelope = h('input', {
      type: 'checkbox', id: 'require-envelope', checked: starttls.require_tls_for_envelope,
      disabled: !required, dataset: { key: 'starttls.require_tls_for_envelope' },
      'aria-describedby': 'require-envelope-hint',
      onchange: (e) => this.setValue('starttls', 'require_tls_for_envelope', e.target.checked),
    });
    return [
      h('p', { class: 'check', dataset: { key: 'starttls.enabled' } }, enable,
        h('label', { for: 'starttls-enabled' }, 'Enable STARTTLS for content inspection'),
        h('span', { class: 'cell-error', role: 'alert' })),
      this.profileChooser(),
      this.rulesTable(),
      h('p', { class: 'check', dataset: { key: 'starttls.require_tls_for_envelope' } }, envelope,
        h('label', { for: 'require-envelope' },
          'Use TLS for the sender, recipient and body when sender encryption is required'),
        h('span', { class: 'hint', id: 'require-envelope-hint' }, required
          ? ' (on: a client in clear is refused at MAIL FROM; off: at RCPT TO)'
          : ' (available when a rule has sender encryption Required)'),
        h('span', { class: 'cell-error', role: 'alert' })),
    ];
  }

  profileChooser() {
    const chosen = this.draft.starttls.tls_profile;
    const profile = this.profiles.find((p) => p.name === chosen);
    const select = h('select', {
      id: 'tls-profile', value: chosen, dataset: { key: 'starttls.tls_profile' },
      onchange: (e) => {
        this.setValue('starttls', 'tls_profile', e.target.value);
        this.render();
        this.element.querySelector('#tls-profile').focus();
      },
    }, this.profiles.map((p) => h('option', { value: p.name }, p.read_only ? `${p.name} (predefined)` : p.name)));
    const summary = profile ? h('dl', { class: 'summary', 'aria-label': `Summary of ${profile.name}` },
      [['Versions', profile.versions], ['Forward secrecy', profile.pfs],
        ['Certificate validation', profile.validation], ['CA', profile.ca], ['OCSP', profile.ocsp]]
        .map(([term, value]) => [h('dt', {}, term), h('dd', {}, value)])) : null;
    return h('div', { class: 'profile', dataset: { key: 'starttls.tls_profile' } },
      h('p', { class: 'field' }, h('label', { for: 'tls-profile' }, 'TLS profile'), select,
        h('button', {
          type: 'button',
          disabled: !profile || profile.read_only,
          title: profile && profile.read_only ? 'predefined profiles cannot be edited: clone it' : null,
          onclick: () => go(`/profiles/${chosen}`),
        }, 'Edit'),
        h('button', { type: 'button', onclick: () => this.cloneProfile(chosen) }, 'Clone'),
        h('span', { class: 'cell-error', role: 'alert' })),
      summary);
  }

  async cloneProfile(name) {
    try {
      const made = await api('POST', `/profiles/${encodeURIComponent(name)}/clone`, { body: {} });
      this.profiles = await api('GET', '/profiles');
      this.draft.starttls.tls_profile = made.name;
      this.render();
      notify(`Cloned the TLS profile ${name} as ${made.name}; the action uses it once you save.`);
      this.check();
    } catch (error) {
      showError(error);
    }
  }

  rulesTable() {
    const rows = this.draft.rules.map((rule, index) => this.ruleRow(rule, index));
    return h('div', { class: 'rules', dataset: { key: 'starttls.rules' } },
      h('h2', { id: 'rules-title' }, 'Encryption rules'),
      h('span', { class: 'cell-error', role: 'alert' }),
      h('p', { class: 'hint' }, 'The first enabled rule that matches the sender and recipient domains decides. '
        + `Mail no rule matches: sender encryption ${this.choices.rule_defaults.sender_encryption}, `
        + `recipient encryption ${this.choices.rule_defaults.recipient_encryption}. `
        + 'Double-click a domain (or press Enter on it) to change it; Enter keeps, Escape cancels.'),
      h('p', {}, h('button', { type: 'button', id: 'add-rule', onclick: () => this.addRule() }, 'Add')),
      h('table', { class: 'rules-table', 'aria-labelledby': 'rules-title' },
        h('thead', {}, h('tr', {}, ['#', 'Enabled', 'Sender domain', 'Recipient domain',
          'Sender encryption', 'Recipient encryption', 'Certificate name', 'Order', '']
          .map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, rows)));
  }

  ruleRow(rule, index) {
    const position = index + 1;
    const key = `starttls.rules[${position}]`;
    const last = index === this.draft.rules.length - 1;
    const select = (name, options) => h('td', { dataset: { key: `${key}.${name}` } },
      h('select', {
        'aria-label': `${SELECT_LABEL[name]} of rule ${position}`,
        value: rule[name], dataset: { focus: `${rule.id}-${name}` },
        onchange: (e) => this.changeRule(rule, name, e.target.value),
      }, options.map((v) => h('option', { value: v }, VALUE_TEXT[v] ?? v[0].toUpperCase() + v.slice(1)))),
      h('span', { class: 'cell-error', role: 'alert' }));
    return h('tr', { dataset: { key, rule: String(rule.id) }, class: rule.enabled ? '' : 'disabled' },
      h('th', { scope: 'row' }, String(position)),
      h('td', { dataset: { key: `${key}.enabled` } }, h('input', {
        type: 'checkbox', checked: rule.enabled, 'aria-label': `Enabled (rule ${position})`,
        dataset: { focus: `${rule.id}-enabled` },
        onchange: (e) => this.changeRule(rule, 'enabled', e.target.checked),
      }), h('span', { class: 'cell-error', role: 'alert' })),
      this.domainCell(rule, 'sender', key, position),
      this.domainCell(rule, 'recipient', key, position),
      select('sender_encryption', this.choices.sender_encryption),
      select('recipient_encryption', this.choices.recipient_encryption),
      select('tls_name_from', this.choices.tls_name_from),
      h('td', { class: 'order' },
        h('button', {
          type: 'button', disabled: index === 0, 'aria-label': `Move rule ${position} up`,
          dataset: { focus: `${rule.id}-up` }, onclick: () => this.move(index, -1),
        }, 'Up'),
        h('button', {
          type: 'button', disabled: last, 'aria-label': `Move rule ${position} down`,
          dataset: { focus: `${rule.id}-down` }, onclick: () => this.move(index, 1),
        }, 'Down')),
      h('td', {}, h('button', {
        type: 'button', 'aria-label': `Delete rule ${position}`, onclick: () => this.deleteRule(index),
      }, 'Delete')));
  }

  domainCell(rule, name, key, position) {
    const cellKey = `${key}.${name}`;
    const error = h('span', { class: 'cell-error', role: 'alert' });
    if (this.editing && this.editing.id === rule.id && this.editing.field === name) {
      const input = h('input', {
        value: rule[name], 'aria-label': `${LABEL[name]} of rule ${position}`,
        class: 'cell-input', dataset: { focus: `${rule.id}-${name}-input` },
        onkeydown: (e) => {
          if (e.key === 'Enter') { e.preventDefault(); this.commitCell(e.target.value); }
          if (e.key === 'Escape') { e.preventDefault(); this.cancelCell(); }
        },
        onblur: (e) => {
          if (this.editing && this.editing.id === rule.id && this.editing.field === name) {
            this.commitCell(e.target.value, false);
          }
        },
      });
      return h('td', { dataset: { key: cellKey }, class: 'editing' }, input, error);
    }
    const shown = rule[name] === '' ? '(empty)' : rule[name];
    return h('td', { dataset: { key: cellKey } },
      h('span', {
        class: 'cell-value', tabindex: '0', role: 'button',
        'aria-label': `${LABEL[name]} of rule ${position}: ${shown}; press Enter to change`,
        dataset: { focus: `${rule.id}-${name}` },
        ondblclick: () => this.editCell(rule, name),
        onkeydown: (e) => {
          if (e.key === 'Enter' || e.key === 'F2') { e.preventDefault(); this.editCell(rule, name); }
        },
      }, shown), error);
  }

  refreshRules(focus) {
    const panel = this.element.querySelector('#panel-starttls');
    panel.replaceChildren();
    append(panel, this.starttlsPanel());
    if (this.errors) this.showErrors();
    if (focus) panel.querySelector(`[data-focus="${focus}"]`)?.focus();
  }

  editCell(rule, name, fresh = false) {
    this.editing = { id: rule.id, field: name, before: rule[name], fresh };
    this.refreshRules(`${rule.id}-${name}-input`);
    const input = this.element.querySelector(`[data-focus="${rule.id}-${name}-input"]`);
    input?.select();
  }

  commitCell(value, refocus = true) {
    const { id, field: name } = this.editing;
    const rule = this.draft.rules.find((r) => r.id === id);
    this.editing = null;
    rule[name] = value.trim();
    this.refreshRules(refocus ? `${id}-${name}` : null);
    this.check();
  }

  cancelCell() {
    const { id, field: name, fresh } = this.editing;
    this.editing = null;
    if (fresh) this.draft.rules = this.draft.rules.filter((r) => r.id !== id);
    this.refreshRules(fresh ? 'add' : `${id}-${name}`);
    if (fresh) this.element.querySelector('#add-rule').focus();
  }

  addRule() {
    const rule = { ...NEW_RULE, ...this.choices.rule_defaults, id: this.nextId++ };
    this.draft.rules.push(rule);
    this.editCell(rule, 'recipient', true);
  }

  changeRule(rule, name, value) {
    rule[name] = value;
    this.refreshRules(`${rule.id}-${name}`);
    this.check();
  }

  move(index, step) {
    const rules = this.draft.rules;
    const [rule] = rules.splice(index, 1);
    rules.splice(index + step, 0, rule);
    const edge = index + step === 0 || index + step === rules.length - 1;
    this.refreshRules(`${rule.id}-${edge ? (step < 0 ? 'down' : 'up') : (step < 0 ? 'up' : 'down')}`);
    this.check();
  }

  deleteRule(index) {
    this.draft.rules.splice(index, 1);
    this.refreshRules(null);
    this.element.querySelector('#add-rule').focus();
    this.check();
  }
}

/** Attach data-key to a field's paragraph, so errors of that key land there. */
function keyed(element, key) {
  element.dataset.key = key;
  return element;
}

/** A text field's value in the type of the value it had (the API judges it). */
function typed(text, original) {
  if (typeof original === 'number' && /^-?\d+(\.\d+)?$/.test(text.trim())) return Number(text);
  return text;
}
