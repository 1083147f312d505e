// The web chat UI and the usage dashboard in headless Chromium (Debian's, driven by playwright-core).
// Driven by tests/js_clients.rs. Env: CHATGATE_URL, CHROMIUM (the browser binary), SCREENSHOTS (a directory).
// Prints one JSON object: what the pages showed.
import { chromium } from 'playwright-core';

const url = process.env.CHATGATE_URL;
const shots = process.env.SCREENSHOTS;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  // A fake microphone (a beep) that needs no permission prompt, for the voice note.
  args: ['--no-sandbox', '--disable-gpu', '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream'],
});
const seen = {};
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(String(error)));

  // Sign in with the development token endpoint.
  await page.goto(`${url}/`);
  await page.fill('#dev-user', 'browser-user');
  await page.click('#dev-token');
  await page.waitForSelector('body[data-ready="true"]');

  const lastReply = () => page.evaluate(() => {
    const nodes = document.querySelectorAll('.msg.assistant');
    const node = nodes[nodes.length - 1];
    return node && {
      id: node.dataset.id,
      text: node.querySelector('.text').textContent,
      meta: node.querySelector('.meta').textContent,
      status: node.dataset.status,
      streaming: node.classList.contains('streaming'),
      count: nodes.length,
    };
  });
  /** Sends `text` and waits until the new reply has streamed at least `chars` characters. */
  async function sendAndWait(text, chars) {
    const before = (await lastReply())?.count ?? 0;
    await page.fill('#input', text);
    await page.click('#send');
    return waitForReply(before, chars);
  }
  async function waitForReply(before, chars) {
    for (;;) {
      const reply = await lastReply();
      if (reply && reply.count > before && reply.text.length >= chars) return reply;
      await sleep(10);
    }
  }
  async function untilSettled(id) {
    for (let i = 0; i < 1500; i++) {
      const reply = await lastReply();
      if (reply && reply.id === id && !reply.streaming) return reply;
      await sleep(20);
    }
    throw new Error(`reply ${id} never settled`);
  }

  // On a laptop (1280×800): the input and Send on screen, the sidebar shown.
  const onScreenIn = (target, selector) => target.evaluate((selector) => {
    const r = document.querySelector(selector).getBoundingClientRect();
    return r.width > 0 && r.height > 0 && r.left >= 0 && r.top >= 0 && r.right <= innerWidth && r.bottom <= innerHeight;
  }, selector);
  seen.desktop = {
    input: await onScreenIn(page, '#input'),
    send: await onScreenIn(page, '#send'),
    sidebar: await onScreenIn(page, '#new-chat'),
  };

  // The first screen: a welcome and the personas to pick from; no conversation head yet.
  seen.welcome = await page.evaluate(() => ({
    shown: Boolean(document.getElementById('welcome')),
    heading: document.querySelector('#welcome h2')?.textContent,
    choices: document.querySelectorAll('#welcome .persona-choice').length,
    head: !document.getElementById('chat-head').hidden,
  }));
  await page.screenshot({ path: `${shots}/welcome.png` });

  // 1. Tokens appear progressively.
  const first = await sendAndWait('first message', 1);
  const lengths = [first.text.length];
  for (;;) {
    const reply = await lastReply();
    if (reply.text.length !== lengths[lengths.length - 1]) lengths.push(reply.text.length);
    if (!reply.streaming) break;
    await sleep(15);
  }
  seen.progressive = lengths;
  seen.first = await lastReply();
  // The open conversation's persona is shown, and the persona box follows it.
  seen.head = await page.evaluate(() => ({
    shown: !document.getElementById('chat-head').hidden,
    name: document.getElementById('persona-name').textContent,
    selected: document.getElementById('persona').selectedOptions[0].textContent,
    welcome: Boolean(document.getElementById('welcome')),
  }));

  // 2. A reload mid-reply re-attaches and still ends with the full reply.
  const partial = await sendAndWait('second message', 12);
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]');
  seen.reload = { partial, final: await untilSettled(partial.id) };

  // 3. Stop.
  const stopping = await sendAndWait('third message', 8);
  await page.click('#stop');
  seen.stop = { partial: stopping, final: await untilSettled(stopping.id) };

  // Copy, then Regenerate the stopped reply: a whole new reply takes its place.
  await page.context().grantPermissions(['clipboard-read', 'clipboard-write'], { origin: url });
  await page.click(`.msg[data-id="${stopping.id}"] .copy`);
  await page.waitForFunction(() => document.getElementById('status').textContent === 'Copied', null, { timeout: 5000 }).catch(() => {});
  seen.copy = {
    status: await page.textContent('#status'),
    clipboard: await page.evaluate(() => navigator.clipboard.readText().catch((e) => `unreadable: ${e}`)),
  };
  seen.regenerateShown = await page.$$eval('.msg.assistant .regenerate', (buttons) =>
    buttons.map((b) => !b.hidden));
  // The replies on screen before: while the stopped one is taken away, the last reply shown can be an older one,
  // which must not be taken for the new reply.
  const shownBefore = new Set(await page.$$eval('.msg.assistant', (nodes) => nodes.map((n) => n.dataset.id)));
  await page.click(`.msg[data-id="${stopping.id}"] .regenerate`);
  let regenerated;
  for (let i = 0; i < 1500 && !regenerated; i++) {
    const reply = await lastReply();
    if (reply && !shownBefore.has(reply.id) && reply.text.length > 0) regenerated = reply;
    else await sleep(10);
  }
  seen.regenerated = {
    reply: await untilSettled(regenerated.id),
    oldShown: await page.$$eval(`.msg[data-id="${stopping.id}"]`, (nodes) => nodes.length),
  };

  // 4. A photo: uploaded, shown in the user's bubble, seen by the model.
  const png = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==', 'base64');
  let before = (await lastReply()).count;
  await page.setInputFiles('#file', { name: 'dot.png', mimeType: 'image/png', buffer: png });
  seen.chips = await page.$$eval('#attachments .chip', (chips) => chips.map((c) => c.textContent));
  await page.fill('#input', 'What is in this photo?');
  await page.click('#send');
  const photoReply = await waitForReply(before, 1);
  seen.photo = { reply: await untilSettled(photoReply.id) };
  await page.waitForFunction(() => {
    const img = [...document.querySelectorAll('.msg.user img')].pop();
    return img && img.complete && img.naturalWidth > 0;
  });
  seen.photo.image = await page.evaluate(() => {
    const img = [...document.querySelectorAll('.msg.user img')].pop();
    return { width: img.naturalWidth, src: img.src.slice(0, 5) };
  });

  // 5. A voice note from the (fake) microphone: recorded, uploaded, transcribed, answered.
  before = (await lastReply()).count;
  await page.click('#record');
  await sleep(800);
  await page.click('#record');
  await page.waitForSelector('#attachments .chip');
  await page.click('#send');
  const voiceReply = await waitForReply(before, 1);
  seen.voice = { reply: await untilSettled(voiceReply.id) };
  seen.voice.user = await page.evaluate(() => {
    const node = [...document.querySelectorAll('.msg.user')].pop();
    return { text: node.querySelector('.text').textContent, audio: Boolean(node.querySelector('audio')) };
  });

  // The conversation got a title from its first exchange.
  await sleep(1800);
  seen.conversations = await page.$$eval('#conversations li', (items) => items.map((li) => li.textContent));
  await page.screenshot({ path: `${shots}/chat.png` });

  // 6. The dashboard: totals and charts, then polls answered 304 while nothing changes.
  await page.goto(`${url}/usage?poll_ms=300`);
  await page.waitForSelector('body[data-ready="true"]');
  await page.waitForFunction(() => Number(document.body.dataset.unchanged || 0) >= 3);
  seen.dashboard = await page.evaluate(() => ({
    tokens: document.getElementById('total-tokens').textContent,
    cost: document.getElementById('total-cost').textContent,
    messages: document.getElementById('total-messages').textContent,
    bars: document.querySelectorAll('#tokens-chart rect').length,
    models: [...document.querySelectorAll('#by-model tbody tr')].map((tr) => tr.dataset.model),
    status: document.getElementById('poll-status').textContent,
    legends: [...document.querySelectorAll('.legend span')].map((span) => span.textContent),
    costBars: [...document.querySelectorAll('#cost-chart rect')].filter((r) => Number(r.getAttribute('height')) > 0).length,
  }));
  await page.screenshot({ path: `${shots}/dashboard.png`, fullPage: true });

  // 7. On a phone (390×844): the sidebar folds away, the input and Send are on screen, a reply streams in.
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  phone.on('pageerror', (error) => pageErrors.push(String(error)));
  await phone.goto(`${url}/`);
  await phone.fill('#dev-user', 'phone-user');
  await phone.click('#dev-token');
  await phone.waitForSelector('body[data-ready="true"]');
  const onScreen = (selector) => onScreenIn(phone, selector);
  seen.phone = {
    input: await onScreen('#input'),
    send: await onScreen('#send'),
    sidebarHidden: await phone.evaluate(() => getComputedStyle(document.getElementById('sidebar')).display === 'none'),
    toggle: await onScreen('#sidebar-toggle'),
  };
  await phone.click('#sidebar-toggle');
  seen.phone.sidebarOpens = await onScreen('#new-chat');
  await phone.click('#new-chat');
  seen.phone.sidebarClosesOnOpen = await phone.waitForFunction(
    () => getComputedStyle(document.getElementById('sidebar')).display === 'none', null, { timeout: 5000 },
  ).then(() => true, () => false);
  await phone.fill('#input', 'hello from a phone');
  await phone.click('#send');
  await phone.waitForFunction(() => {
    const node = [...document.querySelectorAll('.msg.assistant')].pop();
    return node && node.dataset.status === 'complete';
  }, null, { timeout: 15000 });
  seen.phone.reply = await phone.evaluate(() => [...document.querySelectorAll('.msg.assistant .text')].pop().textContent);
  seen.phone.favicon = await phone.evaluate(async () => {
    const response = await fetch('/favicon.ico');
    return { status: response.status, type: response.headers.get('content-type') };
  });
  await phone.screenshot({ path: `${shots}/chat-phone.png` });

  // 8. Rename, archive (and find it again), delete.
  phone.once('dialog', (dialog) => dialog.accept('Phone chat'));
  await phone.click('#rename');
  await phone.waitForFunction(() => [...document.querySelectorAll('#conversations li')].some((li) => li.textContent === 'Phone chat'));
  seen.manage = { renamed: await phone.$$eval('#conversations li', (items) => items.map((li) => li.textContent)) };
  await phone.click('#archive');
  await phone.waitForFunction(() => document.querySelectorAll('#conversations li').length === 0);
  seen.manage.afterArchive = { welcome: await phone.evaluate(() => Boolean(document.getElementById('welcome'))) };
  await phone.click('#sidebar-toggle');
  await phone.check('#show-archived');
  await phone.waitForSelector('#conversations li');
  seen.manage.archived = await phone.$$eval('#conversations li', (items) => items.map((li) => li.textContent));
  await phone.click('#conversations li');
  await phone.waitForSelector('.msg.assistant');
  seen.manage.archiveLabel = await phone.textContent('#archive');
  phone.once('dialog', (dialog) => dialog.accept());
  await phone.click('#delete');
  await phone.waitForFunction(() => document.querySelectorAll('#conversations li').length === 0 && document.getElementById('welcome'));
  seen.manage.deleted = await phone.textContent('#status');

  // 9. A token that stops working (here: a broken one) sends the page back to sign-in, saying why; a bad token
  // pasted in is refused there and then.
  await phone.evaluate(() => localStorage.setItem('chatgate.token', 'not-a-jwt'));
  await phone.reload();
  await phone.waitForSelector('#signin-status.error');
  seen.expired = { signIn: await phone.textContent('#signin-status') };
  await phone.fill('#token-input', 'still-not-a-jwt');
  await phone.click('#use-token');
  await phone.waitForFunction(() => document.getElementById('signin-status').textContent.includes('refused'));
  seen.expired.pasted = await phone.textContent('#signin-status');
  seen.expired.stored = await phone.evaluate(() => localStorage.getItem('chatgate.token'));
  seen.pageErrors = pageErrors;
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
