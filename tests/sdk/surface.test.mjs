// The rest of the client-visible surface: watchlist online/offline events, cache channels,
// subscription_count events, the server SDK's terminateUserConnections, and the sign-in
// timeout of apps that require sign-in.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  ABSENCE_MS,
  Recorder,
  connected,
  eventually,
  makeClient as makeClientRaw,
  makeServerSdk,
  once,
  sleep,
  startBellhop,
  subscribe,
  unique,
  waitForState,
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

/**
 * makeClient, plus a fix for a client-side timer leak: when the server closes a connected
 * socket with 4000-4099, pusher-js handles the close by calling close() again on the already
 * closed faye-websocket socket, which arms faye's 30 s CLOSE_TIMEOUT timer and keeps this
 * test process alive for 30 s after the tests finish. Unref that timer once disconnected.
 */
function makeClient(srv, opts) {
  const client = makeClientRaw(srv, opts);
  let socket;
  client.connection.bind('state_change', ({ current }) => {
    if (current === 'connected') {
      socket = client.connection.connection?.transport?.socket;
    } else if (current === 'disconnected' && socket) {
      socket._closeTimer?.unref?.();
      socket = undefined;
    }
  });
  return client;
}

/** signin() and wait for signin_success and the #server-to-user channel (as user.test.mjs). */
async function signedIn(client, userId) {
  client.signin();
  assert.ok(client.user.signinDonePromise, 'signin() started');
  await withTimeout(client.user.signinDonePromise, 5000, `signin of ${userId}`);
  assert.equal(client.user.user_data?.id, userId, `signed in as ${userId}`);
  await eventually(
    () => client.user.serverToUserChannel?.subscribed,
    `#server-to-user-${userId} subscribed`,
  );
}

/** A client whose sign-in user_data carries a watchlist. */
function watchingClient(srv, userId, watchlist) {
  const signer = makeServerSdk(srv);
  return makeClient(srv, {
    userId,
    options: {
      userAuthentication: {
        customHandler: ({ socketId }, callback) => {
          try {
            callback(null, signer.authenticateUser(socketId, { id: userId, watchlist }));
          } catch (err) {
            callback(err, null);
          }
        },
      },
    },
  });
}

/** The pusher error code carried by a connection 'error' event, however pusher-js wrapped it. */
function errorCode(e) {
  return e?.data?.code ?? e?.error?.data?.code;
}

/** A compact view of the frames a client received, for failure messages. */
function frameLog(rec) {
  return JSON.stringify(rec.events.map((e) => ({ event: e.data.event, data: e.data.data })));
}

function disconnectAll(...clients) {
  for (const c of clients) {
    try {
      c.disconnect();
    } catch {
      // already gone
    }
  }
}

// ---------------------------------------------------------------------------------------
// 1. Watchlist

test('watchlist: online when a watched user signs in, offline when they leave', async () => {
  const a = watchingClient(server, 'a-user', ['b-user', 'c-user']);
  const b = makeClient(server, { userId: 'b-user' });
  try {
    await Promise.all([connected(a), connected(b)]);
    const online = new Recorder(a.user.watchlist, 'online', 'watchlist online at A');
    const offline = new Recorder(a.user.watchlist, 'offline', 'watchlist offline at A');
    const frames = new Recorder(a.connection, 'message', 'frames at A');

    await signedIn(a, 'a-user');
    // Nobody on the watchlist is online yet: no online event may follow the sign-in.
    await sleep(ABSENCE_MS);
    assert.deepEqual(
      online.events.map((e) => e.data),
      [],
      `online before any watched user signed in; frames: ${frameLog(frames)}`,
    );

    await signedIn(b, 'b-user');
    const { data: on } = await online.next();
    assert.equal(on.name, 'online');
    assert.deepEqual(on.user_ids, ['b-user']);

    b.disconnect();
    const { data: off } = await offline.next();
    assert.equal(off.name, 'offline');
    assert.deepEqual(off.user_ids, ['b-user']);

    await sleep(ABSENCE_MS);
    assert.equal(online.events.length, 1, `extra online events: ${frameLog(frames)}`);
    assert.equal(offline.events.length, 1, `extra offline events: ${frameLog(frames)}`);
  } finally {
    disconnectAll(a, b);
  }
});

test('watchlist: a user already online is reported right after sign-in', async () => {
  const c = makeClient(server, { userId: 'c-user' });
  const a = watchingClient(server, 'a-user', ['b-user', 'c-user']);
  try {
    await connected(c);
    await signedIn(c, 'c-user');

    await connected(a);
    const online = new Recorder(a.user.watchlist, 'online', 'watchlist online at A');
    const frames = new Recorder(a.connection, 'message', 'frames at A');
    await signedIn(a, 'a-user');
    const { data: on } = await online.next(2000);
    assert.equal(on.name, 'online');
    assert.deepEqual(on.user_ids, ['c-user'], `frames: ${frameLog(frames)}`);

    await sleep(ABSENCE_MS);
    assert.equal(online.events.length, 1, `extra online events: ${frameLog(frames)}`);
  } finally {
    disconnectAll(a, c);
  }
});

