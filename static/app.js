// The chat page: personas, conversations (rename, archive, delete), streaming replies over SSE, stop,
// regenerate and copy, and re-attaching to a reply that was streaming when the page was reloaded (the generation
// runs on the server; its id is kept in localStorage).
import { api, el, readSse, setToken, signIn, token, usd } from './common.js';

const PENDING_KEY = 'chatgate.pending';
const $ = (id) => document.getElementById(id);
const state = {
  conversation: null, conversations: new Map(), generation: null, personas: [], attachments: [], recorder: null,
};
const mediaUrls = new Map();

function status(text) { $('status').textContent = text || ''; }

/** A reply's line: its size is its completion tokens (the prompt's are in the tooltip), then cost, model, TTFT. */
function meta(message) {
  const parts = [];
  if (message.completion_tokens !== null && message.completion_tokens !== undefined) parts.push(`${message.completion_tokens} tokens`);
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

/** Copies a reply's text (the Clipboard API, else a selected textarea for pages without it). */
async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) {
    const area = el('textarea', {}, text);
    document.body.append(area);
    area.select();
    document.execCommand('copy');
    area.remove();
  }
  status('Copied');
}

/** Shows Regenerate on the last reply only, and only while nothing streams. */
function refreshActions() {
  const replies = [...document.querySelectorAll('.msg.assistant')];
  replies.forEach((node, i) => {
    const regenerate = node.querySelector('.regenerate');
    if (regenerate) regenerate.hidden = i !== replies.length - 1 || Boolean(state.generation) || node.dataset.status === 'streaming';
  });
}

/** The bubble of a message, created at the end of the list when new. */
function bubble(message) {
  $('welcome')?.remove();
  let node = document.querySelector(`.msg[data-id="${message.id}"]`);
  if (!node) {
    node = el('div', { class: `msg ${message.role}`, 'data-id': message.id },
      el('div', { class: 'media' }), el('span', { class: 'text' }), el('span', { class: 'meta' }));
    if (message.role === 'assistant') {
      node.append(el('span', { class: 'actions' },
        el('button', { class: 'link copy', type: 'button', onclick: () => copyText(node.querySelector('.text').textContent) }, 'Copy'),
        el('button', { class: 'link regenerate', type: 'button', onclick: () => regenerate(node.dataset.id) }, 'Regenerate')));
    }
    $('messages').append(node);
  }
  if (message.media && message.media.length && !node.dataset.media) {
    node.dataset.media = 'shown';
    renderMedia(node.querySelector('.media'), message.media);
  }
  node.querySelector('.text').textContent = message.content ?? '';
  if (message.role === 'assistant') {
    node.querySelector('.meta').textContent = meta(message);
    if (message.prompt_tokens !== null && message.prompt_tokens !== undefined) {
      node.querySelector('.meta').title = `prompt ${message.prompt_tokens} + completion ${message.completion_tokens} tokens`;
    }
  }
  node.classList.toggle('streaming', message.status === 'streaming');
  node.classList.toggle('failed', message.status === 'failed');
  node.dataset.status = message.status || '';
  node.querySelector('.actions')?.toggleAttribute('hidden', message.status === 'streaming');
  refreshActions();
  $('messages').scrollTop = $('messages').scrollHeight;
  return node;
}

/** The persona a new chat is with (the select's), or the open conversation's. */
function personaOf(id) {
  return state.personas.find((p) => p.id === id);
}

/** The head of the open conversation: who it is with, and its actions. */
function showHead() {
  const conversation = state.conversations.get(state.conversation);
  $('chat-head').hidden = !conversation;
  if (!conversation) return;
  const persona = personaOf(conversation.persona_id);
  $('persona-name').textContent = persona?.display_name ?? 'Persona';
  $('persona-relationship').textContent = persona ? `· ${persona.relationship}` : '';
  $('persona-about').textContent = persona?.description ? `— ${persona.description}` : '';
  $('archive').textContent = conversation.archived ? 'Unarchive' : 'Archive';
}

/** The first screen: a welcome, and the personas to start a chat with. */
function welcome() {
  const chosen = personaOf($('persona').value) ?? state.personas[0];
  const choices = state.personas.slice(0, 6).map((p) => el('button', {
    type: 'button',
    class: `secondary persona-choice${p.id === chosen?.id ? ' chosen' : ''}`,
    'data-persona': p.id,
    title: p.description,
    onclick: () => { $('persona').value = p.id; welcome(); $('input').focus(); },
  }, `${p.display_name} · ${p.relationship}`));
  $('messages').replaceChildren(el('div', { id: 'welcome', class: 'welcome' },
    el('h2', {}, chosen ? `Say hello to ${chosen.display_name}` : 'Welcome to chatgate'),
    el('p', { class: 'hint' }, chosen?.description ?? ''),
    el('p', {}, 'Pick who to talk to, then write below. Replies stream in as they are written; reload or lose the '
      + 'network and the reply carries on, ready when you are back.'),
    el('div', { class: 'persona-choices' }, ...choices)));
}

