// Shared by the chat page and the usage dashboard: the token, authenticated fetch, and an SSE reader for
// fetch() responses (EventSource cannot POST or send an Authorization header).
'use strict';

const TOKEN_KEY = 'chatgate.token';
const REASON_KEY = 'chatgate.signin-reason';

export function token() {
  return localStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
}

/** Forgets the token and goes back to sign-in, which says `reason`. */
export function signOut(reason) {
  setToken(null);
  if (reason) sessionStorage.setItem(REASON_KEY, reason);
  location.reload();
}

/** What a refused token's 401 says to the person signed in. */
function refusal(body) {
  const why = body.error === 'token_expired' || /expired/i.test(body.message || '')
    ? 'Your token has expired' : 'Your token was refused';
  return `${why}${body.message ? ` (${body.message})` : ''}. Sign in again.`;
}

/**
 * fetch() with the bearer token; throws an Error carrying the API's {error, message} on a non-2xx answer. A 401
 * to a signed-in page means the token is invalid or expired: the page goes back to sign-in, saying so (unless
 * `options.checking`, when the caller is trying a token out).
 */
export async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token()) headers.set('Authorization', `Bearer ${token()}`);
  if (options.json !== undefined) {
    headers.set('Content-Type', 'application/json');
    options = { ...options, body: JSON.stringify(options.json) };
  }
  const response = await fetch(path, { ...options, headers });
  if (!response.ok && response.status !== 304) {
    let body = {};
    try { body = await response.json(); } catch (_) { /* not JSON */ }
    const error = new Error(body.message || `${response.status} ${response.statusText}`);
    error.status = response.status;
    error.code = body.error;
    if (response.status === 401 && token() && !options.checking) signOut(refusal(body));
    throw error;
  }
  return response;
}

/** Reads a text/event-stream body, calling onEvent({id, event, data}) for each event (data parsed as JSON). */
export async function readSse(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, '');
      const event = { id: null, event: 'message', data: '' };
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'data') event.data += (event.data ? '\n' : '') + value;
        else if (field === 'event') event.event = value;
        else if (field === 'id') event.id = value;
      }
      if (!event.data) continue;
      try { event.data = JSON.parse(event.data); } catch (_) { /* leave as text */ }
      onEvent(event);
    }
  }
}

/** USD with enough digits for fractions of a cent. */
export function usd(value) {
  if (value === null || value === undefined) return '';
  return value >= 0.01 ? `$${value.toFixed(4)}` : `$${value.toFixed(6)}`;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'class') node.className = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

/** Hides `app` behind a sign-in form until a token is set; resolves then. */
export function signIn(app) {
  return new Promise((resolve) => {
    if (token()) return resolve();
    const status = el('p', { class: 'hint', id: 'signin-status' });
    const reason = sessionStorage.getItem(REASON_KEY);
    if (reason) {
      sessionStorage.removeItem(REASON_KEY);
      status.textContent = reason;
      status.className = 'error';
    }
    const tokenInput = el('input', { id: 'token-input', placeholder: 'paste a JWT (chatgate token --sub alice)', autocomplete: 'off' });
    const userInput = el('input', { id: 'dev-user', placeholder: 'user id', value: 'demo' });
    const form = el('div', { class: 'signin', id: 'signin' },
      el('h2', {}, 'Sign in'),
      el('div', { class: 'row' }, tokenInput,
        el('button', { id: 'use-token', onclick: useToken }, 'Use token')),
      el('div', { class: 'row' }, userInput,
        el('button', { id: 'dev-token', onclick: devToken }, 'Get a dev token')),
      status);
    app.hidden = true;
    app.before(form);
    function done() {
      if (!token()) return;
      form.remove();
      app.hidden = false;
      resolve();
    }
    /** Tries the pasted token before keeping it: a bad one is refused here, with the server's reason. */
    async function useToken() {
      const value = tokenInput.value.trim();
      if (!value) return;
      status.className = 'hint';
      status.textContent = 'Checking the token…';
      setToken(value);
      try {
        await api('/api/v1/models', { checking: true });
        done();
      } catch (error) {
        setToken(null);
        status.className = 'error';
        status.textContent = error.status === 401 ? refusal({ error: error.code, message: error.message }) : error.message;
      }
    }
    async function devToken() {
      try {
        const response = await api('/api/v1/dev/token', { method: 'POST', json: { user_id: userInput.value.trim() } });
        setToken((await response.json()).token);
        done();
      } catch (error) {
        status.textContent = error.status === 404
          ? 'Dev tokens are off (server.dev_tokens = false): paste a token instead.'
          : error.message;
      }
    }
  });
}