// ---------------------------------------------------------------------------------------
// 2. Cache channels

test('cache channel: cache_miss first, then a late subscriber gets only the last event', async () => {
  const name = unique('cache-menu-');
  const first = makeClient(server);
  await connected(first);
  const ch1 = first.subscribe(name);
  const miss1 = new Recorder(ch1, 'pusher:cache_miss', 'cache_miss at first');
  const got1 = new Recorder(ch1, 'menu-updated', 'menu-updated at first');
  await once(ch1, 'pusher:subscription_succeeded');
  const { data: missData } = await miss1.next();
  assert.ok(missData === undefined || typeof missData === 'object', JSON.stringify(missData));

  await sdk.trigger(name, 'menu-updated', { version: 1, items: ['soup'] });
  await sdk.trigger(name, 'menu-updated', { version: 2, items: ['soup', 'salad'] });
  await got1.count(2);
  assert.deepEqual(
    got1.events.map((e) => e.data),
    [
      { version: 1, items: ['soup'] },
      { version: 2, items: ['soup', 'salad'] },
    ],
  );

  first.disconnect();
  await waitForState(first, 'disconnected');

  const late = makeClient(server);
  try {
    await connected(late);
    const frames = new Recorder(late.connection, 'message', 'frames at late');
    const ch2 = late.subscribe(name);
    const miss2 = new Recorder(ch2, 'pusher:cache_miss', 'cache_miss at late');
    const got2 = new Recorder(ch2, 'menu-updated', 'menu-updated at late');
    await once(ch2, 'pusher:subscription_succeeded');
    const { data } = await got2.next(2000);
    assert.deepEqual(data, { version: 2, items: ['soup', 'salad'] });

    await sleep(ABSENCE_MS);
    assert.equal(got2.events.length, 1, `more than the last event: ${frameLog(frames)}`);
    assert.equal(miss2.events.length, 0, `cache_miss despite a cached event: ${frameLog(frames)}`);
  } finally {
    disconnectAll(first, late);
  }
});

// ---------------------------------------------------------------------------------------
// 3. subscription_count

test('subscription_count: three subscribers all hear a count of 3', async () => {
  const counting = await startBellhop({ env: { BELLHOP_APP_SUBSCRIPTION_COUNT: 'true' } });
  try {
    const clients = [makeClient(counting), makeClient(counting), makeClient(counting)];
    await Promise.all(clients.map((c) => connected(c)));
    const name = 'counted';
    const recs = clients.map((c, i) => {
      const ch = c.subscribe(name);
      return new Recorder(ch, 'pusher:subscription_count', `subscription_count at client ${i}`);
    });
    await Promise.all(
      clients.map((c) => once(c.channel(name), 'pusher:subscription_succeeded')),
    );

    // The server debounces (~1 s): wait until each client has seen a count of 3.
    for (const [i, rec] of recs.entries()) {
      await eventually(
        () => rec.events.some((e) => e.data?.subscription_count === 3),
        `client ${i} hears subscription_count 3 (saw ${JSON.stringify(rec.events.map((e) => e.data))})`,
        4000,
      );
      const last = rec.events.at(-1).data;
      assert.deepEqual(last, { subscription_count: 3 }, `client ${i}`);
      assert.equal(clients[i].channel(name).subscriptionCount, 3, `client ${i} subscriptionCount`);
    }
    // Counts never go above the real number of subscribers.
    for (const rec of recs) {
      for (const e of rec.events) {
        assert.ok(e.data.subscription_count >= 1 && e.data.subscription_count <= 3, JSON.stringify(e.data));
      }
    }
  } finally {
    await counting.stop();
  }
});

// ---------------------------------------------------------------------------------------
// 4. terminateUserConnections

