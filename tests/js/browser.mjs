// The web chat UI and the usage dashboard in headless Chromium (Debian's, driven by playwright-core).
// Driven by tests/js_clients.rs. Env: CHATGATE_URL, CHROMIUM (the browser binary), SCREENSHOTS (a directory).
// Prints one JSON object: what the pages showed.
import { chromium } from 'playwright-core';

const url = process.env.CHATGATE_URL;
const shots = process.env.SCREENSHOTS;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  args: ['--no-sandbox', '--disable-gpu'],
});
const seen = {};
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 760 } });
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

  // 2. A reload mid-reply re-attaches and still ends with the full reply.
  const partial = await sendAndWait('second message', 12);
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]');
  seen.reload = { partial, final: await untilSettled(partial.id) };

  // 3. Stop.
  const stopping = await sendAndWait('third message', 8);
  await page.click('#stop');
  seen.stop = { partial: stopping, final: await untilSettled(stopping.id) };

  // The conversation got a title from its first exchange.
  await sleep(1800);
  seen.conversations = await page.$$eval('#conversations li', (items) => items.map((li) => li.textContent));
  await page.screenshot({ path: `${shots}/chat.png` });

  // 4. The dashboard: totals and charts, then polls answered 304 while nothing changes.
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
  }));
  await page.screenshot({ path: `${shots}/dashboard.png`, fullPage: true });
  seen.pageErrors = pageErrors;
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
