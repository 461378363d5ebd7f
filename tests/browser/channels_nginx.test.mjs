// The Django Channels tutorial project (examples/channels_chat) as its users
// deploy it with roomcast: Debian's nginx in front (its site file from the
// example, unchanged but for ports), `/ws/` to roomcast, the rest to Django on
// daphne, channels_redis on a private redis-server. Two users log in with
// Django's own login page in Debian's Chromium and chat on the tutorial's room
// page, untouched; a `group_send` from `manage.py shell` reaches both pages;
// roomcast's presence names the Django users the connect proxy found from the
// forwarded session cookies.
//
//   cargo build -p roomcast-cli
//   pip install -r tests/python/requirements.txt
//   ROOMCAST_BIN=$PWD/target/debug/roomcast node --test tests/browser/channels_nginx.test.mjs
//
// Every wait is an event, a process's line, or a condition polled with a
// deadline; there are no fixed sleeps.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { freePort, launch, startRedis, startServe, stopProcess, within } from '../cluster/harness.mjs';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const PROJECT = join(ROOT, 'examples', 'channels_chat');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const NGINX = process.env.NGINX || (existsSync('/usr/sbin/nginx') ? '/usr/sbin/nginx' : 'nginx');
const PYTHON = process.env.PYTHON || 'python3';
/** Bound for one UI expectation or API answer (ms). */
const STEP = 10_000;
/** Bound for a process to start or to finish a command (ms). */
const START = 30_000;
const ROOM = 'lobby';
const GROUP = `chat_${ROOM}`;
const USERS = { alice: 'alice-pw-1', bob: 'bob-pw-2' };

/** Runs `bin args` to completion; rejects with its output unless it exits 0. */
async function run(bin, args, env, cwd) {
  const proc = launch(bin, args, env, { cwd });
  const { code, signal } = await within(START, `${bin} ${args.join(' ')}`, proc.exited);
  if (code !== 0) throw new Error(`${bin} ${args.join(' ')}: exit ${code} ${signal ?? ''}\n${proc.output.join('\n')}`);
  return proc.output;
}

/** Resolves when a line of `proc`'s stdout or stderr matches `pattern`. */
function lineOf(proc, pattern, what) {
  const seen = new Promise((resolve, reject) => {
    const check = (line) => {
      if (pattern.test(line)) resolve(line);
    };
    proc.stdout.on('line', check);
    proc.stderr.on('line', check);
    proc.exited.then(({ code, signal }) =>
      reject(new Error(`${what} exited (code ${code}, signal ${signal}):\n${proc.output.join('\n')}`)),
    );
  });
  return within(START, what, seen);
}

/** Polls `probe` (async, truthy when done) until it holds or `ms` pass. */
async function until(what, probe, ms = STEP) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 25)); // poll interval, bounded by the deadline
  }
}

/** nginx's main file around the example's site file, everything in `dir`. */
function nginxMain(dir) {
  return `daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log stderr notice;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  include ${dir}/site.conf;
}
`;
}

