// End-to-end tests of examples/socketio_chat.rs with the stock npm
// socket.io-client (v4.8), plus raw Engine.IO bad input (node's fetch and `ws`).
//
//   cargo build -p roomcast-examples
//   SOCKETIO_CHAT_BIN=target/debug/socketio_chat node --test tests/socketio/
//
// One server (bound to 127.0.0.1, port 0) serves the whole file. Every wait is
// an event, an ack or a response with a bound (STEP); there are no fixed
// sleeps. A negative ("X does not receive Y") is proven with a later fence
// event that travels the same path: the server pushes to each client's queue
// in order, so once the fence has arrived, Y would have arrived before it.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { createInterface } from 'node:readline';
import { io } from 'socket.io-client';
import WebSocket from 'ws';

/** Bound for one expected event, ack or HTTP answer (ms). */
const STEP = 5_000;
/** Bound for one whole test (ms). */
const TEST_TIMEOUT = 60_000;
/** Bound for the server to print its listening line, and to exit after SIGTERM (ms). */
const SERVER_START = 20_000;
const SERVER_EXIT = 10_000;
/** The server's default Engine.IO maxPayload (bytes). */
const MAX_PAYLOAD = 1_000_000;

const MODES = {
  websocket: ['websocket'],
  polling: ['polling'],
  upgrade: ['polling', 'websocket'],
};

/** Rejects after `ms` with `what` in the message, unless `promise` settles first. */
function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Resolves with the arguments of the next `event` on `emitter` (bounded). */
function once(emitter, event, what = event, ms = STEP) {
  return within(ms, what, new Promise((resolve) => emitter.once(event, (...args) => resolve(args))));
}

function token(tag) {
  return `${tag}-${randomUUID()}`;
}

// ---------------------------------------------------------------------------
// The server

/**
 * Starts `$SOCKETIO_CHAT_BIN --port 0` and resolves with the child process,
 * its base URL (from the `socketio_chat listening on http://...` line), and
 * the last lines of its output.
 */
function startServer(bin) {
  const child = spawn(bin, ['--port', '0'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NO_COLOR: '1' },
  });
  const output = [];
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
      const m = /socketio_chat listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(line);
      if (m) resolve(m[1]);
    });
    child.once('error', (e) => reject(new Error(`cannot start ${bin}: ${e.message}`)));
    exited.then(({ code, signal }) =>
      reject(
        new Error(
          `socketio_chat exited (code ${code}, signal ${signal}) before printing its listening line\n` +
            output.join('\n'),
        ),
      ),
    );
  });
  return within(SERVER_START, 'socketio_chat to print its listening line', listening).then(
    (url) => ({ child, url, exited, output }),
    (e) => {
      child.kill('SIGKILL');
      throw e;
    },
  );
}

async function stopServer(server) {
  if (!server || server.child.exitCode !== null || server.child.signalCode !== null) return;
  server.child.kill('SIGTERM');
  try {
    await within(SERVER_EXIT, 'socketio_chat to exit after SIGTERM', server.exited);
  } catch {
    server.child.kill('SIGKILL');
    await within(SERVER_EXIT, 'socketio_chat to exit after SIGKILL', server.exited);
  }
}

const BIN = process.env.SOCKETIO_CHAT_BIN;
let server;
let URL_BASE;

before(async () => {
  assert.ok(
    BIN,
    'SOCKETIO_CHAT_BIN is not set: build the server with `cargo build -p roomcast-examples` and run\n' +
      '  SOCKETIO_CHAT_BIN=target/debug/socketio_chat node --test tests/socketio/',
  );
  server = await startServer(BIN);
  URL_BASE = server.url;
});

after(async () => {
  await stopServer(server);
});

// ---------------------------------------------------------------------------
// Clients

/** Every client made by a test, closed after it. */
const open = new Set();

afterEach(() => {
  for (const c of open) c.close();
  open.clear();
});

