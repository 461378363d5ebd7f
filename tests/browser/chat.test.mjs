// Browser end-to-end test of the chat page roomcast serves at `GET /`.
//
// Runs Debian's Chromium (never a downloaded browser) through playwright-core
// against a real `roomcast serve` whose binary path is in ROOMCAST_BIN:
//
//   cargo build -p roomcast-cli
//   ROOMCAST_BIN=target/debug/roomcast node --test tests/browser/
//
// Every wait is an event or an auto-waiting Playwright call with a bound;
// there are no fixed sleeps.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
/** Bound for one UI expectation (ms). */
const STEP = 5_000;
/** Bound for the server to print its listening line, and to exit after SIGTERM (ms). */
const SERVER_START = 15_000;
const SERVER_EXIT = 10_000; // the default shutdown drain is 5 s
const ROOM = 'lobby';

/** Rejects after `ms` with `what` in the message, unless `promise` settles first. */
function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Starts `$ROOMCAST_BIN serve --listen 127.0.0.1:0 [extra...]` and resolves with the
 * child process and the base URL parsed from its `listening on http://...` line.
 */
function startServer(bin, extra = []) {
  const child = spawn(bin, ['serve', '--listen', '127.0.0.1:0', ...extra], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NO_COLOR: '1' },
  });
  const output = []; // the last lines of stdout and stderr, for failure messages
  const remember = (stream) => (line) => {
    output.push(`[${stream}] ${line}`);
    if (output.length > 200) output.shift();
  };
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  createInterface({ input: child.stderr }).on('line', remember('stderr'));
  const stdout = createInterface({ input: child.stdout });
  stdout.on('line', remember('stdout'));
  const listening = new Promise((resolve, reject) => {
    stdout.on('line', (line) => {
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(line);
      if (m) resolve(`http://127.0.0.1:${m[1]}`);
    });
    child.once('error', (e) => reject(new Error(`cannot start ${bin}: ${e.message}`)));
    exited.then(({ code, signal }) =>
      reject(
        new Error(
          `roomcast exited (code ${code}, signal ${signal}) before printing "listening on http://127.0.0.1:PORT"\n` +
            output.join('\n'),
        ),
      ),
    );
  });
  return within(SERVER_START, 'roomcast to print "listening on http://127.0.0.1:PORT"', listening)
    .then((url) => ({ child, url, exited, output }))
    .catch((e) => {
      child.kill('SIGKILL');
      throw e;
    });
}