/** Back to the first screen, for a new chat with the chosen persona. */
function closeConversation() {
  state.conversation = null;
  localStorage.removeItem('chatgate.conversation');
  document.querySelectorAll('#conversations li').forEach((li) => li.classList.remove('active'));
  showHead();
  welcome();
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
  const archived = $('show-archived').checked;
  const { conversations } = await (await api(`/api/v1/conversations?limit=50&archived=${archived}`)).json();
  conversations.forEach((c) => state.conversations.set(c.id, c));
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
  if (!state.conversations.has(id)) {
    state.conversations.set(id, await (await api(`/api/v1/conversations/${id}`)).json());
  }
  state.conversation = id;
  localStorage.setItem('chatgate.conversation', id);
  document.querySelectorAll('#conversations li').forEach((li) => li.classList.toggle('active', li.dataset.id === id));
  // The persona box follows the open conversation.
  $('persona').value = state.conversations.get(id).persona_id;
  showHead();
  $('messages').replaceChildren();
  const { messages } = await (await api(`/api/v1/conversations/${id}/messages?order=asc&limit=200`)).json();
  messages.forEach(bubble);
  if (!messages.length) welcome();
}

async function renameConversation() {
  const conversation = state.conversations.get(state.conversation);
  const title = prompt('Rename this chat', conversation?.title ?? '');
  if (title === null || !title.trim()) return;
  const updated = await (await api(`/api/v1/conversations/${state.conversation}`, { method: 'PATCH', json: { title: title.trim() } })).json();
  state.conversations.set(updated.id, { ...conversation, ...updated });
  await loadConversations();
}

async function archiveConversation() {
  const conversation = state.conversations.get(state.conversation);
  const archived = !conversation.archived;
  await api(`/api/v1/conversations/${state.conversation}`, { method: 'PATCH', json: { archived } });
  state.conversations.set(conversation.id, { ...conversation, archived });
  status(archived ? 'Archived: find it under “Show archived chats”' : 'Back among your chats');
  closeConversation();
  await loadConversations();
}

async function deleteConversation() {
  if (!confirm('Delete this chat and its messages? This cannot be undone.')) return;
  await api(`/api/v1/conversations/${state.conversation}`, { method: 'DELETE' });
  state.conversations.delete(state.conversation);
  closeConversation();
  await loadConversations();
  status('Chat deleted');
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
  refreshActions();
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

/** A new reply in place of the last one, streamed like a sent message's. */
async function regenerate(messageId) {
  if (state.generation) return;
  status('');
  busy('starting');
  try {
    const response = await api(`/api/v1/messages/${messageId}/regenerate?stream=true`, {
      method: 'POST', json: {}, headers: { Accept: 'text/event-stream' },
    });
    document.querySelector(`.msg[data-id="${messageId}"]`)?.remove();
    await readSse(response, follow({}));
  } catch (error) {
    status(error.message);
  } finally {
    if (state.generation === 'starting') busy(null);
  }
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
  $('new-chat').addEventListener('click', () => { showSidebar(false); closeConversation(); $('input').focus(); });
  $('persona').addEventListener('change', () => closeConversation());
  $('show-archived').addEventListener('change', () => loadConversations().catch((e) => status(e.message)));
  const acting = (action) => () => action().catch((e) => status(e.message));
  $('rename').addEventListener('click', acting(renameConversation));
  $('archive').addEventListener('click', acting(archiveConversation));
  $('delete').addEventListener('click', acting(deleteConversation));
  $('sidebar-toggle').addEventListener('click', () => showSidebar(!document.body.classList.contains('sidebar-open')));
  try {
    await loadPersonas();
    await loadConversations();
    if (localStorage.getItem(PENDING_KEY)) {
      await resume();
    } else if (localStorage.getItem('chatgate.conversation')) {
      await openConversation(localStorage.getItem('chatgate.conversation')).catch(() => closeConversation());
    } else {
      welcome();
    }
  } catch (error) {
    // An invalid or expired token has already sent the page back to sign-in, saying why.
    if (error.status !== 401) status(error.message);
  }
  document.body.dataset.ready = token() ? 'true' : 'false';
}

main();
