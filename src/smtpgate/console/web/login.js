// The login page: a password for a session cookie, then the console.
const form = document.getElementById('login');
const error = document.getElementById('login-error');

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  error.textContent = '';
  const body = { name: form.elements.name.value, password: form.elements.password.value };
  const response = await fetch('/api/v1/session', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    body: JSON.stringify(body),
    credentials: 'same-origin',
  });
  if (response.ok) {
    location.replace('/console/');
    return;
  }
  let detail = `HTTP ${response.status}`;
  try {
    detail = (await response.json()).detail || detail;
  } catch {
    // not JSON: keep the status
  }
  error.textContent = detail;
  form.elements.password.select();
});