/**
 * Collects the arguments of one event (`my_response` by default) and answers
 * "wait for the first message matching this predicate" for messages that came
 * before or come after the question.
 */
class Inbox {
  constructor(socket, event = 'my_response') {
    this.event = event;
    this.items = [];
    this.waiters = [];
    socket.on(event, (...args) => this.push(args.length === 1 ? args[0] : args));
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

  /** Resolves with the first message (already received or future) matching `pred`. */
  waitFor(pred, what, ms = STEP) {
    const found = this.items.find(pred);
    if (found !== undefined) return Promise.resolve(found);
    let waiter;
    const p = new Promise((resolve) => {
      waiter = { pred, resolve };
      this.waiters.push(waiter);
    });
    return within(ms, `${this.event}: ${what}`, p).finally(() => {
      const i = this.waiters.indexOf(waiter);
      if (i >= 0) this.waiters.splice(i, 1);
    });
  }

  /** The `my_response` whose data is exactly `data`. */
  data(data, ms = STEP) {
    return this.waitFor((m) => m && m.data === data, JSON.stringify(data), ms);
  }

  has(pred) {
    return this.items.some(pred);
  }

  hasData(data) {
    return this.has((m) => m && m.data === data);
  }
}

/**
 * A socket.io-client socket in one of the MODES, with its `my_response` inbox.
 * `upgraded` resolves with the transport name of the engine's `upgrade` event
 * (upgrade mode only; it tracks the latest engine, across reconnections).
 */
function makeClient(mode, username, extra = {}) {
  const socket = io(URL_BASE, {
    transports: MODES[mode],
    forceNew: true,
    auth: { username },
    timeout: STEP,
    reconnectionDelay: 100,
    reconnectionDelayMax: 500,
    ...extra,
  });
  const inbox = new Inbox(socket);
  const client = {
    mode,
    username,
    socket,
    inbox,
    upgraded: null,
    close() {
      socket.disconnect();
      socket.io.engine?.close();
    },
  };
  const track = () => {
    client.upgraded = new Promise((resolve) => socket.io.engine.once('upgrade', (t) => resolve(t.name)));
    client.upgraded.catch(() => {});
  };
  // The manager's `open` is emitted from the engine's, before the engine probes.
  socket.io.on('open', track);
  open.add(client);
  return client;
}

/** Connects a client and checks the `Connected` greeting (count 0). */
async function connectClient(mode, username = token('user'), extra = {}) {
  const c = makeClient(mode, username, extra);
  await within(
    STEP,
    `${mode} client to connect`,
    new Promise((resolve, reject) => {
      c.socket.once('connect', resolve);
      c.socket.once('connect_error', (e) => reject(new Error(`${mode} client could not connect: ${e.message}`)));
    }),
  );
  assert.ok(c.socket.id, 'the CONNECT reply carries a socket id');
  const hello = await c.inbox.data('Connected');
  assert.deepEqual(hello, { data: 'Connected', count: 0 });
  if (mode !== 'upgrade') {
    assert.equal(c.socket.io.engine.transport.name, MODES[mode][0]);
  }
  return c;
}

/** In upgrade mode, waits for the engine's `upgrade` and checks it ends up on WebSocket. */
async function assertUpgraded(c) {
  if (c.mode !== 'upgrade') return;
  assert.ok(c.upgraded, 'the engine opened');
  const name = await within(STEP, 'the engine to upgrade to websocket', c.upgraded);
  assert.equal(name, 'websocket');
  assert.equal(c.socket.io.engine.transport.name, 'websocket');
}

/** Emits with an ack callback and resolves with all ack arguments (bounded). */
function emitAck(socket, event, ...args) {
  return new Promise((resolve, reject) => {
    socket.timeout(STEP).emit(event, ...args, (err, ...reply) => {
      if (err) reject(new Error(`no ack for ${event} within ${STEP} ms`));
      else resolve(reply);
    });
  });
}

/** A round trip proving the client is healthy: my_event echo with its ack. */
async function echo(c, data = token('echo')) {
  const ack = await c.socket.timeout(STEP).emitWithAck('my_event', { data });
  assert.equal(ack.ok, true);
  const reply = await c.inbox.data(data);
  assert.equal(reply.count, ack.count, 'the ack and the reply carry the same count');
  return ack.count;
}

/**
 * A fence: `from` broadcasts a fresh token and every client in `to` waits for
 * it. Anything the server queued for them before the broadcast has arrived
 * once this resolves.
 */
async function fence(from, to) {
  const data = token('fence');
  const ack = await from.socket.timeout(STEP).emitWithAck('my_broadcast_event', { data });
  assert.equal(ack.ok, true);
  const line = `${from.username}: ${data}`;
  await Promise.all(to.map((c) => c.inbox.data(line)));
}

/** Binary values as hex (Buffer, ArrayBuffer or typed array), recursively, for deepEqual. */
function normalize(v) {
  if (Buffer.isBuffer(v)) return { bin: v.toString('hex') };
  if (v instanceof ArrayBuffer) return { bin: Buffer.from(new Uint8Array(v)).toString('hex') };
  if (ArrayBuffer.isView(v)) return { bin: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('hex') };
  if (Array.isArray(v)) return v.map(normalize);
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, normalize(x)]));
  return v;
}

