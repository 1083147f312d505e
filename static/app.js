// The chat page: personas, conversations, streaming replies over SSE, stop, and re-attaching to a reply that
// was streaming when the page was reloaded (the generation runs on the server; its id is kept in localStorage).
import { api, el, readSse, setToken, signIn, token, usd } from './common.js';

const PENDING_KEY = 'chatgate.pending';
const $ = (id) => document.getElementById(id);
const state = { conversation: null, generation: null, personas: [] };

function status(text) { $('status').textContent = text || ''; }

function meta(message) {
  const parts = [];
  if (message.tokens_used !== null && message.tokens_used !== undefined) parts.push(`${message.tokens_used} tokens`);
  if (message.cost_usd !== null && message.cost_usd !== undefined) parts.push(usd(message.cost_usd));
  if (message.model) parts.push(message.model);
  if (message.ttft_ms !== null && message.ttft_ms !== undefined) parts.push(`TTFT ${message.ttft_ms} ms`);
  if (message.status && message.status !== 'complete') parts.push(message.status);
  if (message.error) parts.push(message.error);
  return parts.join(' · ');
}

/** The bubble of a message, created at the end of the list when new. */
function bubble(message) {
  let node = document.querySelector(`.msg[data-id="${message.id}"]`);
  if (!node) {
    node = el('div', { class: `msg ${message.role}`, 'data-id': message.id },
      el('span', { class: 'text' }), el('span', { class: 'meta' }));
    $('messages').append(node);
  }
  node.querySelector('.text').textContent = message.content ?? '';
  node.querySelector('.meta').textContent = message.role === 'assistant' ? meta(message) : '';
  node.classList.toggle('streaming', message.status === 'streaming');
  node.classList.toggle('failed', message.status === 'failed');
  node.dataset.status = message.status || '';
  $('messages').scrollTop = $('messages').scrollHeight;
  return node;
}

async function loadPersonas() {
  const { personas } = await (await api('/api/v1/personas?limit=100')).json();
  state.personas = personas;
  $('persona').replaceChildren(...personas.map((p) =>
    el('option', { value: p.id }, `${p.display_name} (${p.relationship})`)));
  try {
    const { models } = await (await api('/api/v1/models')).json();
    $('model').append(...models.map((m) => el('option', { value: m.id }, m.id)));
  } catch (_) { /* the persona's model is used */ }
}

async function loadConversations() {
  const { conversations } = await (await api('/api/v1/conversations?limit=50')).json();
  $('conversations').replaceChildren(...conversations.map((c) => {
    const persona = state.personas.find((p) => p.id === c.persona_id);
    const label = c.title || c.last_message?.content || `New chat with ${persona?.display_name ?? 'persona'}`;
    return el('li', {
      'data-id': c.id,
      class: c.id === state.conversation ? 'active' : '',
      title: label,
      onclick: () => openConversation(c.id),
    }, label);
  }));
}

async function openConversation(id) {
  state.conversation = id;
  localStorage.setItem('chatgate.conversation', id);
  document.querySelectorAll('#conversations li').forEach((li) => li.classList.toggle('active', li.dataset.id === id));
  $('messages').replaceChildren();
  const { messages } = await (await api(`/api/v1/conversations/${id}/messages?order=asc&limit=200`)).json();
  messages.forEach(bubble);
}

async function newConversation() {
  const response = await api('/api/v1/conversations', { method: 'POST', json: { persona_id: $('persona').value } });
  const conversation = await response.json();
  await loadConversations();
  await openConversation(conversation.id);
  return conversation.id;
}

function busy(generation) {
  state.generation = generation;
  $('send').disabled = Boolean(generation);
  $('stop').hidden = !generation;
}

/** Applies a generation's events to its bubble; `text` accumulates its deltas. */
function follow(reply) {
  let text = '';
  return (event) => {
    const data = event.data;
    switch (event.event) {
      case 'user_message':
        bubble(data);
        break;
      case 'start':
        reply.id = data.message_id;
        localStorage.setItem(PENDING_KEY, JSON.stringify({ generation: data.generation_id, conversation: data.conversation_id }));
        busy(data.generation_id);
        bubble({ id: reply.id, role: 'assistant', content: '', status: 'streaming', model: data.model });
        break;
      case 'delta':
        text += data.text;
        bubble({ id: reply.id, role: 'assistant', content: text, status: 'streaming' });
        break;
      case 'done':
        bubble(data.message);
        finish();
        // A first exchange gets a title in the background.
        setTimeout(loadConversations, 1500);
        break;
      case 'error': {
        const node = reply.id && bubble({ id: reply.id, role: 'assistant', content: text, status: 'failed', error: data.message });
        if (!node) status(data.message);
        finish();
        break;
      }
      default:
    }
  };
}

function finish() {
  localStorage.removeItem(PENDING_KEY);
  busy(null);
}

async function send(event) {
  event.preventDefault();
  const content = $('input').value.trim();
  if (!content || state.generation) return;
  status('');
  try {
    const conversation = state.conversation || await newConversation();
    $('input').value = '';
    const body = { content };
    if ($('model').value) body.model = $('model').value;
    busy('starting');
    const response = await api(`/api/v1/conversations/${conversation}/messages?stream=true`, {
      method: 'POST', json: body, headers: { Accept: 'text/event-stream' },
    });
    await readSse(response, follow({}));
  } catch (error) {
    status(error.message);
  } finally {
    if (state.generation === 'starting') busy(null);
  }
  loadConversations();
}

async function stop() {
  if (!state.generation || state.generation === 'starting') return;
  try {
    await api(`/api/v1/generations/${state.generation}/cancel`, { method: 'POST' });
  } catch (error) {
    status(error.message);
  }
}

/** After a reload: re-attach to the reply that was streaming, replaying it from its first event. */
async function resume() {
  const pending = JSON.parse(localStorage.getItem(PENDING_KEY) || 'null');
  if (!pending) return;
  await openConversation(pending.conversation);
  busy(pending.generation);
  status('Re-attached to the reply in progress');
  try {
    const response = await api(`/api/v1/generations/${pending.generation}/stream`, { headers: { Accept: 'text/event-stream' } });
    if (response.status === 204) {
      // Finished and no longer in memory: it is saved.
      finish();
      await openConversation(pending.conversation);
      return;
    }
    await readSse(response, follow({ id: pending.generation }));
    status('');
  } catch (error) {
    status(error.message);
    finish();
  }
}

async function main() {
  await signIn($('app'));
  $('sign-out').hidden = false;
  $('sign-out').onclick = () => { setToken(null); localStorage.removeItem(PENDING_KEY); location.reload(); };
  $('composer').addEventListener('submit', send);
  $('input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); $('composer').requestSubmit(); }
  });
  $('stop').addEventListener('click', stop);
  $('new-chat').addEventListener('click', () => newConversation().catch((e) => status(e.message)));
  try {
    await loadPersonas();
    await loadConversations();
    if (localStorage.getItem(PENDING_KEY)) {
      await resume();
    } else if (localStorage.getItem('chatgate.conversation')) {
      await openConversation(localStorage.getItem('chatgate.conversation')).catch(() => localStorage.removeItem('chatgate.conversation'));
    }
  } catch (error) {
    if (error.status === 401) { setToken(null); location.reload(); return; }
    status(error.message);
  }
  document.body.dataset.ready = token() ? 'true' : 'false';
}

main();
