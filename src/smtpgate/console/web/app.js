// The console's shell: the session, the navigation and the page router (#/actions, ...).
import { api, loadSession } from './api.js';
import { h } from './dom.js';
import { actionsPage } from './pages/actions.js';
import { actionEditorPage } from './pages/action_editor.js';
import { profilesPage, profileEditorPage } from './pages/profiles.js';
import { certificatesPage } from './pages/certificates.js';
import { testerPage } from './pages/tester.js';
import { versionsPage } from './pages/versions.js';
import { trafficPage } from './pages/traffic.js';
import { coveragePage } from './pages/coverage.js';
import { clearNotice, go, notify, showError, takeMessage } from './ui.js';

const ROUTES = [
  [/^\/actions$/, actionsPage],
  [/^\/actions\/(.+)$/, actionEditorPage],
  [/^\/profiles$/, profilesPage],
  [/^\/profiles\/(.+)$/, profileEditorPage],
  [/^\/certificates$/, certificatesPage],
  [/^\/tester$/, testerPage],
  [/^\/versions$/, versionsPage],
  [/^\/traffic$/, trafficPage],
  [/^\/coverage$/, coveragePage],
];

const main = document.getElementById('main');

async function route() {
  const path = decodeURIComponent(location.hash.replace(/^#/, '')) || '/actions';
  clearNotice();
  for (const link of document.querySelectorAll('nav a')) {
    const here = path === link.hash.slice(1) || path.startsWith(`${link.hash.slice(1)}/`);
    if (here) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  for (const [pattern, page] of ROUTES) {
    const match = path.match(pattern);
    if (match) {
      main.replaceChildren(h('p', { class: 'loading' }, 'Loading…'));
      try {
        const content = await page(...match.slice(1));
        main.replaceChildren(content);
        const message = takeMessage();
        if (message) notify(message);
        document.title = `${main.querySelector('h1')?.textContent || 'smtpgate'}: smtpgate console`;
      } catch (error) {
        main.replaceChildren(h('h1', {}, 'Could not load the page'));
        showError(error);
      }
      return;
    }
  }
  go('/actions');
}

async function start() {
  let session;
  try {
    session = await loadSession();
  } catch {
    return; // on the way to the login page
  }
  document.getElementById('who').textContent = `${session.name} (${session.role})`;
  document.getElementById('logout').addEventListener('click', async () => {
    try {
      await api('DELETE', '/session');
    } finally {
      location.replace('/console/login.html');
    }
  });
  window.addEventListener('hashchange', route);
  await route();
}

start();
