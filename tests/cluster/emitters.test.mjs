// End-to-end tests of Node's @socket.io/redis-emitter (the real npm package,
// on the real `redis` client) driving a two-node roomcast cluster.
//
//   cargo build -p roomcast-cli
//   ROOMCAST_BIN=$PWD/target/debug/roomcast node --test tests/cluster/
//
// The file starts its own redis-server on a free loopback port and two
// roomcast nodes on it (`--broker ... --emitters python-socketio,socket.io`,
// built-in Socket.IO events on, namespaces `/` and `/admin`). Each test puts
// socket.io-client sockets and native WebSocket clients on both nodes, makes
// the emitter publish, and checks what each client got.
//
// Exactly-once: every node applies the emitter's messages in the order Redis
// delivers them, and each client's queue keeps that order, so once a later
// "fence" emit has reached a client, anything earlier meant for it has too.
// The tests then compare the whole list of events each client received.
// Every wait is bounded (STEP); nothing sleeps.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { Emitter } from '@socket.io/redis-emitter';
import { createClient } from 'redis';
import {
  STEP,
  closeAll,
  emitterCounts,
  events,
  join,
  nativeClient,
  nativeRequest,
  outputOf,
  receive,
  received,
  sioClient,
  startRedis,
  startRoomcast,
  stopProcess,
  token,
  within,
} from './harness.mjs';

const TEST_TIMEOUT = 30_000;
/** Both nodes accept Socket.IO clients on `/` and `/admin`. */
const CONFIG = '[socketio]\nnamespaces = ["/", "/admin"]\n';

let redis;
let nodeA;
let nodeB;
let publisher;
let emitter;

before(async () => {
  redis = await startRedis();
  [nodeA, nodeB] = await Promise.all([
    startRoomcast(redis.url, { config: CONFIG }),
    startRoomcast(redis.url, { config: CONFIG }),
  ]);
  publisher = createClient({ url: redis.url });
  publisher.on('error', () => {});
  await within(STEP, 'the redis client to connect', publisher.connect());
  emitter = new Emitter(publisher);
});

afterEach(() => {
  closeAll();
});

after(async () => {
  if (publisher?.isOpen) await publisher.close().catch(() => publisher.destroy());
  await Promise.all([stopProcess(nodeA), stopProcess(nodeB)]);
  await stopProcess(redis);
});

/** Adds both nodes' recent output to a failure. */
async function withLogs(fn) {
  try {
    await fn();
  } catch (e) {
    e.message += `\n--- node A ---\n${outputOf(nodeA)}\n--- node B ---\n${outputOf(nodeB)}`;
    throw e;
  }
}

function test(name, fn) {
  it(name, { timeout: TEST_TIMEOUT }, () => withLogs(fn));
}

/**
 * The emitter sends a fresh `fence` to every client of `/` (and of `/admin`
 * when one of `clients` is there); resolves once each of `clients` has it.
 */
async function fence(clients) {
  const tag = token('fence');
  emitter.emit('fence', tag);
  if (clients.some((c) => c.nsp === '/admin')) emitter.of('/admin').emit('fence', tag);
  await Promise.all(clients.map((c) => receive(c, 'fence', tag)));
}

/** The four kinds of client placement: Socket.IO and native, on node A and on node B. */
async function fourClients() {
  const [sioA, nativeA, sioB, nativeB] = await Promise.all([
    sioClient(nodeA.url, { user: 'sio-a' }),
    nativeClient(nodeA.url, { user: 'native-a' }),
    sioClient(nodeB.url, { user: 'sio-b' }),
    nativeClient(nodeB.url, { user: 'native-b' }),
  ]);
  return { sioA, nativeA, sioB, nativeB, all: [sioA, nativeA, sioB, nativeB] };
}

function assertEvents(clients, expected) {
  for (const c of clients) {
    assert.deepEqual(events(c), expected, `events received by ${c.kind} client ${c.user} (${c.id})`);
  }
}

async function countsOfBoth() {
  const [a, b] = await Promise.all([emitterCounts(nodeA.url), emitterCounts(nodeB.url)]);
  return { a: a['socket.io'], b: b['socket.io'] };
}

function delta(before, after) {
  return Object.fromEntries(Object.keys(after).map((k) => [k, after[k] - before[k]]));
}