function binaryArgs() {
  return [
    Buffer.from([0, 1, 2, 253, 254, 255]),
    {
      label: 'nested',
      inner: { blob: Buffer.from('hello, binary'), list: [Buffer.from([9]), 42, Buffer.alloc(0)] },
      big: randomBytes(100_000),
    },
    'plain text',
  ];
}

// ---------------------------------------------------------------------------
// The chat events, in each client configuration

for (const mode of Object.keys(MODES)) {
  describe(`socket.io-client, transports ${JSON.stringify(MODES[mode])}`, { timeout: TEST_TIMEOUT * 12 }, () => {
    it('connects and gets the Connected response', { timeout: TEST_TIMEOUT }, async () => {
      const c = await connectClient(mode, 'alice');
      assert.equal(c.socket.connected, true);
      await assertUpgraded(c);
      // After the upgrade (or on the single transport) the session still works.
      assert.equal(await echo(c), 1);
    });

    it('my_event echoes to the sender, with counts', { timeout: TEST_TIMEOUT }, async () => {
      const c = await connectClient(mode);
      const other = await connectClient(mode);
      const a = token('a');
      const b = token('b');
      c.socket.emit('my_event', { data: a });
      c.socket.emit('my_event', { data: b });
      assert.deepEqual(await c.inbox.data(a), { data: a, count: 1 });
      assert.deepEqual(await c.inbox.data(b), { data: b, count: 2 });
      // The echo goes to the sender only.
      await fence(c, [c, other]);
      assert.equal(other.inbox.hasData(a) || other.inbox.hasData(b), false);
      await assertUpgraded(c);
    });

    it('acks events sent with a callback (emitWithAck)', { timeout: TEST_TIMEOUT }, async () => {
      const c = await connectClient(mode, 'ackie');
      const data = token('ack');
      const ack1 = await c.socket.timeout(STEP).emitWithAck('my_event', { data });
      assert.deepEqual(ack1, { ok: true, count: 1 });
      assert.deepEqual(await c.inbox.data(data), { data, count: 1 });
      const ack2 = await c.socket.timeout(STEP).emitWithAck('set_username', { data: 'renamed' });
      assert.deepEqual(ack2, { ok: true, count: 2 });
      assert.deepEqual(await c.inbox.data('Username set to renamed'), { data: 'Username set to renamed', count: 2 });
      // Several acks in flight at once, each answered with its own id.
      const tokens = Array.from({ length: 10 }, (_, i) => token(`burst${i}`));
      const acks = await Promise.all(tokens.map((d) => c.socket.timeout(STEP).emitWithAck('my_event', { data: d })));
      assert.deepEqual(
        acks.map((a) => a.count),
        tokens.map((_, i) => 3 + i),
      );
      // my_ping: pong event, and an empty ack.
      const pong = once(c.socket, 'my_pong', 'my_pong');
      const reply = await emitAck(c.socket, 'my_ping');
      assert.deepEqual(reply, []);
      await pong;
      await assertUpgraded(c);
    });

    it('my_room_event reaches room members and not others; leave stops it', { timeout: TEST_TIMEOUT }, async () => {
      const room = token('room');
      const alice = await connectClient(mode, 'alice');
      const bob = await connectClient(mode, 'bob');
      const carol = await connectClient(mode, 'carol');

      const joinA = await alice.socket.timeout(STEP).emitWithAck('join', { room });
      const joinB = await bob.socket.timeout(STEP).emitWithAck('join', { room });
      assert.equal(joinA.ok, true);
      assert.equal(joinB.ok, true);
      const roomsA = await alice.inbox.waitFor((m) => m.data.startsWith('In rooms:') && m.data.includes(room), 'join reply');
      assert.equal(roomsA.count, 1);
      await bob.inbox.waitFor((m) => m.data.startsWith('In rooms:') && m.data.includes(room), 'join reply');

      const msg = token('hello-room');
      const ack = await alice.socket.timeout(STEP).emitWithAck('my_room_event', { room, data: msg });
      assert.deepEqual(ack, { ok: true, count: 2 });
      const line = `alice: ${msg}`;
      assert.deepEqual(await alice.inbox.data(line), { data: line, count: 2 });
      assert.deepEqual(await bob.inbox.data(line), { data: line, count: 2 });
      // carol is not a member: once a later broadcast has reached her, the room
      // event would have too.
      await fence(alice, [alice, bob, carol]);
      assert.equal(carol.inbox.hasData(line), false, 'a non-member received a room event');

      // bob leaves: he no longer gets room events; alice still does.
      const leave = await bob.socket.timeout(STEP).emitWithAck('leave', { room });
      assert.equal(leave.ok, true);
      const left = await bob.inbox.waitFor((m) => m.data.startsWith('In rooms:') && m.count === leave.count, 'leave reply');
      assert.equal(left.data.includes(room), false, `still in ${room} after leave: ${left.data}`);
      const msg2 = token('after-leave');
      const line2 = `alice: ${msg2}`;
      await alice.socket.timeout(STEP).emitWithAck('my_room_event', { room, data: msg2 });
      await alice.inbox.data(line2);
      await fence(alice, [alice, bob, carol]);
      assert.equal(bob.inbox.hasData(line2), false, 'a member that left still received a room event');
      assert.equal(carol.inbox.hasData(line2), false);
      await Promise.all([alice, bob, carol].map(assertUpgraded));
    });

    it('close_room tells the members and empties the room', { timeout: TEST_TIMEOUT }, async () => {
      const room = token('closing');
      const alice = await connectClient(mode, 'alice');
      const bob = await connectClient(mode, 'bob');
      const carol = await connectClient(mode, 'carol');
      await alice.socket.timeout(STEP).emitWithAck('join', { room });
      await bob.socket.timeout(STEP).emitWithAck('join', { room });

      const before = token('before-close');
      await bob.socket.timeout(STEP).emitWithAck('my_room_event', { room, data: before });
      await alice.inbox.data(`bob: ${before}`);

      const ack = await alice.socket.timeout(STEP).emitWithAck('close_room', { room });
      assert.equal(ack.ok, true);
      const closing = `Room ${room} is closing.`;
      assert.deepEqual(await alice.inbox.data(closing), { data: closing, count: ack.count });
      assert.deepEqual(await bob.inbox.data(closing), { data: closing, count: ack.count });

      // After close_room, room events reach nobody (not even the sender).
      const afterClose = token('after-close');
      const line = `bob: ${afterClose}`;
      await bob.socket.timeout(STEP).emitWithAck('my_room_event', { room, data: afterClose });
      await fence(bob, [alice, bob, carol]);
      for (const c of [alice, bob, carol]) {
        assert.equal(c.inbox.hasData(line), false, `${c.username} got a room event after close_room`);
      }
      assert.equal(carol.inbox.hasData(closing), false, 'a non-member got the closing message');
      // The members' rooms no longer list it.
      await alice.socket.timeout(STEP).emitWithAck('leave', { room: token('other') });
      const rooms = await alice.inbox.waitFor((m) => m.data.startsWith('In rooms:') && m.count === ack.count + 1, 'rooms');
      assert.equal(rooms.data.includes(room), false, `still in ${room}: ${rooms.data}`);
      await Promise.all([alice, bob, carol].map(assertUpgraded));
    });

    it('my_broadcast_event reaches every client with the username prefix', { timeout: TEST_TIMEOUT }, async () => {
      const alice = await connectClient(mode, 'alice');
      const bob = await connectClient(mode, 'bob');
      const carol = await connectClient(mode, 'carol');
      const msg = token('all');
      const ack = await alice.socket.timeout(STEP).emitWithAck('my_broadcast_event', { data: msg });
      assert.deepEqual(ack, { ok: true, count: 1 });
      for (const c of [alice, bob, carol]) {
        assert.deepEqual(await c.inbox.data(`alice: ${msg}`), { data: `alice: ${msg}`, count: 1 });
      }
      // set_username changes the prefix.
      await bob.socket.timeout(STEP).emitWithAck('set_username', { data: 'robert' });
      const msg2 = token('renamed');
      bob.socket.emit('my_broadcast_event', { data: msg2 });
      for (const c of [alice, bob, carol]) {
        assert.deepEqual(await c.inbox.data(`robert: ${msg2}`), { data: `robert: ${msg2}`, count: 2 });
      }
      await Promise.all([alice, bob, carol].map(assertUpgraded));
    });

    it('binary arguments round-trip, nested, via ack and via event', { timeout: TEST_TIMEOUT }, async () => {
      const c = await connectClient(mode);
      const args = binaryArgs();
      const viaAck = await emitAck(c.socket, 'my_binary', ...args);
      assert.deepEqual(normalize(viaAck), normalize(args));
      assert.ok(Buffer.isBuffer(viaAck[0]) || viaAck[0] instanceof ArrayBuffer, 'binary comes back as binary');

      const event = new Inbox(c.socket, 'my_binary');
      const args2 = binaryArgs();
      c.socket.emit('my_binary', ...args2);
      const viaEvent = await event.waitFor(() => true, 'my_binary echo');
      assert.deepEqual(normalize(viaEvent), normalize(args2));

      // A lone binary argument, and several in a row keep their order.
      const lone = [randomBytes(16), randomBytes(16), randomBytes(16)];
      const echoes = await Promise.all(lone.map((b) => emitAck(c.socket, 'my_binary', b)));
      assert.deepEqual(normalize(echoes), normalize(lone.map((b) => [b])));
      // Text events still work after binary ones.
      await echo(c);
      await assertUpgraded(c);
    });

    it('disconnect_request: "io server disconnect", no automatic reconnection, then connect() works', { timeout: TEST_TIMEOUT }, async () => {
      const c = await connectClient(mode, 'leaver');
      const witness = await connectClient(mode, 'witness');
      await assertUpgraded(c);
      const oldId = c.socket.id;
      let connects = 0;
      let attempts = 0;
      c.socket.on('connect', () => connects++);
      c.socket.io.on('reconnect_attempt', () => attempts++);

      const disconnected = once(c.socket, 'disconnect', 'disconnect after disconnect_request');
      c.socket.emit('disconnect_request');
      assert.deepEqual(await c.inbox.data('Disconnected!'), { data: 'Disconnected!', count: 1 });
      const [reason] = await disconnected;
      assert.equal(reason, 'io server disconnect');
      assert.equal(c.socket.connected, false);
      // socket.io-client does not reconnect by itself after a server disconnect:
      // the socket is inactive and the manager has no reconnection scheduled.
      assert.equal(c.socket.active, false, 'the socket would reconnect by itself');
      assert.equal(c.socket.io._reconnecting, false, 'the manager schedules a reconnection');

      // The server dropped the socket: a broadcast reaches the witness and not it.
      const msg = token('while-away');
      await witness.socket.timeout(STEP).emitWithAck('my_broadcast_event', { data: msg });
      await witness.inbox.data(`witness: ${msg}`);
      await fence(witness, [witness]);
      assert.equal(connects, 0, 'reconnected without connect()');
      assert.equal(attempts, 0, 'reconnection attempts without connect()');

      // connect() again: a new server-side socket, greeted and counted from 0.
      c.socket.connect();
      await once(c.socket, 'connect', 'reconnect after connect()');
      assert.equal(connects, 1);
      assert.notEqual(c.socket.id, oldId, 'a new socket id after reconnecting');
      const greetings = await c.inbox.waitFor(
        (m) => m.data === 'Connected' && c.inbox.items.filter((x) => x.data === 'Connected').length === 2,
        'a second Connected',
      );
      assert.equal(greetings.count, 0);
      assert.equal(await echo(c), 1, 'the count starts again on the new socket');
      assert.equal(c.inbox.hasData(`witness: ${msg}`), false, 'got a broadcast made while disconnected');
      await assertUpgraded(c);
      // And the server can disconnect it a second time.
      const again = once(c.socket, 'disconnect', 'second disconnect');
      c.socket.emit('disconnect_request');
      assert.equal((await again)[0], 'io server disconnect');
    });
  });
}

