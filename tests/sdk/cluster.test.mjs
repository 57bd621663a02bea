// A cluster of three bellhop nodes sharing one private redis-server behaves like one server:
// events triggered through one node reach subscribers on every node exactly once, presence
// members are counted per user across nodes (member_added / member_removed once, member
// lists and the HTTP API agree on every node), and client events cross nodes.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import net from 'node:net';

import {
  ABSENCE_MS,
  Recorder,
  WAIT_MS,
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
  withTimeout,
} from './helpers.mjs';

const NODES = 3;

let redis;
/** @type {Array<Awaited<ReturnType<typeof startBellhop>>>} */
let nodes = [];
let sdks = [];

/** A TCP port that was free a moment ago. */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves true if redis on `port` answers PING with +PONG. */
function redisPing(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    let buf = '';
    const done = (ok) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(500, () => done(false));
    sock.once('error', () => done(false));
    sock.once('connect', () => sock.write('PING\r\n'));
    sock.setEncoding('utf8');
    sock.on('data', (d) => {
      buf += d;
      if (buf.includes('\r\n')) done(buf.startsWith('+PONG'));
    });
  });
}

/** Starts a private, non-persistent redis-server on a free port and waits until it answers. */
async function startRedis() {
  const port = await freePort();
  const child = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (c) => (output = (output + c).slice(-10000)));
  child.stderr.on('data', (c) => (output = (output + c).slice(-10000)));
  let spawnError;
  child.once('error', (err) => (spawnError = err));
  const handle = {
    port,
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGKILL');
        await withTimeout(exited, 5000, 'redis-server did not exit after SIGKILL');
      }
    },
  };
  try {
    await eventually(
      async () => {
        if (spawnError) throw new Error(`could not start redis-server: ${spawnError.message}`);
        if (child.exitCode !== null) {
          throw new Error(`redis-server exited (code ${child.exitCode}): ${output}`);
        }
        return redisPing(port);
      },
      `redis-server on port ${port} answering PING`,
      10000,
    );
  } catch (err) {
    await handle.stop();
    throw err;
  }
  return handle;
}

before(async () => {
  redis = await startRedis();
  const prefix = `sdk-${randomBytes(6).toString('hex')}`;
  const env = (i) => ({
    BELLHOP_REDIS_URL: redis.url,
    BELLHOP_REDIS_PREFIX: prefix,
    BELLHOP_NODE_ID: `node-${i}`,
    BELLHOP_APP_CLIENT_EVENTS: 'true',
  });
  // Node 0 creates the app; nodes 1 and 2 serve the very same app id, key and secret.
  nodes.push(await startBellhop({ env: env(0) }));
  for (let i = 1; i < NODES; i += 1) {
    nodes.push(await startBellhop({ env: env(i), app: nodes[0] }));
  }
  // Every node must be ready (its bus subscribed to redis) before the tests start.
  for (const [i, node] of nodes.entries()) {
    await eventually(
      async () => (await fetch(`http://${node.host}:${node.port}/ready`)).status === 200,
      `node-${i} /ready`,
      10000,
    );
  }
  sdks = nodes.map((n) => makeServerSdk(n));
});

after(async () => {
  const errors = [];
  for (const node of nodes) {
    try {
      await node.stop();
    } catch (err) {
      errors.push(err);
    }
  }
  try {
    await redis?.stop();
  } catch (err) {
    errors.push(err);
  }
  if (errors.length) throw errors[0];
});

function memberList(channel) {
  const list = [];
  channel.members.each((m) => list.push({ id: m.id, info: m.info }));
  return list.sort((x, y) => x.id.localeCompare(y.id));
}

test('an event triggered through node 1 reaches subscribers on all three nodes exactly once', async () => {
  const name = unique('cluster-broadcast-');
  const clients = nodes.map((n) => makeClient(n));
  await Promise.all(clients.map((c) => connected(c)));
  const recorders = [];
  for (const [i, c] of clients.entries()) {
    const { channel } = await subscribe(c, name);
    recorders.push(new Recorder(channel, 'greeting', `greeting at node-${i}`));
  }

  const payload = { hello: 'cluster', n: 1 };
  await withTimeout(sdks[1].trigger(name, 'greeting', payload), WAIT_MS, 'trigger via node-1');

  for (const r of recorders) {
    const { data } = await r.next();
    assert.deepEqual(data, payload, r.label);
  }
  // No node delivers a second copy (e.g. one locally and one back from the bus).
  await sleep(500);
  for (const r of recorders) {
    assert.equal(r.events.length, 1, `${r.label}: deliveries ${JSON.stringify(r.events)}`);
  }

  for (const c of clients) c.disconnect();
});

const ALICE = { userId: 'cluster-alice', userInfo: { name: 'Alice' } };
const BOB = { userId: 'cluster-bob', userInfo: { name: 'Bob', role: 'guest' } };

