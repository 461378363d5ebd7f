// Processes and clients for the cluster tests: a private redis-server on a
// free loopback port, roomcast nodes joined to it, native WebSocket clients
// (`ws`) and socket.io-client sockets, each with an inbox that answers
// "wait for the first item matching this" with a bound.
//
// Every wait has a deadline; nothing sleeps for synchronisation. Processes
// started here are killed by `stopAll()` and, as a last resort, when the test
// process exits.

import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join as pathJoin } from 'node:path';
import { createInterface } from 'node:readline';
import { io } from 'socket.io-client';
import WebSocket from 'ws';

/** Bound for one expected event, ack, frame or HTTP answer (ms). */
export const STEP = 10_000;
/** Bound for a process to start (print its line or answer PING) and to exit (ms). */
const START = 20_000;
const EXIT = 10_000;

/** Rejects after `ms` with `what` in the message, unless `promise` settles first. */
export function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export function token(tag) {
  return `${tag}-${randomUUID().slice(0, 8)}`;
}

// ---------------------------------------------------------------------------
// Processes

const children = new Set();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

/** Spawns `bin args`, remembering the last lines of its output for error messages. */
export function launch(bin, args, env = {}, { cwd } = {}) {
  // ROOMCAST_BIN is this harness's setting, not the server's (it would warn about it).
  const { ROOMCAST_BIN: _, ...inherited } = process.env;
  const child = spawn(bin, args, {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...inherited, NO_COLOR: '1', ...env },
  });
  children.add(child);
  const output = [];
  const remember = (stream) => (line) => {
    output.push(`[${stream}] ${line}`);
    if (output.length > 200) output.shift();
  };
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      children.delete(child);
      resolve({ code, signal });
    });
  });
  const failed = new Promise((_, reject) => {
    child.once('error', (e) => reject(new Error(`cannot start ${bin}: ${e.message}`)));
  });
  failed.catch(() => {});
  const stderr = createInterface({ input: child.stderr });
  stderr.on('line', remember('stderr'));
  const stdout = createInterface({ input: child.stdout });
  stdout.on('line', remember('stdout'));
  return { child, exited, failed, output, stdout, stderr, name: bin };
}

async function stop(proc) {
  if (!proc || proc.child.exitCode !== null || proc.child.signalCode !== null) return;
  proc.child.kill('SIGTERM');
  try {
    await within(EXIT, `${proc.name} to exit after SIGTERM`, proc.exited);
  } catch {
    proc.child.kill('SIGKILL');
    await within(EXIT, `${proc.name} to exit after SIGKILL`, proc.exited);
  }
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** One PING over a fresh connection: resolves true on `+PONG`, false otherwise. */
function pingOnce(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    let buf = '';
    const done = (ok) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(1_000, () => done(false));
    sock.once('error', () => done(false));
    sock.once('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => {
      buf += d.toString();
      if (buf.includes('\r\n')) done(buf.startsWith('+PONG'));
    });
  });
}

/**
 * Starts a private redis-server on a free loopback port (no persistence) and
 * resolves once it answers PING. Tries another port if the first was taken.
 */
export async function startRedis() {
  const bin = process.env.REDIS_SERVER || 'redis-server';
  let lastError;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const proc = launch(bin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']);
    proc.port = port;
    proc.url = `redis://127.0.0.1:${port}/0`;
    const deadline = Date.now() + START;
    let gone = false;
    proc.exited.then(() => {
      gone = true;
    });
    try {
      while (!gone) {
        if (await Promise.race([pingOnce(port), proc.failed])) return proc;
        if (Date.now() > deadline) throw new Error(`redis-server on port ${port} did not answer PING within ${START} ms`);
        await new Promise((r) => setTimeout(r, 20)); // poll interval, bounded by the deadline
      }
      lastError = new Error(`redis-server exited before answering PING:\n${proc.output.join('\n')}`);
    } catch (e) {
      await stop(proc);
      throw e;
    }
  }
  throw lastError;
}

/**
 * Starts `$ROOMCAST_BIN serve` on port 0 joined to `redisUrl` with both
 * emitters and the built-in Socket.IO events on; resolves with its base URL
 * once its Redis subscriber (with the emitter channels) is connected.
 */
export async function startRoomcast(redisUrl, { config } = {}) {
  const args = ['--broker', redisUrl, '--emitters', 'python-socketio,socket.io'];
  const proc = await startServe(args, { config, env: { ROOMCAST_SOCKETIO_BUILTIN_EVENTS: 'true' } });
  try {
    const deadline = Date.now() + START;
    while (!/^roomcast_redis_connected 1$/m.test(await metricsText(proc.url))) {
      if (Date.now() > deadline) throw new Error(`roomcast at ${proc.url} did not connect to Redis within ${START} ms`);
      await new Promise((r) => setTimeout(r, 20)); // poll interval, bounded by the deadline
    }
    return proc;
  } catch (e) {
    await stopProcess(proc);
    throw new Error(`${e.message}\n--- roomcast output ---\n${proc.output.join('\n')}`);
  }
}

