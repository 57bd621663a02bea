// Connection-level behaviour: the handshake, keep-alive pings, the connection quota, and an
// unknown app key being refused with 4001 so that pusher-js stops.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  Recorder,
  connected,
  makeClient,
  sleep,
  startBellhop,
  subscribe,
  unique,
  waitForState,
} from './helpers.mjs';

let server;

before(async () => {
  server = await startBellhop();
});

after(async () => {
  await server?.stop();
});

test('handshake gives a socket id and the activity timeout; pings keep it alive', async () => {
  // A server of its own with a 1 s activity timeout: pusher-js takes the handshake's
  // activity_timeout (it uses min(120 s, server value)) and pings after 1 s of silence,
  // while the server pings a silent client. Neither side may drop the connection.
  const quick = await startBellhop({ env: { BELLHOP_ACTIVITY_TIMEOUT: '1' } });
  try {
    const client = makeClient(quick);
    const socketId = await connected(client);
    assert.match(socketId, /^\d+\.\d+$/);
    assert.equal(client.connection.activityTimeout, 1000);
    const states = new Recorder(client.connection, 'state_change');
    const frames = new Recorder(client.connection, 'message');
    await sleep(3500);
    assert.deepEqual(
      states.events.map((e) => e.data),
      [],
      'connection state changed while idle with pings',
    );
    assert.equal(client.connection.socket_id, socketId, 'reconnected while idle');
    const seen = new Set(frames.events.map((e) => e.data.event));
    assert.ok(
      seen.has('pusher:pong') || seen.has('pusher:ping'),
      `no ping/pong in 3.5 s with a 1 s activity timeout: ${[...seen]}`,
    );
    // And the connection still works.
    await subscribe(client, unique('alive-'));
  } finally {
    await quick.stop();
  }
});

test('over the connection quota: 4004, and a slot frees when a client leaves', async () => {
  const small = await startBellhop({ env: { BELLHOP_APP_MAX_CONNECTIONS: '1' } });
  try {
    const first = makeClient(small);
    await connected(first);
    const second = makeClient(small);
    const errors = new Recorder(second.connection, 'error', 'error on the second client');
    const { data: err } = await errors.next();
    // Pusher protocol: 4004 "Application is over connection quota" (4000-4099: the client
    // must not reconnect by itself).
    assert.equal(err.error?.data?.code, 4004, JSON.stringify(err));
    await waitForState(second, 'disconnected');

    // Once the first client leaves, its slot is free again.
    first.disconnect();
    await waitForState(first, 'disconnected');
    // The server frees the slot when it has seen the close, which may take a moment: try
    // again (as an application would) until the second client gets in.
    const deadline = Date.now() + 5000;
    for (;;) {
      second.connect();
      const got = await Promise.race([
        connected(second, 2000).then(() => 'connected'),
        errors.count(errors.events.length + 1, 2000).then(() => 'refused'),
      ]).catch((e) => e.message);
      if (got === 'connected') break;
      assert.ok(Date.now() < deadline, `second client never got in after a slot freed: ${got}`);
      await waitForState(second, 'disconnected');
      await sleep(100);
    }
    assert.equal(second.connection.state, 'connected');
  } finally {
    await small.stop();
  }
});

test('unknown app key: error 4001 and no reconnect loop', async () => {
  const client = makeClient(server, { key: 'no-such-app-key' });
  const errors = new Recorder(client.connection, 'error', 'connection error');
  const states = new Recorder(client.connection, 'state_change', 'state_change');

  const { data: err } = await errors.next();
  // pusher-js wraps the pusher:error of the handshake as
  // { type: 'WebSocketError', error: { type: 'PusherError', data: { code, message } } }.
  assert.equal(err.type, 'WebSocketError', JSON.stringify(err));
  assert.equal(err.error?.type, 'PusherError', JSON.stringify(err));
  assert.equal(err.error?.data?.code, 4001, JSON.stringify(err));
  assert.equal(typeof err.error.data.message, 'string');

  // Codes 4001-4099 mean "refused": pusher-js calls disconnect(), which lands in
  // 'disconnected' (it does not use 'failed'/'unavailable' for this; 'failed' means the
  // transport is unsupported and 'unavailable' is a 10 s connect timeout). What matters is
  // that it stops: no further connection attempt follows.
  const stopped = ['disconnected', 'failed', 'unavailable'];
  await waitForState(client, 'disconnected').catch(() => {});
  assert.ok(
    stopped.includes(client.connection.state),
    `state after 4001 is ${client.connection.state}`,
  );
  const stateCount = states.events.length;
  // pusher-js backs off 1 s before a retry; wait past that.
  await sleep(1500);
  assert.equal(errors.events.length, 1, `more errors followed: ${JSON.stringify(errors.events)}`);
  assert.equal(
    states.events.length,
    stateCount,
    `state changed again: ${JSON.stringify(states.events.map((e) => e.data))}`,
  );
  assert.ok(stopped.includes(client.connection.state));
  assert.equal(client.connection.socket_id, undefined);
});
