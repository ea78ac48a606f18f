// API errors on the fields that caused them: each control carries data-key, the key
// path below its object (general.max_recipients, starttls.rules[2].recipient).
import { keyWithin } from '../api.js';

export function clearFieldErrors(root) {
  for (const element of root.querySelectorAll('[aria-invalid="true"]')) {
    element.removeAttribute('aria-invalid');
  }
  for (const element of root.querySelectorAll('.invalid')) element.classList.remove('invalid');
  for (const element of root.querySelectorAll('.cell-error')) element.textContent = '';
}

/**
 * Put each error of an ApiError on the element whose data-key matches its key path
 * (below `prefix`, e.g. 'proxy_actions'); returns the errors no element took.
 */
export function showFieldErrors(root, error, prefix) {
  const left = [];
  for (const { key, reason } of error.errors || []) {
    const inner = prefix ? keyWithin(key, prefix) : key;
    const target = inner === null ? null : findKey(root, inner);
    if (!target) {
      left.push(key ? `${key}: ${reason}` : reason);
      continue;
    }
    target.classList.add('invalid');
    const control = target.matches('input, select, textarea, button, [tabindex]')
      ? target : target.querySelector('input, select, textarea, [tabindex]');
    if (control) control.setAttribute('aria-invalid', 'true');
    const message = root.querySelector(`[data-error-for="${CSS.escape(target.dataset.key)}"]`)
      || target.querySelector('.cell-error');
    if (message) message.textContent = reason;
  }
  return left;
}

function findKey(root, key) {
  // The most precise element: the key itself, else its parent key (rules[2] for rules[2].x).
  let probe = key;
  while (probe) {
    const found = root.querySelector(`[data-key="${CSS.escape(probe)}"]`);
    if (found) return found;
    const cut = Math.max(probe.lastIndexOf('.'), probe.lastIndexOf('['));
    if (cut <= 0) return null;
    probe = probe.slice(0, cut);
  }
  return null;
}
