// The chat page: personas, conversations, streaming replies over SSE, stop, and re-attaching to a reply that
// was streaming when the page was reloaded (the generation runs on the server; its id is kept in localStorage).
import { api, el, readSse, setToken, signIn, token, usd } from './common.js';

const PENDING_KEY = 'chatgate.pending';
const $ = (id) => document.getElementById(id);
const state = { conversation: null, generation: null, personas: [], attachments: [], recorder: null };
const mediaUrls = new Map();

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

/** A media file as an object URL (the file needs the token, so an <img src> cannot fetch it itself). */
async function mediaUrl(id) {
  if (!mediaUrls.has(id)) {
    mediaUrls.set(id, api(`/api/v1/media/${id}`).then((r) => r.blob()).then((b) => URL.createObjectURL(b)));
  }
  return mediaUrls.get(id);
}

function renderMedia(container, media) {
  container.replaceChildren(...(media || []).map((m) => {
    const node = m.kind === 'audio'
      ? el('audio', { controls: '', 'data-media-id': m.id })
      : el('img', { alt: 'image', 'data-media-id': m.id });
    mediaUrl(m.id).then((url) => { node.src = url; }).catch(() => { node.replaceWith(el('span', { class: 'hint' }, '(media unavailable)')); });
    return node;
  }));
}

/** The bubble of a message, created at the end of the list when new. */
function bubble(message) {
  let node = document.querySelector(`.msg[data-id="${message.id}"]`);
  if (!node) {
    node = el('div', { class: `msg ${message.role}`, 'data-id': message.id },
      el('div', { class: 'media' }), el('span', { class: 'text' }), el('span', { class: 'meta' }));
    $('messages').append(node);
  }
  if (message.media && message.media.length && !node.dataset.media) {
    node.dataset.media = 'shown';
    renderMedia(node.querySelector('.media'), message.media);
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

/** Folds the sidebar away (phones) or opens it. */
function showSidebar(open) {
  document.body.classList.toggle('sidebar-open', open);
  $('sidebar-toggle').setAttribute('aria-expanded', String(open));
}

async function openConversation(id) {
  showSidebar(false);
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

function renderAttachments() {
  $('attachments').replaceChildren(...state.attachments.map((file, i) => el('span', { class: 'chip' },
    `${file.type.startsWith('audio/') ? 'voice' : 'image'}: ${file.name}`,
    el('button', { type: 'button', title: 'Remove', onclick: () => { state.attachments.splice(i, 1); renderAttachments(); } }, '×'))));
}

/** Uploads the attachments; returns the message body fields they make. */
async function uploadAttachments(content) {
  const files = state.attachments;
  if (!files.length) return { content };
  const audio = files.filter((f) => f.type.startsWith('audio/'));
  if (audio.length && (audio.length > 1 || files.length > 1)) {
    throw new Error('A voice note is sent on its own.');
  }
  const ids = [];
  for (const file of files) {
    const form = new FormData();
    form.append('file', file, file.name);
    const uploaded = await (await api('/api/v1/media', { method: 'POST', body: form })).json();
    ids.push(uploaded.id);
  }
  const message_type = audio.length ? 'audio' : (content ? 'multimodal' : 'image');
  const body = { message_type, media_ids: ids };
  if (content) body.content = content;
  return body;
}

async function toggleRecording() {
  if (state.recorder) {
    state.recorder.stop();
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const recorder = new MediaRecorder(stream);
    const chunks = [];
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = () => {
      stream.getTracks().forEach((t) => t.stop());
      const type = (recorder.mimeType || 'audio/webm').split(';')[0];
      state.attachments = [new File(chunks, `voice-note.${type.includes('ogg') ? 'ogg' : 'webm'}`, { type })];
      state.recorder = null;
      $('record').classList.remove('recording');
      $('record').textContent = 'Record';
      renderAttachments();
    };
    recorder.start();
    state.recorder = recorder;
    $('record').classList.add('recording');
    $('record').textContent = 'Stop recording';
  } catch (error) {
    status(`Cannot record: ${error.message}`);
  }
}

async function send(event) {
  event.preventDefault();
  const content = $('input').value.trim();
  if ((!content && !state.attachments.length) || state.generation) return;
  status('');
  try {
    const conversation = state.conversation || await newConversation();
    const body = await uploadAttachments(content);
    $('input').value = '';
    state.attachments = [];
    renderAttachments();
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
  $('file').addEventListener('change', (e) => {
    state.attachments.push(...e.target.files);
    e.target.value = '';
    renderAttachments();
  });
  $('record').addEventListener('click', toggleRecording);
  $('new-chat').addEventListener('click', () => newConversation().catch((e) => status(e.message)));
  $('sidebar-toggle').addEventListener('click', () => showSidebar(!document.body.classList.contains('sidebar-open')));
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