// ---------------------------------------------------------------------------
// Bad input, over raw HTTP and WebSocket

const EIO = (q = '') => `${URL_BASE}/socket.io/?EIO=4&transport=polling${q}`;

/** A fetch bounded by STEP. */
function get(url, init = {}) {
  return fetch(url, { ...init, signal: AbortSignal.timeout(STEP) });
}

/** Opens a polling session (no namespace) and returns its sid. */
async function pollingHandshake() {
  const r = await get(EIO());
  assert.equal(r.status, 200);
  const body = await r.text();
  assert.equal(body[0], '0', `handshake body: ${body}`);
  const open = JSON.parse(body.slice(1));
  assert.equal(typeof open.sid, 'string');
  assert.equal(open.maxPayload, MAX_PAYLOAD);
  return open.sid;
}

/** Asserts `sid` is gone: 400 with `{"code":1,"message":"Session ID unknown"}`. */
async function assertSessionUnknown(sid, method = 'GET') {
  const r = await get(EIO(`&sid=${encodeURIComponent(sid)}`), method === 'POST' ? { method, body: '40' } : {});
  assert.equal(r.status, 400);
  assert.match(r.headers.get('content-type') ?? '', /application\/json/);
  assert.deepEqual(await r.json(), { code: 1, message: 'Session ID unknown' });
}