describe('@socket.io/redis-emitter → two roomcast nodes on one Redis', () => {
  test("to('news').emit reaches each member once, on both nodes, Socket.IO and native", async () => {
    const { sioA, nativeA, sioB, nativeB } = await fourClients();
    const [outsiderA, outsiderB] = await Promise.all([
      sioClient(nodeA.url, { user: 'outsider-a' }),
      nativeClient(nodeB.url, { user: 'outsider-b' }),
    ]);
    const members = [sioA, nativeA, sioB, nativeB];
    await Promise.all(members.map((c) => join(c, 'news')));

    const headline = { title: token('headline'), n: 1, tags: ['a', 'b'], ok: true, none: null };
    emitter.to('news').emit('headline', headline);
    for (const c of members) await receive(c, 'headline');
    await fence([...members, outsiderA, outsiderB]);

    assertEvents(members, ['headline']);
    assertEvents([outsiderA, outsiderB], []);
    for (const c of [sioA, sioB]) assert.deepEqual(received(c, 'headline'), [[headline]]);
    for (const c of [nativeA, nativeB]) {
      const [frame] = received(c, 'headline');
      assert.deepEqual(frame.data, headline, JSON.stringify(frame));
    }

    // Several rooms: a client in two of them still gets the emit once.
    await Promise.all([join(sioA, 'sport'), join(nativeB, 'sport'), join(outsiderB, 'sport')]);
    emitter.to('news').to('sport').emit('digest', 2);
    await fence([...members, outsiderA, outsiderB]);
    assertEvents(members, ['headline', 'digest']);
    assertEvents([outsiderB], ['digest']);
    assertEvents([outsiderA], []);
  });

  test("emit('all', 1, 'two') reaches everyone: Socket.IO gets two arguments, native gets [1,\"two\"]", async () => {
    const { sioA, nativeA, sioB, nativeB, all } = await fourClients();
    emitter.emit('all', 1, 'two');
    // One array argument stays one argument.
    emitter.emit('one-array', [1, 'two']);
    // Non-integers, null and nesting survive the msgpack round trip.
    emitter.emit('mixed', 2.5, null, { nested: [true, -7] });
    // Flags change nothing here.
    emitter.volatile.emit('flagged', 'v');
    emitter.compress(false).emit('flagged', 'c');
    await fence(all);

    assertEvents(all, ['all', 'one-array', 'mixed', 'flagged', 'flagged']);
    for (const c of [sioA, sioB]) {
      assert.deepEqual(received(c, 'all'), [[1, 'two']]);
      assert.deepEqual(received(c, 'one-array'), [[[1, 'two']]]);
      assert.deepEqual(received(c, 'mixed'), [[2.5, null, { nested: [true, -7] }]]);
    }
    for (const c of [nativeA, nativeB]) {
      assert.deepEqual(received(c, 'all').map((f) => f.data), [[1, 'two']]);
      assert.deepEqual(received(c, 'one-array').map((f) => f.data), [[1, 'two']]);
      assert.deepEqual(received(c, 'mixed').map((f) => f.data), [[2.5, null, { nested: [true, -7] }]]);
    }
  });

  test("except('news') leaves the room's members out; to('news').except(socket id) leaves one socket out", async () => {
    const { sioA, nativeA, sioB, nativeB, all } = await fourClients();
    await Promise.all([join(sioA, 'news'), join(nativeB, 'news'), join(sioB, 'news')]);

    emitter.except('news').emit('not-news', 'x');
    emitter.to('news').except(sioA.id).emit('news-but-one', 'y');
    emitter.to('news').except([sioB.id, nativeB.id]).emit('news-but-two', 'z');
    await fence(all);

    assertEvents([nativeA], ['not-news']);
    assertEvents([sioA], ['news-but-two']);
    assertEvents([sioB, nativeB], ['news-but-one']);
  });

  test('to(socket.id) reaches only that socket, on whichever node holds it', async () => {
    const { sioA, nativeA, sioB, nativeB, all } = await fourClients();
    assert.match(sioB.id, /^[0-9a-f]{16}$/, 'a Socket.IO socket id is a roomcast connection id');

    emitter.to(sioB.id).emit('direct', 'to-sio-b');
    // A native connection id works the same way.
    emitter.to(nativeA.id).emit('direct', 'to-native-a');
    // Several ids at once go out on the namespace channel, with a room list.
    emitter.to([sioA.id, nativeB.id]).emit('direct-two', 'to-two');
    await fence(all);

    assertEvents([sioB], ['direct']);
    assert.deepEqual(received(sioB, 'direct'), [['to-sio-b']]);
    assertEvents([nativeA], ['direct']);
    assert.equal(received(nativeA, 'direct')[0].data, 'to-native-a');
    assertEvents([sioA, nativeB], ['direct-two']);
  });

  test("in('news').socketsJoin('extra') then to('extra').emit reaches them; socketsLeave stops it", async () => {
    const { sioA, nativeA, sioB, nativeB, all } = await fourClients();
    const members = [sioA, nativeB];
    await Promise.all(members.map((c) => join(c, 'news')));
    const extra = token('extra');

    // Published back to back: each node applies the join before the emit.
    emitter.in('news').socketsJoin(extra);
    emitter.to(extra).emit('extra-1', 'one');
    await fence(all);
    assertEvents(members, ['extra-1']);
    assertEvents([nativeA, sioB], []);
    // A native client is told the server put it into the room.
    const joined = nativeB.inbox.items.filter((f) => f.type === 'joined');
    assert.deepEqual(joined, [{ type: 'joined', room: extra }]);
    const presence = await nativeRequest(nativeA, { type: 'presence', room: extra });
    assert.equal(presence.connections, 2, `presence of ${extra}: ${JSON.stringify(presence)}`);

    emitter.in('news').socketsLeave(extra);
    emitter.to(extra).emit('extra-2', 'two');
    await fence(all);
    assertEvents(members, ['extra-1']);
    assertEvents([nativeA, sioB], []);
    const left = nativeB.inbox.items.filter((f) => f.type === 'left');
    assert.deepEqual(left, [{ type: 'left', room: extra }]);

    // Without a room, socketsJoin takes every socket of the namespace.
    const everyone = token('everyone');
    emitter.socketsJoin(everyone);
    emitter.to(everyone).emit('everyone-1', 'all');
    await fence(all);
    assertEvents(members, ['extra-1', 'everyone-1']);
    assertEvents([nativeA, sioB], ['everyone-1']);
  });

  test("in('news').disconnectSockets() closes the room's clients on both nodes and no others", async () => {
    const { sioA, nativeA, sioB, nativeB } = await fourClients();
    await Promise.all([join(sioA, 'news'), join(nativeB, 'news')]);

    emitter.in('news').disconnectSockets();
    const reason = await sioA.disconnects.waitFor(() => true, 'disconnect');
    assert.equal(reason, 'io server disconnect', 'the socket got a Socket.IO DISCONNECT (it does not reconnect)');
    const frame = await nativeB.inbox.waitFor((f) => f.type === 'disconnect', 'disconnect frame');
    assert.equal(frame.code, 4500, JSON.stringify(frame));
    assert.equal(frame.reconnect, false, JSON.stringify(frame));
    const closed = await within(STEP, 'the native connection to close', nativeB.closed);
    assert.equal(closed.code, 4500);

    const survivors = [nativeA, sioB];
    emitter.emit('after', 'still here');
    await fence(survivors);
    assertEvents(survivors, ['after']);
    assert.equal(sioB.socket.connected, true);
    assertEvents([sioA, nativeB], []);
    assert.equal(sioA.socket.connected, false);
    assert.deepEqual(sioA.disconnects.items, ['io server disconnect']);
  });

  test("of('/admin') reaches only that namespace; native clients count as '/'", async () => {
    const [admin, sioA, nativeB] = await Promise.all([
      sioClient(nodeA.url, { user: 'admin', nsp: '/admin' }),
      sioClient(nodeA.url, { user: 'root' }),
      nativeClient(nodeB.url, { user: 'native-b' }),
    ]);
    const all = [admin, sioA, nativeB];
    await Promise.all(all.map((c) => join(c, 'news')));

    emitter.of('/admin').emit('admin-only', 1);
    emitter.emit('root-only', 2);
    emitter.of('/admin').to('news').emit('admin-news', 3);
    emitter.to('news').emit('root-news', 4);
    await fence(all);

    assertEvents([admin], ['admin-only', 'admin-news']);
    assertEvents([sioA, nativeB], ['root-only', 'root-news']);
  });

  test('malformed messages are counted as malformed, binary ones as unsupported, and the nodes keep working', async () => {
    const { sioA, nativeB } = await fourClients();
    const clients = [sioA, nativeB];
    const before = await countsOfBoth();

    // On the broadcast channel: a byte msgpack never uses, then well-formed
    // msgpack of the wrong shape; on the request channel: broken JSON.
    await publisher.publish('socket.io#/#', Buffer.from([0xc1]));
    await publisher.publish('socket.io#/#', Buffer.from([0x81, 0xa5, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x01])); // {hello: 1}
    await publisher.publish('socket.io-request#/#', '{"type":2,');
    // Binary arguments do not travel through rooms: counted as unsupported.
    emitter.emit('binary', Buffer.from([0, 1, 2]));
    emitter.emit('still-works', 'yes');
    for (const c of clients) await receive(c, 'still-works', 'yes');

    const after = await countsOfBoth();
    for (const node of ['a', 'b']) {
      assert.deepEqual(
        delta(before[node], after[node]),
        { applied: 1, malformed: 3, unsupported: 1, dropped: 0 },
        `node ${node.toUpperCase()}: socket.io emitter counts before ${JSON.stringify(before[node])}, after ${JSON.stringify(after[node])}`,
      );
    }
    assertEvents(clients, ['still-works']);
  });

  test('serverSideEmit is accepted and counted, and reaches no client', async () => {
    const { all } = await fourClients();
    const before = await countsOfBoth();

    emitter.serverSideEmit('hello', { from: 'emitter' }, 2);
    emitter.emit('after-sse', 'ok');
    await Promise.all(all.map((c) => receive(c, 'after-sse', 'ok')));

    const after = await countsOfBoth();
    for (const node of ['a', 'b']) {
      assert.deepEqual(delta(before[node], after[node]), { applied: 2, malformed: 0, unsupported: 0, dropped: 0 });
    }
    assertEvents(all, ['after-sse']);
  });
});
