// Public channels and the server SDK's trigger paths: a single trigger with exact data,
// one trigger to several channels, triggerBatch, and socket_id exclusion.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  ABSENCE_MS,
  Recorder,
  connected,
  makeClient,
  makeServerSdk,
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

test('public subscribe then trigger delivers the exact data object', async () => {
  const client = makeClient(server);
  await connected(client);
  const name = unique('news-');
  const { channel } = await subscribe(client, name);
  const got = new Recorder(channel, 'headline');

  const data = {
    title: 'Bellhop ships',
    n: 42,
    ratio: 0.5,
    ok: true,
    none: null,
    tags: ['a', 'b'],
    nested: { unicode: 'héllo ✓ 日本', quote: '"\\' },
  };
  const res = await sdk.trigger(name, 'headline', data);
  assert.equal(res.status, 200);

  const { data: received } = await got.next();
  assert.deepEqual(received, data);
  await sleep(ABSENCE_MS);
  assert.equal(got.events.length, 1, 'the event arrived exactly once');
});

test('trigger to several channels at once reaches each channel', async () => {
  const a = makeClient(server);
  const b = makeClient(server);
  await Promise.all([connected(a), connected(b)]);
  const ch1 = unique('multi-a-');
  const ch2 = unique('multi-b-');
  const ch3 = unique('multi-c-');
  // a is on ch1 and ch2, b is on ch3.
  const [{ channel: a1 }, { channel: a2 }, { channel: b3 }] = await Promise.all([
    subscribe(a, ch1),
    subscribe(a, ch2),
    subscribe(b, ch3),
  ]);
  const r1 = new Recorder(a1, 'fanout', `fanout on ${ch1}`);
  const r2 = new Recorder(a2, 'fanout', `fanout on ${ch2}`);
  const r3 = new Recorder(b3, 'fanout', `fanout on ${ch3}`);

  await sdk.trigger([ch1, ch2, ch3], 'fanout', { id: 'm-1' });

  for (const r of [r1, r2, r3]) {
    const { data } = await r.next();
    assert.deepEqual(data, { id: 'm-1' });
  }
  await sleep(ABSENCE_MS);
  assert.equal(r1.events.length, 1);
  assert.equal(r2.events.length, 1);
  assert.equal(r3.events.length, 1);
});

test('triggerBatch delivers two events to two channels', async () => {
  const client = makeClient(server);
  await connected(client);
  const chA = unique('batch-a-');
  const chB = unique('batch-b-');
  const [{ channel: a }, { channel: b }] = await Promise.all([
    subscribe(client, chA),
    subscribe(client, chB),
  ]);
  const onA = new Recorder(a, 'created', `created on ${chA}`);
  const onB = new Recorder(b, 'deleted', `deleted on ${chB}`);
  // Events of the other name on the other channel must not appear.
  const strayA = new Recorder(a, 'deleted');
  const strayB = new Recorder(b, 'created');

  const res = await sdk.triggerBatch([
    { channel: chA, name: 'created', data: { id: 1, what: 'first' } },
    { channel: chB, name: 'deleted', data: { id: 2, what: 'second' } },
  ]);
  assert.equal(res.status, 200);

  assert.deepEqual((await onA.next()).data, { id: 1, what: 'first' });
  assert.deepEqual((await onB.next()).data, { id: 2, what: 'second' });
  await sleep(ABSENCE_MS);
  assert.equal(onA.events.length, 1);
  assert.equal(onB.events.length, 1);
  assert.equal(strayA.events.length, 0);
  assert.equal(strayB.events.length, 0);
});

test('trigger with socket_id excludes that socket only', async () => {
  const excluded = makeClient(server);
  const other = makeClient(server);
  const [excludedId] = await Promise.all([connected(excluded), connected(other)]);
  const name = unique('exclude-');
  const [{ channel: chX }, { channel: chO }] = await Promise.all([
    subscribe(excluded, name),
    subscribe(other, name),
  ]);
  const onX = new Recorder(chX, 'update', 'update on the excluded socket');
  const onO = new Recorder(chO, 'update', 'update on the other socket');

  await sdk.trigger(name, 'update', { seq: 1 }, { socket_id: excludedId });
  assert.deepEqual((await onO.next()).data, { seq: 1 });
  await sleep(ABSENCE_MS);
  assert.deepEqual(onX.events, [], 'the excluded socket received the event');

  // Still subscribed: the next, non-excluded event does arrive, and it is the first one
  // this socket has seen.
  await sdk.trigger(name, 'update', { seq: 2 });
  assert.deepEqual((await onX.next()).data, { seq: 2 });
  assert.deepEqual((await onO.next()).data, { seq: 2 });
  assert.equal(onX.events.length, 1);
});
