// Building the pages: elements from plain calls (no templates, no inline HTML strings).

const DEFERRED = new Set(['value', 'checked', 'selected', 'disabled', 'hidden']);

/** An element: h('button', {type: 'button', onclick: f}, 'Save'). */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  const later = [];
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key.startsWith('on')) element.addEventListener(key.slice(2), value);
    else if (key === 'class') element.className = value;
    else if (key === 'dataset') Object.assign(element.dataset, value);
    else if (DEFERRED.has(key)) later.push([key, value]);
    else if (value === true) element.setAttribute(key, '');
    else if (value !== false) element.setAttribute(key, String(value));
  }
  append(element, children);
  for (const [key, value] of later) element[key] = value;
  return element;
}

export function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
}

const SVG = 'http://www.w3.org/2000/svg';

/** An SVG element (charts are drawn with these: no chart library). */
export function s(tag, attrs = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) element.setAttribute(key, String(value));
  append(element, children);
  return element;
}

let unique = 0;
export function uid(prefix) {
  unique += 1;
  return `${prefix}-${unique}`;
}

/** A labelled form field: label + control (+ the place its error goes). */
export function field(label, control, hint) {
  if (!control.id) control.id = uid('f');
  const error = h('span', { class: 'cell-error', id: `${control.id}-error`, role: 'alert' });
  return h('p', { class: 'field' },
    h('label', { for: control.id }, label), control,
    hint ? h('span', { class: 'hint' }, hint) : null, error);
}

export function table(headings, rows, caption) {
  return h('table', {},
    caption ? h('caption', {}, caption) : null,
    h('thead', {}, h('tr', {}, headings.map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, rows));
}

export function formatTime(iso) {
  if (!iso) return '';
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}
