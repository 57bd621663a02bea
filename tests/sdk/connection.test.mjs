// Connection-level behaviour: an unknown app key is refused with 4001 and pusher-js stops.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { Recorder, makeClient, sleep, startBellhop, waitForState } from './helpers.mjs';

let server;

before(async () => {
  server = await startBellhop();
});

after(async () => {
  await server?.stop();
});

test('connection gets a socket id and the activity timeout from the handshake', async () => {
  const client = makeClient(server);
  await waitForState(client, 'connected');
  assert.match(client.connection.socket_id, /^\d+\.\d+$/);
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
