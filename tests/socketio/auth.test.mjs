// The stock socket.io-client (v4.8) against the roomcast binary in token mode,
// with the event proxy pointed at a small HTTP backend in this process:
// tokens in the CONNECT payload, connect_error codes, refresh, and client
// events answered by the backend (the ack) whose actions reach other clients.
//
//   cargo build -p roomcast-cli
//   ROOMCAST_BIN=$PWD/target/debug/roomcast node --test tests/socketio/auth.test.mjs
//
// Every wait is an event, an ack or a response with a bound (STEP).

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import http from 'node:http';
import { io } from 'socket.io-client';
import { Inbox, STEP, startServe, stopProcess, outputOf, within } from '../cluster/harness.mjs';

const SECRET = randomBytes(16).toString('hex');
const PROXY_SECRET = randomBytes(8).toString('hex');

const b64url = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

/** An HS256 JWT for `claims`, signed with `secret`. */
function jwt(claims, secret = SECRET) {
  const head = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

const now = () => Math.floor(Date.now() / 1000);

// ---------------------------------------------------------------------------
// The backend: records each call and answers by event name.

const calls = new Inbox('backend calls');

function answer(call) {
  const { event, data } = call.body;
  if (event === 'chat.send') {
    return {
      result: { id: 7, by: call.body.user },
      actions: [{ type: 'publish', room: 'team:1', event: 'message', data: { text: data.text, by: call.body.user } }],
    };
  }
  if (event === 'chat.fail') return { error: { code: 'invalid', message: 'text too long' } };
  return { error: { code: 'unknown_event', message: `no handler for ${event}` } };
}

function startBackend() {
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const call = { path: req.url, headers: req.headers, body: JSON.parse(body || 'null') };
      calls.push(call);
      const out = req.headers['x-roomcast-secret'] === PROXY_SECRET ? answer(call) : { error: { code: 'forbidden' } };
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(out));
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

// ---------------------------------------------------------------------------

let backend;
let roomcast;

before(async () => {
  backend = await startBackend();
  const { port } = backend.address();
  roomcast = await startServe(['--auth', 'token', '--jwt-secret', SECRET], {
    config: `
[proxy]
rpc_url = "http://127.0.0.1:${port}/rpc"
secret = "${PROXY_SECRET}"
timeout_ms = 5000
`,
  });
});

after(async () => {
  await stopProcess(roomcast);
  await new Promise((resolve) => backend.close(resolve));
});

const sockets = new Set();
afterEach(() => {
  for (const s of sockets) s.disconnect();
  sockets.clear();
});

/** A socket.io-client socket with `auth`; resolves once connected, or with the connect_error. */
function connect(auth, { transports = ['websocket'] } = {}) {
  const socket = io(roomcast.url, { transports, forceNew: true, reconnection: false, auth, timeout: STEP });
  sockets.add(socket);
  socket.inbox = new Inbox('socket.io client');
  socket.onAny((event, ...args) => socket.inbox.push({ event, args }));
  return within(
    STEP,
    'connect or connect_error',
    new Promise((resolve) => {
      socket.once('connect', () => resolve({ socket }));
      socket.once('connect_error', (error) => resolve({ socket, error }));
    }),
  );
}

async function api(path) {
  const r = await within(STEP, `GET ${path}`, fetch(`${roomcast.url}${path}`));
  assert.equal(r.status, 200, `GET ${path}`);
  return r.json();
}

describe('socket.io-client with connection tokens', { timeout: 60_000 }, () => {
  it('connects with auth {token} over WebSocket and long-polling, joined to the claimed rooms', async () => {
    for (const transports of [['websocket'], ['polling']]) {
      const user = `alice-${transports[0]}`;
      const { socket, error } = await connect({ token: jwt({ sub: user, rooms: ['team:1'] }) }, { transports });
      assert.equal(error, undefined, `${transports}: ${error?.message}\n${outputOf(roomcast)}`);
      assert.equal(socket.io.engine.transport.name, transports[0]);
      const u = await api(`/api/users/${user}`);
      assert.equal(u.online, true);
      const p = await api('/api/presence/team:1');
      assert.ok(
        p.users.some((x) => x.user === user),
        JSON.stringify(p),
      );
    }
  });

  it('gets connect_error with a code for expired, forged and missing tokens', async () => {
    const cases = [
      [{ token: jwt({ sub: 'a', exp: now() - 10 }) }, 'token_expired', 'token expired'],
      [{ token: jwt({ sub: 'a' }, 'guessed') }, 'auth_failed', 'invalid token: bad signature'],
      [{ token: 'not-a-token' }, 'auth_failed', 'invalid token: malformed token'],
      [{ user: 'admin' }, 'auth_failed', null],
      [{}, 'unauthenticated', null],
    ];
    for (const [auth, code, message] of cases) {
      const { socket, error } = await connect(auth);
      assert.ok(error, `${JSON.stringify(auth)} connected`);
      assert.equal(error.data?.code, code, `${JSON.stringify(auth)}: ${error.message}`);
      if (message) assert.equal(error.message, message);
      assert.equal(socket.connected, false);
    }
    const u = await api('/api/users/admin');
    assert.equal(u.online, false);
  });

  it('refreshes its token with roomcast:refresh', async () => {
    const { socket, error } = await connect({ token: jwt({ sub: 'carol', exp: now() + 60 }) });
    assert.equal(error, undefined);
    const later = now() + 3600;
    const ack = await socket.timeout(STEP).emitWithAck('roomcast:refresh', { token: jwt({ sub: 'carol', exp: later }) });
    assert.deepEqual(ack, { expires_at: later });
    const refused = await socket.timeout(STEP).emitWithAck('roomcast:refresh', { token: jwt({ sub: 'mallory' }) });
    assert.equal(refused.error.code, 'auth_failed');
  });
});

describe('socket.io-client events through the event proxy', { timeout: 60_000 }, () => {
  it('gets the backend result as the ack, and its publish reaches the room', async () => {
    const { socket: sender } = await connect({ token: jwt({ sub: 'dora', rooms: ['team:1'] }) });
    const { socket: reader } = await connect({ token: jwt({ sub: 'erik', rooms: ['team:1'] }) });
    const text = `hello ${randomBytes(4).toString('hex')}`;
    const ack = await sender.timeout(STEP).emitWithAck('chat.send', { text });
    assert.deepEqual(ack, { id: 7, by: 'dora' });
    const call = await calls.waitFor((c) => c.body.data?.text === text, 'the rpc call');
    assert.equal(call.path, '/rpc');
    assert.equal(call.headers['x-roomcast-secret'], PROXY_SECRET);
    assert.deepEqual(
      { event: call.body.event, user: call.body.user, transport: call.body.transport, namespace: call.body.namespace, rooms: call.body.rooms },
      { event: 'chat.send', user: 'dora', transport: 'socketio', namespace: '/', rooms: ['team:1'] },
    );
    const got = await reader.inbox.waitFor((m) => m.event === 'message' && m.args[0]?.text === text, 'the published message');
    assert.deepEqual(got.args, [{ text, by: 'dora' }]);

    const failed = await sender.timeout(STEP).emitWithAck('chat.fail', {});
    assert.deepEqual(failed, { error: { code: 'invalid', message: 'text too long' } });
  });
});
