// Versions: every save of the configuration, its diff, and rollback.
import { api } from '../api.js';
import { formatTime, h, table } from '../dom.js';
import { notify, showError } from '../ui.js';

export async function versionsPage() {
  const versions = await api('GET', '/versions');
  const diff = h('div', { class: 'diff-view', 'aria-live': 'polite' });
  async function show(version, againstCurrent) {
    try {
      const answer = await api('GET', `/versions/${version.id}/diff`, {
        query: { against_current: againstCurrent ? 'true' : '' },
      });
      diff.replaceChildren(
        h('h2', {}, againstCurrent ? `From version ${version.id} to the file now` : `What version ${version.id} changed`),
        h('pre', { class: 'diff', tabindex: '0', 'aria-label': 'Unified diff' },
          (answer.diff || '(no difference)\n').split('\n').map((line) => h('span', {
            class: line.startsWith('+') ? 'add' : line.startsWith('-') ? 'del' : line.startsWith('@@') ? 'hunk' : '',
          }, `${line}\n`))));
      diff.querySelector('pre').focus();
    } catch (error) {
      showError(error);
    }
  }
  async function rollback(version) {
    try {
      const answer = await api('POST', `/versions/${version.id}/rollback`);
      const page = await versionsPage();
      document.getElementById('main').replaceChildren(page);
      notify(`Rolled back to version ${version.id}: saved as version ${answer.version}`
        + `${answer.applied ? ' and applied' : ', not applied: see the log'}.`, answer.applied ? 'ok' : 'error');
    } catch (error) {
      showError(error);
    }
  }
  const rows = [...versions].reverse().map((v, index) => h('tr', { dataset: { version: String(v.id) } },
    h('th', { scope: 'row' }, String(v.id), index === 0 ? h('span', { class: 'badge' }, 'current') : null),
    h('td', {}, formatTime(v.saved_at)), h('td', {}, v.user), h('td', {}, v.summary),
    h('td', {},
      h('button', { type: 'button', 'aria-label': `Diff of version ${v.id}`, onclick: () => show(v, false) }, 'Diff'),
      index === 0 ? null : h('button', {
        type: 'button', 'aria-label': `Diff from version ${v.id} to now`, onclick: () => show(v, true),
      }, 'Diff to now'),
      index === 0 ? null : h('button', {
        type: 'button', 'aria-label': `Roll back to version ${v.id}`, onclick: () => rollback(v),
      }, 'Roll back'))));
  return h('section', {},
    h('h1', {}, 'Versions'),
    h('p', {}, 'Every save of the configuration, newest first. A rollback is itself a new version.'),
    table(['Version', 'Saved', 'By', 'Summary', ''], rows),
    diff);
}