test('presence across nodes: members, member_added/removed once per user, the HTTP API', async () => {
  const name = unique('presence-cluster-');
  const both = [
    { id: ALICE.userId, info: ALICE.userInfo },
    { id: BOB.userId, info: BOB.userInfo },
  ];
  const usersOnEveryNode = async (expected) => {
    for (const [i, sdk] of sdks.entries()) {
      assert.deepEqual(
        await apiGet(sdk, `/channels/${name}/users`),
        { users: expected.map((id) => ({ id })) },
        `GET /channels/${name}/users on node-${i}`,
      );
    }
  };

  // Alice on node 0, alone.
  const alice = makeClient(nodes[0], ALICE);
  await connected(alice);
  const { channel: chA, data: aliceMembers } = await subscribe(alice, name);
  assert.equal(aliceMembers.count, 1);
  assert.deepEqual(memberList(chA), [{ id: ALICE.userId, info: ALICE.userInfo }]);
  const addedAtAlice = new Recorder(chA, 'pusher:member_added', 'member_added at alice');
  const removedAtAlice = new Recorder(chA, 'pusher:member_removed', 'member_removed at alice');

  // Bob's first socket, on node 2: he sees both, Alice sees him added once.
  const bob1 = makeClient(nodes[2], BOB);
  await connected(bob1);
  const { channel: chB1, data: bobMembers } = await subscribe(bob1, name);
  assert.equal(bobMembers.count, 2, 'bob (node-2) sees alice (node-0) and himself');
  assert.deepEqual(chB1.members.me, { id: BOB.userId, info: BOB.userInfo });
  assert.deepEqual(memberList(chB1), both);

  const { data: added } = await addedAtAlice.next();
  assert.deepEqual(added, { id: BOB.userId, info: BOB.userInfo });
  assert.equal(chA.members.count, 2);
  assert.deepEqual(memberList(chA), both);
  const addedAtBob1 = new Recorder(chB1, 'pusher:member_added', 'member_added at bob1');
  const removedAtBob1 = new Recorder(chB1, 'pusher:member_removed', 'member_removed at bob1');

  // Bob's second socket, on node 1: still two members, no second member_added anywhere.
  const bob2 = makeClient(nodes[1], BOB);
  await connected(bob2);
  const { channel: chB2, data: bob2Members } = await subscribe(bob2, name);
  assert.equal(bob2Members.count, 2, "bob's second socket (node-1) does not add a member");
  assert.deepEqual(memberList(chB2), both);
  await sleep(ABSENCE_MS);
  assert.equal(
    addedAtAlice.events.length,
    1,
    `alice saw member_added ${JSON.stringify(addedAtAlice.events.map((e) => e.data))}`,
  );
  assert.deepEqual(addedAtBob1.events, [], 'bob1 saw member_added for his own second socket');
  assert.equal(chA.members.count, 2);

  // Every node's HTTP API lists the same two users.
  await usersOnEveryNode([ALICE.userId, BOB.userId]);

  // Bob's node-1 socket leaves: he is still present through node 2.
  bob2.disconnect();
  await waitForState(bob2, 'disconnected');
  await eventually(
    async () =>
      (await apiGet(sdks[0], `/channels/${name}`, { info: 'subscription_count' }))
        .subscription_count === 2,
    'subscription_count (via node-0) back to 2 after bob2 left node-1',
  );
  await sleep(ABSENCE_MS);
  assert.deepEqual(
    removedAtAlice.events,
    [],
    'alice saw member_removed while bob still has a socket on node-2',
  );
  assert.equal(chA.members.count, 2);
  await usersOnEveryNode([ALICE.userId, BOB.userId]);

  // Bob's last socket (node 2) leaves: now alice sees exactly one member_removed.
  bob1.disconnect();
  const { data: removed } = await removedAtAlice.next();
  assert.deepEqual(removed, { id: BOB.userId, info: BOB.userInfo });
  assert.equal(chA.members.count, 1);
  assert.deepEqual(memberList(chA), [{ id: ALICE.userId, info: ALICE.userInfo }]);
  await sleep(ABSENCE_MS);
  assert.equal(
    removedAtAlice.events.length,
    1,
    `alice saw member_removed ${JSON.stringify(removedAtAlice.events.map((e) => e.data))}`,
  );
  assert.deepEqual(removedAtBob1.events, []);
  await usersOnEveryNode([ALICE.userId]);

  alice.disconnect();
});

test('a client event from node 0 reaches a subscriber on node 2, not the sender', async () => {
  const name = unique('private-cluster-typing-');
  const sender = makeClient(nodes[0]);
  const receiver = makeClient(nodes[2]);
  await Promise.all([connected(sender), connected(receiver)]);
  const { channel: chS } = await subscribe(sender, name);
  const { channel: chR } = await subscribe(receiver, name);
  const atSender = new Recorder(chS, 'client-typing', 'client-typing at sender (node-0)');
  const atReceiver = new Recorder(chR, 'client-typing', 'client-typing at receiver (node-2)');

  assert.equal(chS.trigger('client-typing', { typing: true }), true, 'trigger sent');
  const { data } = await atReceiver.next();
  assert.deepEqual(data, { typing: true });

  await sleep(ABSENCE_MS);
  assert.equal(atReceiver.events.length, 1, 'receiver got the client event more than once');
  assert.deepEqual(atSender.events, [], 'the sender got its own client event back');

  sender.disconnect();
  receiver.disconnect();
});
