// End-to-end encrypted channels: the server SDK (with encryptionMasterKeyBase64) encrypts
// the payload and returns shared_secret from authorizeChannel; pusher-js (whose Node build
// bundles tweetnacl) decrypts. The server only relays ciphertext.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

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
  sdk = makeServerSdk(server, {
    encryptionMasterKeyBase64: randomBytes(32).toString('base64'),
  });
});

after(async () => {
  await server?.stop();
});

test('private-encrypted channel: trigger is decrypted by pusher-js', async () => {
  const client = makeClient(server, { sdk });
  const spy = makeClient(server); // sees only what the server relays
  await Promise.all([connected(client), connected(spy)]);
  const name = unique('private-encrypted-vault-');
  const { channel } = await subscribe(client, name);
  const got = new Recorder(channel, 'secret');
  const frames = new Recorder(client.connection, 'message', 'frames');

  const data = { pin: '1234', owner: 'alice', nested: { ok: true } };
  const res = await sdk.trigger(name, 'secret', data);
  assert.equal(res.status, 200);
  assert.deepEqual((await got.next()).data, data);

  // On the wire the data was ciphertext + nonce, not the plain object.
  const wire = frames.events.map((e) => e.data).find((m) => m.event === 'secret');
  assert.ok(wire, 'the raw frame was seen');
  assert.equal(wire.channel, name);
  assert.equal(typeof wire.data.ciphertext, 'string');
  assert.equal(typeof wire.data.nonce, 'string');
  assert.equal(JSON.stringify(wire.data).includes('1234'), false, 'plaintext on the wire');

  await sleep(ABSENCE_MS);
  assert.equal(got.events.length, 1);
});

test('private-encrypted channel refuses a bad signature', async () => {
  const client = makeClient(server, {
    sdk,
    channelAuth: ({ socketId, channelName }, realSdk) => {
      const good = realSdk.authorizeChannel(socketId, channelName);
      return { ...good, auth: `${server.key}:${'f'.repeat(64)}` };
    },
  });
  await connected(client);
  const name = unique('private-encrypted-bad-');
  const channel = client.subscribe(name);
  const { data } = await once(channel, 'pusher:subscription_error');
  assert.equal(data.type, 'AuthError');
  assert.equal(data.status, 401);
});
