// What every page shares: the banner above the page, and going to another page.
import { ApiError } from './api.js';
import { h } from './dom.js';

/** A message above the page: ok (green) or an error (red, with the API's text). */
export function notify(text, kind = 'ok') {
  document.getElementById('banner').replaceChildren(h('p', { class: `notice ${kind}` }, text));
}

export function clearNotice() {
  document.getElementById('banner').replaceChildren();
}

/** An error of an API call that no field of the page can show. */
export function showError(error) {
  const text = error instanceof ApiError ? `${error.status}: ${error.message}` : String(error);
  notify(text, 'error');
}

let pending = null;

/** Go to another page of the console; `message` is shown above it once it is there. */
export function go(path, message = null) {
  pending = message;
  location.hash = `#${path}`;
}

/** The message go() left for the page just shown, once. */
export function takeMessage() {
  const message = pending;
  pending = null;
  return message;
}