/**
 * Starts `$ROOMCAST_BIN serve --listen 127.0.0.1:0` with more `args`, a TOML
 * `config` (written to a temporary file) and `env`; resolves with the process
 * and its base URL (`proc.url`) once it prints its listening line.
 */
export async function startServe(args = [], { config, env = {} } = {}) {
  const bin = process.env.ROOMCAST_BIN;
  if (!bin) {
    throw new Error(
      'ROOMCAST_BIN is not set: build with `cargo build -p roomcast-cli` and run\n' +
        '  ROOMCAST_BIN=$PWD/target/debug/roomcast node --test tests/',
    );
  }
  const all = ['serve', '--listen', '127.0.0.1:0', ...args];
  let dir;
  if (config) {
    dir = mkdtempSync(pathJoin(tmpdir(), 'roomcast-test-'));
    writeFileSync(pathJoin(dir, 'roomcast.toml'), config);
    all.push('--config', pathJoin(dir, 'roomcast.toml'));
  }
  const proc = launch(bin, all, { RUST_LOG: 'info', ...env });
  proc.name = 'roomcast';
  proc.dir = dir;
  try {
    const listening = new Promise((resolve, reject) => {
      proc.stdout.on('line', (line) => {
        const m = /roomcast listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(line);
        if (m) resolve(m[1]);
      });
      proc.failed.catch(reject);
      proc.exited.then(({ code, signal }) =>
        reject(new Error(`roomcast exited (code ${code}, signal ${signal}) before listening\n${proc.output.join('\n')}`)),
      );
    });
    proc.url = await within(START, 'roomcast to print its listening line', listening);
    return proc;
  } catch (e) {
    await stopProcess(proc);
    throw new Error(`${e.message}\n--- roomcast output ---\n${proc.output.join('\n')}`);
  }
}

export async function stopProcess(proc) {
  await stop(proc);
  if (proc?.dir) rmSync(proc.dir, { recursive: true, force: true });
}

/** The last lines a process printed, for failure messages. */
export function outputOf(proc) {
  return proc ? proc.output.slice(-40).join('\n') : '';
}

// ---------------------------------------------------------------------------
// Metrics

async function metricsText(url) {
  const r = await within(STEP, `GET ${url}/metrics`, fetch(`${url}/metrics`));
  if (r.status !== 200) throw new Error(`GET ${url}/metrics: ${r.status}`);
  return r.text();
}

/** `roomcast_emitter_messages_total` of one node: {"socket.io": {applied, malformed, ...}, ...}. */
export async function emitterCounts(url) {
  const text = await metricsText(url);
  const out = {};
  for (const m of text.matchAll(/^roomcast_emitter_messages_total\{emitter="([^"]+)",result="([^"]+)"\} (\d+)$/gm)) {
    (out[m[1]] ??= {})[m[2]] = Number(m[3]);
  }
  return out;
}

// ---------------------------------------------------------------------------
// Clients

/** Items received by one client, with bounded waits for the first match. */
export class Inbox {
  constructor(name) {
    this.name = name;
    this.items = [];
    this.waiters = [];
  }

  push(item) {
    this.items.push(item);
    for (const w of [...this.waiters]) {
      if (w.pred(item)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(item);
      }
    }
  }

  waitFor(pred, what, ms = STEP) {
    const found = this.items.find(pred);
    if (found !== undefined) return Promise.resolve(found);
    let waiter;
    const p = new Promise((resolve) => {
      waiter = { pred, resolve };
      this.waiters.push(waiter);
    });
    return within(ms, `${this.name}: ${what}; got ${JSON.stringify(this.items).slice(0, 2000)}`, p).finally(() => {
      const i = this.waiters.indexOf(waiter);
      if (i >= 0) this.waiters.splice(i, 1);
    });
  }

  filter(pred) {
    return this.items.filter(pred);
  }
}

/** Every client made by a test; `closeAll()` after it. */
const open = new Set();

export function closeAll() {
  for (const c of open) c.close();
  open.clear();
}

/**
 * A socket.io-client socket (WebSocket transport) on `url` + `nsp`. Every
 * event lands in `inbox` as {event, args}; `disconnects` gets the reasons.
 */