describe('the Channels tutorial behind nginx, in chromium', { timeout: 180_000 }, () => {
  let redis, daphne, roomcast, nginx, browser, dir, djangoEnv, site;
  const pages = {};
  const errors = [];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'roomcast-channels-nginx-'));
    redis = await startRedis();
    djangoEnv = {
      DJANGO_SETTINGS_MODULE: 'mysite.settings',
      ROOMCAST_CHANNELS_URL: redis.url,
      CHAT_DB: join(dir, 'chat.sqlite3'),
      PYTHONPATH: PROJECT,
      ROOMCAST_PROXY_SECRET: 'secret-of-this-test',
    };
    await run(PYTHON, ['manage.py', 'migrate', '-v', '0'], djangoEnv, PROJECT);
    const create = Object.entries(USERS)
      .map(([u, pw]) => `User.objects.create_user(${JSON.stringify(u)}, password=${JSON.stringify(pw)})`)
      .join('; ');
    await run(PYTHON, ['manage.py', 'shell', '-c', `from django.contrib.auth.models import User; ${create}`], djangoEnv, PROJECT);

    const djangoPort = await freePort();
    daphne = launch(PYTHON, ['-m', 'daphne', '-b', '127.0.0.1', '-p', String(djangoPort), 'mysite.asgi:application'], djangoEnv, {
      cwd: PROJECT,
    });
    daphne.name = 'daphne';
    await lineOf(daphne, /Listening on TCP address/, 'daphne to listen');

    const config = readFileSync(join(PROJECT, 'roomcast.toml'), 'utf8')
      .replace('url = "redis://127.0.0.1:6379/0"', `url = "${redis.url}"`)
      .replace('http://127.0.0.1:8000', `http://127.0.0.1:${djangoPort}`);
    assert.notEqual(config, readFileSync(join(PROJECT, 'roomcast.toml'), 'utf8'));
    roomcast = await startServe([], { config, env: { ROOMCAST_PROXY_SECRET: djangoEnv.ROOMCAST_PROXY_SECRET } });
    await until('roomcast on the channel layer', async () =>
      /^roomcast_channels_connected 1$/m.test(await (await fetch(`${roomcast.url}/metrics`)).text()),
    );

    const nginxPort = await freePort();
    const roomcastPort = new URL(roomcast.url).port;
    const siteFile = readFileSync(join(PROJECT, 'nginx.conf'), 'utf8');
    const ours = siteFile
      .replace('listen 127.0.0.1:8080;', `listen 127.0.0.1:${nginxPort};`)
      .replace('http://127.0.0.1:8700', `http://127.0.0.1:${roomcastPort}`)
      .replace('http://127.0.0.1:8000', `http://127.0.0.1:${djangoPort}`);
    for (const port of [nginxPort, roomcastPort, djangoPort]) assert.ok(ours.includes(`127.0.0.1:${port}`), ours);
    for (const sub of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) mkdirSync(join(dir, sub));
    writeFileSync(join(dir, 'site.conf'), ours);
    writeFileSync(join(dir, 'nginx.conf'), nginxMain(dir));
    nginx = launch(NGINX, ['-p', dir, '-c', join(dir, 'nginx.conf')]);
    nginx.name = 'nginx';
    await lineOf(nginx, /start worker process/, 'nginx to start its worker');
    site = `http://127.0.0.1:${nginxPort}`;

    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-sync'],
    });
  });

  after(async () => {
    await browser?.close();
    for (const p of [nginx, roomcast, daphne, redis]) await stopProcess(p);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  function logs() {
    return [roomcast, daphne, nginx].map((p) => `--- ${p?.name} ---\n${p?.output.slice(-30).join('\n')}`).join('\n');
  }

  async function presence() {
    const r = await fetch(`${roomcast.url}/api/presence/${GROUP}`);
    assert.equal(r.status, 200, await r.clone().text());
    return r.json();
  }

  /** A browser of its own (its own cookies): logs `user` in unless null, then opens the room page. */
  async function openRoom(name, user) {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
    // Failed loads are reported below with their URL; the tutorial has no favicon.
    page.on('console', (m) => {
      if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) errors.push(`${name}: ${m.text()}`);
    });
    page.on('response', (r) => {
      if (r.status() >= 400 && new URL(r.url()).pathname !== '/favicon.ico') errors.push(`${name}: ${r.status()} ${r.url()}`);
    });
    const opened = page.waitForEvent('websocket', { timeout: STEP });
    if (user) {
      await page.goto(`${site}/accounts/login/?next=/chat/${ROOM}/`, { timeout: STEP });
      await page.fill('#id_username', user);
      await page.fill('#id_password', USERS[user]);
      await page.click('#log-in', { timeout: STEP });
      await page.waitForURL(`${site}/chat/${ROOM}/`, { timeout: STEP });
    } else {
      await page.goto(`${site}/chat/${ROOM}/`, { timeout: STEP });
    }
    const ws = await opened;
    assert.equal(ws.url(), `${site.replace('http', 'ws')}/ws/chat/${ROOM}/`);
    pages[name] = page;
    return page;
  }

  function chatLog(page) {
    return page.inputValue('#chat-log');
  }

  async function shows(page, text) {
    await page.waitForFunction((t) => document.querySelector('#chat-log').value.includes(t), text, { timeout: STEP });
  }

  it('nginx serves Django pages: the tutorial index', async () => {
    const r = await fetch(`${site}/chat/`);
    assert.equal(r.status, 200);
    assert.match(await r.text(), /room-name-input/);
  });

  it('alice and bob log in with Django; roomcast knows them by their Django usernames', async () => {
    await openRoom('alice', 'alice');
    await openRoom('bob', 'bob');
    const p = await until('alice and bob in the presence of chat_lobby', async () => {
      const p = await presence();
      return p.users.length === 2 ? p : null;
    });
    assert.deepEqual(
      p.users.map((u) => [u.user, u.connections]),
      [
        ['alice', 1],
        ['bob', 1],
      ],
      logs(),
    );
    assert.deepEqual(
      p.users.map((u) => u.info),
      [{ name: 'alice' }, { name: 'bob' }],
    );
    assert.equal(p.anonymous, 0);
  });

  it("a message typed on alice's page shows on both pages", async () => {
    await pages.alice.fill('#chat-message-input', 'hello from alice');
    await pages.alice.press('#chat-message-input', 'Enter');
    await shows(pages.alice, 'hello from alice');
    await shows(pages.bob, 'hello from alice');
  });

  it('a group_send from manage.py shell shows on both pages, once', async () => {
    await until('roomcast in the Channels group chat_lobby', async () => {
      const out = await run('redis-cli', ['-u', redis.url, 'ZCARD', `asgi:group:${GROUP}`], {}, ROOT);
      return Number(out.at(-1).replace(/^\[stdout\] /, '')) >= 1;
    });
    const code = [
      'from asgiref.sync import async_to_sync',
      'from channels.layers import get_channel_layer',
      `async_to_sync(get_channel_layer().group_send)(${JSON.stringify(GROUP)}, {"type": "chat.message", "message": "from the shell"})`,
    ].join('\n');
    await run(PYTHON, ['manage.py', 'shell', '-c', code], djangoEnv, PROJECT);
    await shows(pages.alice, 'from the shell');
    await shows(pages.bob, 'from the shell');
    for (const page of [pages.alice, pages.bob]) {
      assert.equal(await chatLog(page), 'hello from alice\nfrom the shell\n');
    }
  });

  it('a visitor who did not log in chats too, as in the tutorial, and is anonymous to roomcast', async () => {
    const visitor = await openRoom('visitor', null);
    await until('one anonymous member of chat_lobby', async () => (await presence()).anonymous === 1);
    await visitor.fill('#chat-message-input', 'hi, I am new');
    await visitor.press('#chat-message-input', 'Enter');
    for (const page of [pages.alice, pages.bob, visitor]) await shows(page, 'hi, I am new');
    assert.deepEqual(
      (await presence()).users.map((u) => u.user),
      ['alice', 'bob'],
    );
  });

  it('the pages logged no errors', () => {
    assert.deepEqual(errors, []);
  });
});