/** Opens the chat page in a fresh browser context and joins `room` as `name`. */
async function openChat(browser, url, name, room, errors) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(STEP);
  page.on('pageerror', (e) => errors.push(`${name}: page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`${name}: console error: ${m.text()}`);
  });
  await page.goto(url + '/', { timeout: STEP });
  await page.fill('#name', name);
  await page.fill('#room', room);
  await page.click('#join');
  // The message box is enabled once the join is acknowledged.
  await page.locator('#text:enabled').waitFor();
  return { context, page };
}

/** The `#online` entry for `user`, matched on its whole text. */
function onlineEntry(page, user) {
  return page.locator('#online > li').filter({ hasText: new RegExp(`^\\s*${user}\\s*$`) });
}

/** The user ids listed in `#online`. */
function onlineUsers(page) {
  return page.$$eval('#online > li', (lis) => lis.map((li) => li.textContent.trim()));
}

describe('chat page', { timeout: 90_000 }, () => {
  let server;
  let browser;
  let alice;
  let bob;
  const errors = [];

  before(async () => {
    const bin = process.env.ROOMCAST_BIN;
    assert.ok(
      bin,
      'ROOMCAST_BIN is not set: build the server with `cargo build -p roomcast-cli` and run ' +
        '`ROOMCAST_BIN=target/debug/roomcast node --test tests/browser/`',
    );
    assert.ok(existsSync(bin), `ROOMCAST_BIN=${bin} does not exist: build it with \`cargo build -p roomcast-cli\``);
    assert.ok(
      existsSync(CHROMIUM),
      `${CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium) or set CHROMIUM_PATH`,
    );
    server = await startServer(bin);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: 20_000,
    });
  });

  after(async () => {
    if (browser) await browser.close().catch(() => {});
    if (server && server.child.exitCode === null && server.child.signalCode === null) {
      server.child.kill('SIGKILL');
      await server.exited;
    }
  });

  it('serves the page at GET /', { timeout: 15_000 }, async () => {
    const res = await within(STEP, 'GET /', fetch(server.url + '/'));
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/html/);
    const html = await res.text();
    for (const id of ['name', 'room', 'join', 'text', 'send', 'messages', 'online', 'status']) {
      assert.ok(html.includes(`id="${id}"`), `the page has #${id}`);
    }
  });

  it('alice and bob join the same room and see each other online', { timeout: 20_000 }, async () => {
    alice = await openChat(browser, server.url, 'alice', ROOM, errors);
    await onlineEntry(alice.page, 'alice').waitFor();
    bob = await openChat(browser, server.url, 'bob', ROOM, errors);
    // bob's list comes from the presence snapshot; alice's from a presence event.
    await onlineEntry(bob.page, 'alice').waitFor();
    await onlineEntry(bob.page, 'bob').waitFor();
    await onlineEntry(alice.page, 'bob').waitFor();
    assert.deepEqual((await onlineUsers(alice.page)).sort(), ['alice', 'bob']);
    assert.deepEqual((await onlineUsers(bob.page)).sort(), ['alice', 'bob']);
    assert.match(await alice.page.textContent('#status'), /alice/);
  });

  it('a message from alice reaches bob (and alice)', { timeout: 15_000 }, async () => {
    await alice.page.fill('#text', 'hello');
    await alice.page.click('#send');
    await bob.page.locator('#messages > *', { hasText: 'alice: hello' }).waitFor();
    await alice.page.locator('#messages > *', { hasText: 'alice: hello' }).waitFor();
    assert.equal(await bob.page.locator('#messages > *').count(), 1, 'bob got exactly one message');
    assert.equal(await alice.page.inputValue('#text'), '', 'the message box is cleared after sending');
  });

  it('when bob closes his page, alice sees him leave', { timeout: 15_000 }, async () => {
    await bob.context.close();
    bob = null;
    await onlineEntry(alice.page, 'bob').waitFor({ state: 'detached' });
    assert.deepEqual(await onlineUsers(alice.page), ['alice']);
  });

  it('SIGTERM: alice is told why, and the server exits with code 0', { timeout: 20_000 }, async () => {
    assert.ok(server.child.kill('SIGTERM'), 'SIGTERM was delivered');
    // The page shows the close code and reason of the shutdown close.
    await alice.page
      .locator('#status', { hasText: /4000/ })
      .waitFor({ timeout: SERVER_EXIT });
    assert.match(await alice.page.textContent('#status'), /server shutting down/);
    await alice.page.locator('#online > li').first().waitFor({ state: 'detached' });
    await alice.page.locator('#reconnect:visible').waitFor();
    const { code, signal } = await within(SERVER_EXIT, 'roomcast to exit after SIGTERM', server.exited);
    assert.equal(
      signal,
      null,
      `roomcast was ended by signal ${signal} instead of exiting\n${server.output.join('\n')}`,
    );
    assert.equal(code, 0, `roomcast exited with code ${code} after SIGTERM\n${server.output.join('\n')}`);
  });

  it('the pages logged no errors', () => {
    assert.deepEqual(errors, []);
  });
});

// A page written for Django Channels (the seed-style `/room/123/` page): it
// opens `new WebSocket("ws://host/room/123/")` and sends plain text, served by
// `roomcast serve --endpoint '/room/{room}/'` with no change to the page.
describe('a Channels-style page on a relay endpoint', { timeout: 60_000 }, () => {
  let server;
  let browser;
  const errors = [];

  before(async () => {
    server = await startServer(process.env.ROOMCAST_BIN, ['--endpoint', '/room/{room}/']);
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  });

  after(async () => {
    await browser?.close().catch(() => {});
    if (server) {
      server.child.kill('SIGKILL');
      await server.exited;
    }
  });

  /** The page, as its author wrote it, against the server's host. */
  async function openPage(name) {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.setDefaultTimeout(STEP);
    page.on('pageerror', (e) => errors.push(`${name}: page error: ${e.message}`));
    // Served from the server's own origin, as nginx would put both behind one host.
    await page.goto(server.url + '/healthz');
    await page.setContent(`<ul id="log"></ul><input id="text"><button id="send">Send</button>
      <script>
        const socket = new WebSocket("ws://" + location.host + "/room/123/");
        socket.onopen = () => document.body.dataset.open = "yes";
        socket.onmessage = (e) => {
          const li = document.createElement("li");
          li.textContent = e.data;
          document.getElementById("log").appendChild(li);
        };
        document.getElementById("send").onclick = () => socket.send(document.getElementById("text").value);
      </script>`);
    await page.locator('body[data-open="yes"]').waitFor();
    return page;
  }

  it('plain text from one page reaches both, unchanged', async () => {
    const a = await openPage('a');
    const b = await openPage('b');
    await a.fill('#text', 'hello from a, not JSON');
    await a.click('#send');
    for (const page of [a, b]) {
      await page.locator('#log > li', { hasText: 'hello from a, not JSON' }).waitFor();
      assert.deepEqual(await page.$$eval('#log > li', (lis) => lis.map((li) => li.textContent)), [
        'hello from a, not JSON',
      ]);
    }
    assert.deepEqual(errors, []);
  });
});
