// Private channels: signed subscriptions succeed, bad signatures are refused with
// pusher:subscription_error, and client events reach the other subscribers only.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  ABSENCE_MS,
  Recorder,
  connected,
  makeClient,
  makeServerSdk,
  once,
  sleep,
  startBellhop,
  subscribe,
  unique,
} from './helpers.mjs';

let server;
let sdk;

before(async () => {
  server = await startBellhop();
  sdk = makeServerSdk(server);
});

after(async () => {
  await server?.stop();
});

test('private channel with a valid signature subscribes and receives events', async () => {
  const client = makeClient(server);
  await connected(client);
  const name = unique('private-orders-');
  const { channel } = await subscribe(client, name);
  assert.equal(channel.subscribed, true);
  const got = new Recorder(channel, 'order');
  await sdk.trigger(name, 'order', { id: 'o-1', total: 12.5 });
  assert.deepEqual((await got.next()).data, { id: 'o-1', total: 12.5 });
});

test('private channel with a bad signature yields pusher:subscription_error 401 AuthError', async () => {
  const wrongSecretSdk = makeServerSdk(server, { secret: 'not-the-secret' });
  const client = makeClient(server, {
    channelAuth: ({ socketId, channelName }, realSdk) => {
      if (channelName.includes('-after-refusal-')) {
        return realSdk.authorizeChannel(socketId, channelName);
      }
      if (channelName.includes('-garbage-')) {
        return { auth: `${server.key}:${'0'.repeat(64)}` };
      }
      if (channelName.includes('-wrongsecret-')) {
        return wrongSecretSdk.authorizeChannel(socketId, channelName);
      }
      // Signed correctly, but for another channel name.
      return realSdk.authorizeChannel(socketId, `${channelName}-other`);
    },
  });
  await connected(client);

  for (const kind of ['garbage', 'wrongsecret', 'otherchannel']) {
    const name = unique(`private-${kind}-`);
    const channel = client.subscribe(name);
    const succeeded = new Recorder(channel, 'pusher:subscription_succeeded');
    const { data } = await once(channel, 'pusher:subscription_error', undefined, `subscription_error on ${name}`);
    assert.equal(data.type, 'AuthError', `${kind}: ${JSON.stringify(data)}`);
    assert.equal(data.status, 401, `${kind}: ${JSON.stringify(data)}`);
    assert.equal(typeof data.error, 'string');
    assert.ok(data.error.length > 0, 'error carries a message');
    assert.equal(channel.subscribed, false);
    assert.equal(succeeded.events.length, 0);
  }
  // A refusal does not cost the connection.
  assert.equal(client.connection.state, 'connected');
  const ok = unique('private-after-refusal-');
  await subscribe(client, ok);
});

test('client events on a private channel reach the other client and are not echoed', async () => {
  const alice = makeClient(server);
  const bob = makeClient(server);
  await Promise.all([connected(alice), connected(bob)]);
  const name = unique('private-chat-');
  const [{ channel: chA }, { channel: chB }] = await Promise.all([
    subscribe(alice, name),
    subscribe(bob, name),
  ]);
  const atAlice = new Recorder(chA, 'client-message', 'client-message at alice');
  const atBob = new Recorder(chB, 'client-message', 'client-message at bob');

  const payload = { text: 'hi bob', n: 1, list: [1, 2, 3] };
  assert.equal(chA.trigger('client-message', payload), true);
  const { data, metadata } = await atBob.next();
  assert.deepEqual(data, payload);
  // A private channel has no user id to report.
  assert.equal(metadata?.user_id, undefined);

  // Bob answers; what alice sees first must be bob's reply, not her own event.
  assert.equal(chB.trigger('client-message', { text: 'hi alice' }), true);
  assert.deepEqual((await atAlice.next()).data, { text: 'hi alice' });
  await sleep(ABSENCE_MS);
  assert.deepEqual(
    atAlice.events.map((e) => e.data),
    [{ text: 'hi alice' }],
    'alice received her own client event',
  );
  assert.deepEqual(
    atBob.events.map((e) => e.data),
    [payload],
    'bob received his own client event',
  );
});