/** A raw Engine.IO WebSocket; resolves once the open packet arrived. */
async function rawWebSocket() {
  const ws = new WebSocket(`${URL_BASE.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket`);
  const messages = [];
  const closed = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  ws.on('error', () => {}); // a refused or reset connection shows as `close`
  const first = within(
    STEP,
    'the Engine.IO open packet over WebSocket',
    new Promise((resolve, reject) => {
      ws.on('message', (data, isBinary) => {
        messages.push(isBinary ? data : data.toString());
        if (messages.length === 1) resolve(messages[0]);
      });
      closed.then(({ code }) => reject(new Error(`closed (${code}) before the open packet`)));
    }),
  );
  const open = await first;
  assert.equal(open[0], '0');
  const rawClient = { ws, messages, closed, open: JSON.parse(open.slice(1)), close: () => ws.terminate() };
  return rawClient;
}

/** A healthy socket.io client (default transports, upgrading) still works. */
async function assertHealthy() {
  const c = await connectClient('upgrade', token('healthy'));
  assert.equal(await echo(c), 1);
  await assertUpgraded(c);
  c.close();
}

describe('bad input over raw HTTP and WebSocket', { timeout: TEST_TIMEOUT * 10 }, () => {
  const garbage = [
    ['an unknown Engine.IO packet type', 'garbage'],
    ['an empty text frame', ''],
    ['a message that is no Socket.IO packet', '4garbage'],
    ['a Socket.IO event with broken JSON', '42["my_event",{'],
  ];
  for (const [what, frame] of garbage) {
    it(`${what} over WebSocket closes that connection`, { timeout: TEST_TIMEOUT }, async () => {
      const raw = await rawWebSocket();
      open.add(raw);
      if (frame.startsWith('4')) {
        // Connect to the namespace first, so a socket exists to be torn down.
        raw.ws.send('40{"username":"raw"}');
      }
      raw.ws.send(frame);
      const { code } = await within(STEP, `the server to close after ${JSON.stringify(frame)}`, raw.closed);
      assert.notEqual(code, 1000, 'a protocol error is not a normal closure');
      await assertHealthy();
    });
  }

  it('a binary frame with no binary packet pending closes the connection', { timeout: TEST_TIMEOUT }, async () => {
    const raw = await rawWebSocket();
    open.add(raw);
    raw.ws.send('40');
    raw.ws.send(Buffer.from([1, 2, 3]));
    await within(STEP, 'the server to close after a stray binary frame', raw.closed);
    await assertHealthy();
  });

  it('an oversize polling POST gets 413 and ends the session', { timeout: TEST_TIMEOUT }, async () => {
    const sid = await pollingHandshake();
    const body = '4' + 'x'.repeat(MAX_PAYLOAD + 1);
    const r = await get(EIO(`&sid=${sid}`), { method: 'POST', body, headers: { 'content-type': 'text/plain;charset=UTF-8' } });
    assert.equal(r.status, 413);
    await r.arrayBuffer();
    await assertSessionUnknown(sid);
    await assertHealthy();
  });

  it('an oversize WebSocket message closes that connection', { timeout: TEST_TIMEOUT }, async () => {
    const raw = await rawWebSocket();
    open.add(raw);
    raw.ws.send('40');
    raw.ws.send(`42["my_event",{"data":"${'z'.repeat(MAX_PAYLOAD + 1)}"}]`);
    // 1009 "message too big", as the reference server does (library.rs checks the same).
    const { code } = await within(STEP, 'the server to close after an oversize message', raw.closed);
    assert.equal(code, 1009);
    assert.equal(
      raw.messages.some((m) => typeof m === 'string' && m.includes('zzzz')),
      false,
      'the oversize event was handled',
    );
    await assertHealthy();
  });

  it('a polling POST at the size limit is accepted', { timeout: TEST_TIMEOUT }, async () => {
    const sid = await pollingHandshake();
    // 40 (connect) then a message padding the body to exactly MAX_PAYLOAD bytes.
    const head = '40\x1e42["my_event",{"data":"';
    const tail = '"}]';
    const body = head + 'y'.repeat(MAX_PAYLOAD - head.length - tail.length) + tail;
    assert.equal(Buffer.byteLength(body), MAX_PAYLOAD);
    const r = await get(EIO(`&sid=${sid}`), { method: 'POST', body });
    assert.equal(r.status, 200);
    assert.equal(await r.text(), 'ok');
    // Poll until the echo of the big event has come (the CONNECT reply and the
    // greeting come first).
    const event = (p) => (p.startsWith('42[') ? JSON.parse(p.slice(2)) : []);
    const isEcho = (p) => event(p)[0] === 'my_response' && event(p)[1].count === 1;
    const packets = [];
    for (let i = 0; i < 5 && !packets.some(isEcho); i++) {
      const poll = await get(EIO(`&sid=${sid}`));
      assert.equal(poll.status, 200);
      packets.push(...(await poll.text()).split('\x1e'));
    }
    assert.match(packets[0], /^40\{"sid":"[^"]+"\}$/);
    assert.ok(packets.some((p) => event(p)[0] === 'my_response' && event(p)[1].data === 'Connected'));
    const big = packets.find(isEcho);
    assert.ok(big, `no echo of the event at the size limit in ${packets.length} packets`);
    assert.equal(event(big)[1].data.length, MAX_PAYLOAD - head.length - tail.length);
    // A client close over polling: the next poll is answered (ending with a
    // noop) and the session is gone.
    const close = await get(EIO(`&sid=${sid}`), { method: 'POST', body: '1' });
    assert.equal(close.status, 200);
    await close.text();
    const last = await get(EIO(`&sid=${sid}`));
    assert.equal(last.status, 200);
    assert.equal((await last.text()).split('\x1e').at(-1), '6');
    await assertSessionUnknown(sid);
    await assertHealthy();
  });

  it('an unknown sid gets 400 {"code":1,"message":"Session ID unknown"}', { timeout: TEST_TIMEOUT }, async () => {
    await assertSessionUnknown('no-such-session');
    await assertSessionUnknown('no-such-session', 'POST');
    await assertSessionUnknown(randomBytes(15).toString('base64url'));
    // Also over WebSocket: the upgrade request is refused the same way.
    const r = await get(`${URL_BASE}/socket.io/?EIO=4&transport=websocket&sid=no-such-session`);
    assert.equal(r.status, 400);
    assert.deepEqual(await r.json(), { code: 1, message: 'Session ID unknown' });
    await assertHealthy();
  });

  it('a duplicate concurrent GET poll gets 400 and ends the session', { timeout: TEST_TIMEOUT }, async () => {
    const sid = await pollingHandshake();
    // Nothing is queued, so the first GET to arrive is held open; the second
    // one is the duplicate. Either may reach the server first: one gets 400,
    // the held one is answered with a close packet.
    const [a, b] = await Promise.all([get(EIO(`&sid=${sid}`)), get(EIO(`&sid=${sid}`))]);
    const answers = await Promise.all([a, b].map(async (r) => ({ status: r.status, body: await r.text() })));
    answers.sort((x, y) => x.status - y.status);
    assert.equal(answers[0].status, 200, JSON.stringify(answers));
    assert.equal(answers[0].body, '1', 'the held poll gets a close packet');
    assert.equal(answers[1].status, 400, JSON.stringify(answers));
    assert.deepEqual(JSON.parse(answers[1].body), { code: 3, message: 'Bad request' });
    await assertSessionUnknown(sid);
    await assertHealthy();
  });

  it('a client-sent ping over polling closes the session', { timeout: TEST_TIMEOUT }, async () => {
    const sid = await pollingHandshake();
    let r = await get(EIO(`&sid=${sid}`), { method: 'POST', body: '40' });
    assert.equal(r.status, 200);
    await r.text();
    r = await get(EIO(`&sid=${sid}`));
    const connected = await r.text();
    assert.match(connected, /^40\{"sid":/);
    r = await get(EIO(`&sid=${sid}`), { method: 'POST', body: '2' });
    await r.text();
    await assertSessionUnknown(sid);
    await assertHealthy();
  });

  it('a client-sent ping over WebSocket closes the connection', { timeout: TEST_TIMEOUT }, async () => {
    const raw = await rawWebSocket();
    open.add(raw);
    raw.ws.send('40');
    raw.ws.send('2');
    await within(STEP, 'the server to close after a client ping', raw.closed);
    await assertSessionUnknown(raw.open.sid);
    await assertHealthy();
  });
});