export async function sioClient(url, { user = token('sio'), nsp = '/' } = {}) {
  const socket = io(url + (nsp === '/' ? '' : nsp), {
    transports: ['websocket'],
    forceNew: true,
    reconnection: false,
    auth: { user },
    timeout: STEP,
  });
  const client = {
    kind: 'sio',
    user,
    nsp,
    socket,
    inbox: new Inbox(`socket.io client ${user}`),
    disconnects: new Inbox(`socket.io client ${user} disconnects`),
    close() {
      socket.disconnect();
      socket.io.engine?.close();
    },
  };
  socket.onAny((event, ...args) => client.inbox.push({ event, args }));
  socket.on('disconnect', (reason) => client.disconnects.push(reason));
  open.add(client);
  await within(
    STEP,
    `socket.io client ${user} to connect to ${url}${nsp}`,
    new Promise((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('connect_error', (e) => reject(new Error(`socket.io client could not connect: ${e.message}`)));
    }),
  );
  client.id = socket.id;
  return client;
}

/** Joins a room with the built-in event; asserts the ack. */
export async function sioJoin(client, room) {
  const ack = await client.socket.timeout(STEP).emitWithAck('roomcast:join', { room });
  if (!ack || ack.room !== room || ack.joined !== true) {
    throw new Error(`roomcast:join ${room} was answered with ${JSON.stringify(ack)}`);
  }
}

/**
 * A native client on `url`/ws, authenticated as `user`. Frames land in
 * `inbox`; `closed` resolves with {code, reason} when the server closes.
 */
export async function nativeClient(url, { user = token('native') } = {}) {
  const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/ws`);
  const client = {
    kind: 'native',
    user,
    ws,
    inbox: new Inbox(`native client ${user}`),
    nextId: 1,
    close() {
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.terminate();
    },
  };
  client.closed = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  ws.on('message', (data, binary) => {
    if (!binary) client.inbox.push(JSON.parse(data.toString()));
  });
  ws.on('error', () => {});
  open.add(client);
  const welcome = await client.inbox.waitFor((f) => f.type === 'welcome', 'welcome frame');
  client.id = welcome.conn;
  await nativeRequest(client, { type: 'auth', user });
  return client;
}

/** Sends a command with a fresh id and resolves with its ack (rejects on an error frame). */
export async function nativeRequest(client, command) {
  const id = client.nextId++;
  client.ws.send(JSON.stringify({ ...command, id }));
  const reply = await client.inbox.waitFor(
    (f) => (f.type === 'ack' || f.type === 'error') && f.id === id,
    `reply to ${JSON.stringify(command)}`,
  );
  if (reply.type === 'error') throw new Error(`${JSON.stringify(command)} failed: ${JSON.stringify(reply)}`);
  return reply;
}

export async function nativeJoin(client, room) {
  const ack = await nativeRequest(client, { type: 'join', room });
  if (ack.joined !== true) throw new Error(`join ${room} was answered with ${JSON.stringify(ack)}`);
}

/** Joins `room` with either kind of client. */
export function join(client, room) {
  return client.kind === 'sio' ? sioJoin(client, room) : nativeJoin(client, room);
}

/**
 * What `client` received for `event`, one entry per delivery: the argument
 * list for a Socket.IO client, the `message` frame for a native one.
 */
export function received(client, event) {
  if (client.kind === 'sio') return client.inbox.filter((m) => m.event === event).map((m) => m.args);
  return client.inbox.filter((f) => f.type === 'message' && f.event === event);
}

/**
 * The names of the events delivered to `client` so far, in order: Socket.IO
 * events except roomcast's own presence and error events, native `message`
 * frames. `fence` events are left out unless asked for.
 */
export function events(client, { fences = false } = {}) {
  const names =
    client.kind === 'sio'
      ? client.inbox.items.map((m) => m.event).filter((e) => !e.startsWith('roomcast:'))
      : client.inbox.items.filter((f) => f.type === 'message').map((f) => f.event);
  return fences ? names : names.filter((e) => e !== 'fence');
}

/**
 * Waits for the first delivery of `event` to `client` (see `received`); with
 * `tag`, the first whose only argument (Socket.IO) or `data` (native) is `tag`.
 */
export async function receive(client, event, tag) {
  const what = tag === undefined ? `event ${event}` : `event ${event} ${JSON.stringify(tag)}`;
  if (client.kind === 'sio') {
    const m = await client.inbox.waitFor(
      (m) => m.event === event && (tag === undefined || (m.args.length === 1 && m.args[0] === tag)),
      what,
    );
    return m.args;
  }
  return client.inbox.waitFor(
    (f) => f.type === 'message' && f.event === event && (tag === undefined || f.data === tag),
    what,
  );
}