test('terminateUserConnections closes that user\'s sockets with 4009 and no others', async () => {
  const s42a = makeClient(server, { userId: 'staff-42' });
  const s42b = makeClient(server, { userId: 'staff-42' });
  const s7 = makeClient(server, { userId: 'staff-7' });
  try {
    await Promise.all([connected(s42a), connected(s42b), connected(s7)]);
    const targets = [s42a, s42b];
    const frames = targets.map((c, i) => new Recorder(c.connection, 'message', `frames at staff-42 #${i}`));
    const errors = targets.map((c, i) => new Recorder(c.connection, 'error', `errors at staff-42 #${i}`));
    const states = targets.map((c, i) => new Recorder(c.connection, 'state_change', `states at staff-42 #${i}`));
    await signedIn(s42a, 'staff-42');
    await signedIn(s42b, 'staff-42');
    await signedIn(s7, 'staff-7');
    const s7States = new Recorder(s7.connection, 'state_change', 'states at staff-7');
    const s7Errors = new Recorder(s7.connection, 'error', 'errors at staff-7');

    const res = await withTimeout(
      sdk.terminateUserConnections('staff-42'),
      5000,
      'terminateUserConnections',
    );
    assert.equal(res.status, 200);

    for (const [i, c] of targets.entries()) {
      await waitForState(c, 'disconnected').catch((err) => {
        throw new Error(
          `${err.message}; staff-42 #${i} states ${JSON.stringify(states[i].events.map((e) => e.data))}` +
            `, errors ${JSON.stringify(errors[i].events.map((e) => e.data))}`,
        );
      });
      // The pusher:error frame says 4009 ...
      const errFrame = frames[i].events.map((e) => e.data).find((m) => m.event === 'pusher:error');
      assert.ok(errFrame, `staff-42 #${i}: no pusher:error frame; frames: ${frameLog(frames[i])}`);
      assert.equal(errFrame.data?.code, 4009, JSON.stringify(errFrame));
      // ... and so does the close code: only a close frame makes pusher-js emit a
      // WebSocketError (its "refused" action for 4000-4099).
      const closeErr = errors[i].events
        .map((e) => e.data)
        .find((e) => e.type === 'WebSocketError');
      assert.ok(
        closeErr,
        `staff-42 #${i}: no close-derived error; errors: ${JSON.stringify(errors[i].events.map((e) => e.data))}`,
      );
      assert.equal(errorCode(closeErr), 4009, JSON.stringify(closeErr));
    }

    // pusher-js must not reconnect after a 4009 close (it retries after 1 s for 4100+).
    await sleep(1200);
    for (const [i, c] of targets.entries()) {
      assert.equal(
        c.connection.state,
        'disconnected',
        `staff-42 #${i} states ${JSON.stringify(states[i].events.map((e) => e.data))}`,
      );
    }

    // staff-7 was not touched and still receives messages for its user.
    assert.equal(s7.connection.state, 'connected');
    assert.deepEqual(s7States.events, [], 'staff-7 connection changed state');
    assert.deepEqual(s7Errors.events, [], 'staff-7 got errors');
    const notes = new Recorder(s7.user, 'note', 'note at staff-7');
    await sdk.sendToUser('staff-7', 'note', { still: 'here' });
    assert.deepEqual((await notes.next()).data, { still: 'here' });
  } finally {
    disconnectAll(s42a, s42b, s7);
  }
});

// ---------------------------------------------------------------------------------------
// 5. Sign-in timeout

test('sign-in timeout: a silent client is closed with 4009, a signed-in one stays', async () => {
  const strict = await startBellhop({ env: { BELLHOP_APP_SIGNIN_TIMEOUT: '1' } });
  try {
    const lazy = makeClient(strict);
    const prompt = makeClient(strict, { userId: 'prompt-user' });
    const lazyErrors = new Recorder(lazy.connection, 'error', 'errors at lazy');
    const lazyFrames = new Recorder(lazy.connection, 'message', 'frames at lazy');
    const promptErrors = new Recorder(prompt.connection, 'error', 'errors at prompt');

    const [, promptSocket] = await Promise.all([connected(lazy), connected(prompt)]);
    const promptStates = new Recorder(prompt.connection, 'state_change', 'states at prompt');
    const t0 = Date.now();
    // Sign-in happens right after connecting, well inside the 1 s timeout.
    await signedIn(prompt, 'prompt-user');

    await eventually(
      () => lazyErrors.events.some((e) => errorCode(e.data) === 4009),
      `lazy client gets error 4009 (frames ${frameLog(lazyFrames)}, errors ${JSON.stringify(lazyErrors.events.map((e) => e.data))})`,
      3000,
    );
    const errFrame = lazyFrames.events.map((e) => e.data).find((m) => m.event === 'pusher:error');
    assert.ok(errFrame, `no pusher:error frame: ${frameLog(lazyFrames)}`);
    assert.equal(errFrame.data?.code, 4009, JSON.stringify(errFrame));
    await waitForState(lazy, 'disconnected', 2000);
    const elapsed = Date.now() - t0;
    assert.ok(elapsed < 3500, `closed only after ${elapsed} ms`);

    // The signed-in client is still there past 2 s (twice the timeout).
    const left = 2200 - (Date.now() - t0);
    if (left > 0) await sleep(left);
    assert.equal(prompt.connection.state, 'connected');
    assert.equal(prompt.connection.socket_id, promptSocket, 'the signed-in client reconnected');
    assert.deepEqual(promptStates.events.map((e) => e.data), [], 'prompt client changed state');
    assert.deepEqual(promptErrors.events.map((e) => e.data), [], 'prompt client got errors');
    // And it still works.
    await subscribe(prompt, unique('after-timeout-'));
  } finally {
    await strict.stop();
  }
});
