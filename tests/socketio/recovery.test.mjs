// Connection-state recovery with the stock socket.io-client (v4.8): a client
// whose connection is cut (no close frame) or whose node is killed while
// publications go on reconnects, through a small TCP proxy, to the same node
// or to another node of a Redis cluster, and gets its socket id and rooms back
// and every missed event once, in order (`socket.recovered` is true).
//
//   cargo build -p roomcast-cli
//   ROOMCAST_BIN=$PWD/target/debug/roomcast node --test tests/socketio/recovery.test.mjs
//
// Every wait is an event or a response with a bound (STEP).

import { describe, it, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { io } from 'socket.io-client';
import { Inbox, STEP, startRedis, startServe, stopProcess, within, token } from '../cluster/harness.mjs';

const TEST_TIMEOUT = 60_000;
const ENV = {
  ROOMCAST_SOCKETIO_BUILTIN_EVENTS: 'true',
  ROOMCAST_SOCKETIO_RECOVERY_MS: '60000',
  ROOMCAST_HISTORY_SIZE: '1000',
};

/**
 * A TCP proxy on a free loopback port to `target` (a port). `cut()` destroys
 * every connection through it (the client sees the socket close without a
 * WebSocket close frame); `to(port)` sends new connections elsewhere.
 */
async function proxy(target) {
  const live = new Set();
  let port = target;
  const server = net.createServer((down) => {
    const up = net.connect(port, '127.0.0.1');
    live.add(down);
    live.add(up);
    down.pipe(up);
    up.pipe(down);
    const gone = () => {
      down.destroy();
      up.destroy();
      live.delete(down);
      live.delete(up);
    };
    down.on('error', gone).on('close', gone);
    up.on('error', gone).on('close', gone);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cut() {
      for (const s of live) s.destroy();
    },
    to(p) {
      port = p;
    },
    close() {
      this.cut();
      server.close();
    },
  };
}

const portOf = (url) => Number(new URL(url).port);

/** A reconnecting socket.io-client socket; every event lands in `events`. */
async function client(url, user) {
  const socket = io(url, {
    transports: ['websocket'],
    forceNew: true,
    auth: { user },
    timeout: STEP,
    reconnectionDelay: 100,
    reconnectionDelayMax: 300,
  });
  const c = { socket, events: new Inbox(`events of ${user}`), connects: new Inbox(`connects of ${user}`) };
  socket.onAny((event, ...args) => c.events.push({ event, args }));
  socket.on('connect', () => c.connects.push({ id: socket.id, recovered: socket.recovered }));
  await c.connects.waitFor(() => true, `${user} to connect`);
  return c;
}

async function join(c, room) {
  const ack = await c.socket.timeout(STEP).emitWithAck('roomcast:join', { room });
  assert.equal(ack.joined, true, JSON.stringify(ack));
}

async function publish(base, room, n) {
  const res = await within(
    STEP,
    `publish ${n}`,
    fetch(`${base}/api/publish`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ room, event: 'n', data: n }),
    }),
  );
  assert.equal(res.status, 200, await res.text());
}

/** The `n` events' data, in arrival order. */
function received(c) {
  return c.events.filter((e) => e.event === 'n').map((e) => e.args[0]);
}

/** Waits until `c` has the event with data `n`. */
function has(c, n) {
  return c.events.waitFor((e) => e.event === 'n' && e.args[0] === n, `event ${n}`);
}

const procs = [];
const closers = [];
afterEach(() => {
  for (const f of closers.splice(0)) f();
});
after(async () => {
  for (const p of procs) await stopProcess(p);
});

describe('socket.io connection-state recovery', () => {
  it('one node: a cut connection recovers its id and rooms and gets every event once, in order', { timeout: TEST_TIMEOUT }, async () => {
    const node = await startServe([], { env: ENV });
    procs.push(node);
    const p = await proxy(portOf(node.url));
    closers.push(() => p.close());
    const c = await client(p.url, token('ann'));
    closers.push(() => c.socket.disconnect());
    const first = c.connects.items[0];
    assert.equal(first.recovered, false);
    await join(c, 'chat:1');
    for (let n = 1; n <= 20; n++) await publish(node.url, 'chat:1', n);
    await has(c, 20);
    // The events carry the offset as their last argument.
    const last = c.events.filter((e) => e.event === 'n').at(-1);
    assert.equal(typeof last.args.at(-1), 'string');
    // Cut the network; events go on while the client is away (some of them
    // reach the dead socket before the server notices).
    p.cut();
    for (let n = 21; n <= 60; n++) await publish(node.url, 'chat:1', n);
    const again = await c.connects.waitFor((x) => x !== first, 'the reconnect');
    assert.equal(again.recovered, true, 'socket.recovered');
    assert.equal(again.id, first.id, 'the socket id is kept');
    for (let n = 61; n <= 70; n++) await publish(node.url, 'chat:1', n);
    await has(c, 70);
    assert.deepEqual(received(c), Array.from({ length: 70 }, (_, i) => i + 1));
    // Still in the room: a join answers "already a member".
    const ack = await c.socket.timeout(STEP).emitWithAck('roomcast:join', { room: 'chat:1' });
    assert.equal(ack.joined, false, JSON.stringify(ack));
  });

  it('a client that disconnects on purpose is not recovered', { timeout: TEST_TIMEOUT }, async () => {
    const node = await startServe([], { env: ENV });
    procs.push(node);
    const c = await client(node.url, token('bob'));
    closers.push(() => c.socket.disconnect());
    await join(c, 'chat:2');
    const first = c.connects.items[0];
    c.socket.disconnect();
    c.socket.connect();
    const again = await c.connects.waitFor((x) => x !== first, 'the new connection');
    assert.equal(again.recovered, false);
    assert.notEqual(again.id, first.id);
  });

  it('two nodes on Redis: a client whose node is killed recovers on the other node', { timeout: TEST_TIMEOUT }, async () => {
    const redis = await startRedis();
    procs.push(redis);
    const args = ['--broker', redis.url];
    const a = await startServe(args, { env: ENV });
    const b = await startServe(args, { env: ENV });
    procs.push(a, b);
    const p = await proxy(portOf(a.url));
    closers.push(() => p.close());
    const c = await client(p.url, token('cy'));
    closers.push(() => c.socket.disconnect());
    const first = c.connects.items[0];
    await join(c, 'chat:3');
    for (let n = 1; n <= 10; n++) await publish(b.url, 'chat:3', n);
    await has(c, 10);
    // Node a dies without a word; the proxy now leads to node b.
    p.to(portOf(b.url));
    a.child.kill('SIGKILL');
    await within(STEP, 'node a to die', a.exited);
    for (let n = 11; n <= 30; n++) await publish(b.url, 'chat:3', n);
    const again = await c.connects.waitFor((x) => x !== first, 'the reconnect to node b');
    assert.equal(again.recovered, true, 'socket.recovered');
    assert.equal(again.id, first.id, 'the socket id is kept');
    for (let n = 31; n <= 40; n++) await publish(b.url, 'chat:3', n);
    await has(c, 40);
    // 31 to 40 reached it on node b: its room came back with it there.
    assert.deepEqual(received(c), Array.from({ length: 40 }, (_, i) => i + 1));
  });
});
