// The notification inbox as a hotel's staff app sees it: the backend notifies a user with the
// official `pusher` server SDK (its signed generic post/get), and the user's pusher-js client,
// signed in, hears the new item and the unread count live on pusher.user — a bell that never
// polls.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  Recorder,
  connected,
  eventually,
  makeClient,
  makeServerSdk,
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

test('a notification lights the bell of the signed-in user, and reading it clears it', async () => {
  const client = makeClient(server, { userId: 'staff-42', userInfo: { name: 'Porter' } });
  await connected(client);
  client.signin();
  await withTimeout(client.user.signinDonePromise, 5000, 'signin');
  await eventually(() => client.user.serverToUserChannel?.subscribed, 'user channel subscribed');

  const items = new Recorder(client.user, 'bellhop:notification', 'bell items');
  const counts = new Recorder(client.user, 'bellhop:inbox', 'bell counts');

  const res = await sdk.post({
    path: '/notifications',
    body: {
      users: ['staff-42'],
      type: 'room_service_order',
      data: { room_number: '101', total_price: 45.99 },
      channels: [{ channel: 'in_app', title: 'New room service order', body: 'Room {{ room_number }}' }],
    },
  });
  assert.equal(res.status, 202);
  const pushed = (await items.next()).data;
  assert.equal(pushed.item.title, 'New room service order');
  assert.equal(pushed.item.body, 'Room 101');
  assert.equal(pushed.unread_count, 1);

  const inbox = await (await sdk.get({ path: '/users/staff-42/inbox', params: { unread: 'true' } })).json();
  assert.equal(inbox.unread_count, 1);
  assert.equal(inbox.items[0].id, pushed.item.id);

  const read = await sdk.post({ path: '/users/staff-42/inbox/read', body: {} });
  assert.deepEqual(await read.json(), { changed: 1, unread_count: 0 });
  assert.equal((await counts.next()).data.unread_count, 0);
  client.disconnect();
});
