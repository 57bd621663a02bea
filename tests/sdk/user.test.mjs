// User authentication: pusher.signin() and the server SDK's sendToUser.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  ABSENCE_MS,
  Recorder,
  connected,
  eventually,
  makeClient,
  makeServerSdk,
  sleep,
  startBellhop,
  withTimeout,
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

async function signedIn(client, userId) {
  client.signin();
  // signin() creates signinDonePromise synchronously; it resolves on signin_success (or
  // on failure, in which case user_data stays null).
  assert.ok(client.user.signinDonePromise, 'signin() started');
  await withTimeout(client.user.signinDonePromise, 5000, `signin of ${userId}`);
  assert.equal(client.user.user_data?.id, userId, 'signed in as the expected user');
  // pusher-js subscribes to #server-to-user-{id} after signin_success.
  await eventually(
    () => client.user.serverToUserChannel?.subscribed,
    `#server-to-user-${userId} subscribed`,
  );
}

test('signin then sendToUser reaches pusher.user', async () => {
  const alice = makeClient(server, { userId: 'user-alice', userInfo: { name: 'Alice' } });
  const bob = makeClient(server, { userId: 'user-bob' });
  await Promise.all([connected(alice), connected(bob)]);

  const frames = new Recorder(alice.connection, 'message', 'frames at alice');
  await signedIn(alice, 'user-alice');
  const frame = frames.events.map((e) => e.data).find((m) => m.event === 'pusher:signin_success');
  assert.ok(frame, `no pusher:signin_success among ${JSON.stringify(frames.events)}`);
  assert.deepEqual(JSON.parse(frame.data.user_data), {
    id: 'user-alice',
    user_info: { name: 'Alice' },
  });
  assert.equal(alice.user.serverToUserChannel.name, '#server-to-user-user-alice');
  await signedIn(bob, 'user-bob');

  const atAlice = new Recorder(alice.user, 'notice', 'notice at alice');
  const atBob = new Recorder(bob.user, 'notice', 'notice at bob');

  const res = await sdk.sendToUser('user-alice', 'notice', { text: 'for alice', n: 7 });
  assert.equal(res.status, 200);
  assert.deepEqual((await atAlice.next()).data, { text: 'for alice', n: 7 });

  await sdk.sendToUser('user-bob', 'notice', { text: 'for bob' });
  assert.deepEqual((await atBob.next()).data, { text: 'for bob' });

  await sleep(ABSENCE_MS);
  assert.equal(atAlice.events.length, 1, 'alice got a message meant for bob');
  assert.equal(atBob.events.length, 1, 'bob got a message meant for alice');
});
