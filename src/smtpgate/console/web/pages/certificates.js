// Certificates: the server certificate, the proxy CA (download), SNI certificates with
// fingerprints and expiry; upload a server certificate and key.
import { api, ApiError } from '../api.js';
import { field, formatTime, h, table } from '../dom.js';
import { notify, showError } from '../ui.js';

function describe(what, cert) {
  if (cert.error) return h('tr', {}, h('th', { scope: 'row' }, what), h('td', { colspan: '5' }, cert.error));
  const days = Math.floor((new Date(cert.not_after) - Date.now()) / 86400000);
  return h('tr', {},
    h('th', { scope: 'row' }, what),
    h('td', {}, cert.subject, cert.names?.length ? h('div', { class: 'hint' }, cert.names.join(', ')) : null),
    h('td', {}, cert.issuer),
    h('td', { class: days < 30 ? 'warn' : '' }, formatTime(cert.not_after), h('div', { class: 'hint' }, `${days} days left`)),
    h('td', { class: 'fingerprint' }, cert.sha256.match(/../g).join(':')),
    h('td', {}, cert.file));
}

export async function certificatesPage() {
  const certs = await api('GET', '/certificates');
  const rows = [describe('Server', certs.server), describe('Proxy CA', certs.ca),
    ...certs.sni.map((entry) => describe(`SNI ${entry.names.join(', ')}`, entry))];
  const certificate = h('textarea', { rows: '6', name: 'certificate', placeholder: '-----BEGIN CERTIFICATE-----' });
  const key = h('textarea', { rows: '6', name: 'key', placeholder: '-----BEGIN PRIVATE KEY-----' });
  const certFile = h('input', { type: 'file', accept: '.pem,.crt,.cer', onchange: (e) => load(e, certificate) });
  const keyFile = h('input', { type: 'file', accept: '.pem,.key', onchange: (e) => load(e, key) });
  const error = h('p', { class: 'error', role: 'alert' });
  async function upload(event) {
    event.preventDefault();
    error.textContent = '';
    try {
      const saved = await api('PUT', '/certificates/server', {
        body: { certificate: certificate.value, key: key.value },
      });
      notify(`Uploaded: the server now presents ${saved.server.subject} (version ${saved.version}).`);
      const page = await certificatesPage();
      document.getElementById('main').replaceChildren(page);
    } catch (failure) {
      if (failure instanceof ApiError) error.textContent = failure.message;
      else showError(failure);
    }
  }
  return h('section', {},
    h('h1', {}, 'Certificates'),
    table(['', 'Subject and names', 'Issuer', 'Expires', 'SHA-256 fingerprint', 'File'], rows,
      'What the proxy presents, and the CA that issues its generated certificates'),
    h('p', {}, h('a', { href: '/api/v1/certificates/ca.pem', download: 'smtpgate-ca.pem', class: 'button' },
      'Download the proxy CA (PEM)'),
    ' Clients that talk TLS to the proxy trust it with this file.'),
    h('h2', {}, 'Upload a server certificate'),
    h('form', { onsubmit: upload },
      field('Certificate chain (PEM, the server certificate first)', certificate),
      field('…or a certificate file', certFile),
      field('Private key (PEM, unencrypted)', key),
      field('…or a key file', keyFile),
      error,
      h('p', {}, h('button', { type: 'submit', class: 'primary' }, 'Upload and use'))));
}

async function load(event, target) {
  const [file] = event.target.files;
  if (file) target.value = await file.text();
}
