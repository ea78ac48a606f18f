// Calls of the REST API (docs/api.md) from the pages, with the session's CSRF token
// and the configuration's ETag. The API validates; the pages show its errors.

const BASE = '/api/v1';
let session = null;
let etag = null;

export class ApiError extends Error {
  constructor(status, body) {
    super(body.detail || `HTTP ${status}`);
    this.status = status;
    this.errors = body.errors || [];
  }
}

export function currentSession() {
  return session;
}

export async function loadSession() {
  const response = await fetch(`${BASE}/session`, { credentials: 'same-origin' });
  if (!response.ok) {
    location.replace('/console/login.html');
    throw new ApiError(response.status, { detail: 'not logged in' });
  }
  session = await response.json();
  return session;
}

/** The ETag of the configuration this page last read (every change sends it). */
export function configVersion() {
  return etag;
}

/**
 * One API call: api('PATCH', '/actions/X', {body, query}). Resolves to the answer's
 * JSON (or text); rejects with ApiError carrying the API's errors and key paths.
 */
export async function api(method, path, { body, query, keepVersion, ifMatch } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && method !== 'HEAD') {
    headers[session.csrf_header] = session.csrf_token;
    const version = ifMatch || etag;
    if (version) headers['If-Match'] = `"${version}"`;
  }
  const url = new URL(BASE + path, location.origin);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== '') url.searchParams.set(key, value);
  }
  const response = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
  });
  if (response.status === 401) {
    location.replace('/console/login.html');
  }
  const tag = response.headers.get('ETag');
  if (tag && !keepVersion) etag = tag.replace(/^W\//, '').replace(/"/g, '');
  let data = null;
  if (response.status !== 204) {
    const type = response.headers.get('Content-Type') || '';
    data = type.includes('json') ? await response.json() : await response.text();
  }
  if (!response.ok) {
    throw new ApiError(response.status, typeof data === 'object' && data ? data : { detail: String(data) });
  }
  return data;
}

/** The part of a key path below an object: 'proxy_actions[2].general.x' -> 'general.x'. */
export function keyWithin(key, prefix) {
  const match = key.match(new RegExp(`^${prefix}\\[\\d+\\]\\.(.*)$`));
  return match ? match[1] : null;
}
