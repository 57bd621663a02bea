// Presence channels: member lists, member_added / member_removed once per user id (not per
// socket), the HTTP API's view of presence channels, and client events carrying user_id.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  ABSENCE_MS,
  Recorder,
  apiGet,
  connected,
  eventually,
  makeClient,
  makeServerSdk,
  sleep,
  startBellhop,
  subscribe,
  unique,
  waitForState,
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

function memberList(channel) {
  const list = [];
  channel.members.each((m) => list.push({ id: m.id, info: m.info }));
  return list.sort((x, y) => x.id.localeCompare(y.id));
}

const ALICE = { userId: 'alice', userInfo: { name: 'Alice', role: 'admin' } };
const BOB = { userId: 'bob', userInfo: { name: 'Bob' } };

test('presence members, member_added/removed once per user, and the HTTP API', async () => {
  const name = unique('presence-room-');

  // Alice alone.
  const alice = makeClient(server, ALICE);
  await connected(alice);
  const { channel: chA, data: aliceSub } = await subscribe(alice, name);
  assert.equal(aliceSub.count, 1);
  assert.equal(chA.members.count, 1);
  assert.deepEqual(chA.members.me, { id: 'alice', info: ALICE.userInfo });
  assert.deepEqual(memberList(chA), [{ id: 'alice', info: ALICE.userInfo }]);
  const addedAtAlice = new Recorder(chA, 'pusher:member_added', 'member_added at alice');
  const removedAtAlice = new Recorder(chA, 'pusher:member_removed', 'member_removed at alice');

  // Bob joins: both see each other.
  const bob1 = makeClient(server, BOB);
  await connected(bob1);
  const { channel: chB1 } = await subscribe(bob1, name);
  assert.equal(chB1.members.count, 2);
  assert.deepEqual(chB1.members.me, { id: 'bob', info: BOB.userInfo });
  assert.deepEqual(memberList(chB1), [
    { id: 'alice', info: ALICE.userInfo },
    { id: 'bob', info: BOB.userInfo },
  ]);
  assert.deepEqual(chB1.members.get('alice'), { id: 'alice', info: ALICE.userInfo });

  const { data: added } = await addedAtAlice.next();
  assert.deepEqual(added, { id: 'bob', info: BOB.userInfo });
  assert.equal(chA.members.count, 2);
  assert.deepEqual(memberList(chA), memberList(chB1));

  const addedAtBob1 = new Recorder(chB1, 'pusher:member_added', 'member_added at bob1');
  const removedAtBob1 = new Recorder(chB1, 'pusher:member_removed', 'member_removed at bob1');

  // A second socket of the same user: no second member_added for anyone.
  const bob2 = makeClient(server, BOB);
  await connected(bob2);
  const { channel: chB2 } = await subscribe(bob2, name);
  assert.equal(chB2.members.count, 2, 'a second socket of bob does not add a member');
  assert.deepEqual(memberList(chB2), memberList(chA));
  await sleep(ABSENCE_MS);
  assert.equal(addedAtAlice.events.length, 1, 'alice saw a second member_added for bob');
  assert.deepEqual(addedAtBob1.events, [], 'bob saw member_added for his own second socket');
  assert.equal(chA.members.count, 2);

  // HTTP API: users, channel list with user_count, channel info.
  const users = await apiGet(sdk, `/channels/${name}/users`);
  assert.deepEqual(users, { users: [{ id: 'alice' }, { id: 'bob' }] });

  const list = await apiGet(sdk, '/channels', { filter_by_prefix: 'presence-', info: 'user_count' });
  assert.deepEqual(list.channels[name], { user_count: 2 });
  for (const [ch] of Object.entries(list.channels)) {
    assert.ok(ch.startsWith('presence-'), `${ch} listed under filter_by_prefix=presence-`);
  }

  const info = await apiGet(sdk, `/channels/${name}`, { info: 'user_count,subscription_count' });
  assert.deepEqual(info, { occupied: true, user_count: 2, subscription_count: 3 });

  // bob's second socket leaves: bob is still present through the first.
  bob2.disconnect();
  await waitForState(bob2, 'disconnected');
  await eventually(
    async () =>
      (await apiGet(sdk, `/channels/${name}`, { info: 'subscription_count' }))
        .subscription_count === 2,
    'subscription_count back to 2 after bob2 left',
  );
  await sleep(ABSENCE_MS);
  assert.deepEqual(removedAtAlice.events, [], 'member_removed while bob still has a socket');
  assert.equal(chA.members.count, 2);

  // bob's last socket leaves: now alice sees member_removed with bob's info.
  bob1.disconnect();
  const { data: removed } = await removedAtAlice.next();
  assert.deepEqual(removed, { id: 'bob', info: BOB.userInfo });
  assert.equal(chA.members.count, 1);
  assert.deepEqual(memberList(chA), [{ id: 'alice', info: ALICE.userInfo }]);
  await sleep(ABSENCE_MS);
  assert.equal(removedAtAlice.events.length, 1, 'member_removed arrived more than once');
  assert.deepEqual(removedAtBob1.events, []);

  assert.deepEqual(await apiGet(sdk, `/channels/${name}/users`), { users: [{ id: 'alice' }] });
  assert.deepEqual(
    await apiGet(sdk, `/channels/${name}`, { info: 'user_count,subscription_count' }),
    { occupied: true, user_count: 1, subscription_count: 1 },
  );
  const after = await apiGet(sdk, '/channels', { filter_by_prefix: 'presence-', info: 'user_count' });
  assert.deepEqual(after.channels[name], { user_count: 1 });

  // Alice leaves: the channel is vacated.
  alice.disconnect();
  await eventually(
    async () => (await apiGet(sdk, `/channels/${name}`)).occupied === false,
    'channel unoccupied after everyone left',
  );
  const gone = await apiGet(sdk, '/channels', { filter_by_prefix: 'presence-', info: 'user_count' });
  assert.equal(gone.channels[name], undefined);
});

test('client events on a presence channel carry the sender user_id', async () => {
  const name = unique('presence-chat-');
  const alice = makeClient(server, ALICE);
  const bob = makeClient(server, BOB);
  await Promise.all([connected(alice), connected(bob)]);
  const { channel: chA } = await subscribe(alice, name);
  const { channel: chB } = await subscribe(bob, name);
  const atAlice = new Recorder(chA, 'client-typing', 'client-typing at alice');
  const atBob = new Recorder(chB, 'client-typing', 'client-typing at bob');

  assert.equal(chA.trigger('client-typing', { typing: true }), true);
  const fromAlice = await atBob.next();
  assert.deepEqual(fromAlice.data, { typing: true });
  assert.equal(fromAlice.metadata?.user_id, 'alice');

  assert.equal(chB.trigger('client-typing', { typing: false }), true);
  const fromBob = await atAlice.next();
  assert.deepEqual(fromBob.data, { typing: false });
  assert.equal(fromBob.metadata?.user_id, 'bob');

  await sleep(ABSENCE_MS);
  assert.equal(atAlice.events.length, 1, 'alice got her own client event back');
  assert.equal(atBob.events.length, 1, 'bob got his own client event back');
});
