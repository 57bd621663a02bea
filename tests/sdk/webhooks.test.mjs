// Webhooks: a local HTTP receiver records what bellhop POSTs (raw body + headers), every
// request is checked with the official `pusher` SDK (`webhook().isValid()` / `getEvents()`),
// and the receiver can be scripted to fail (status sequences) or hang, to exercise retries.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHmac } from 'node:crypto';

import PusherServer from 'pusher';

import {
  ABSENCE_MS,
  connected,
  eventually,
  makeClient,
  sleep,
  startBellhop,
  subscribe,
  unique,
} from './helpers.mjs';

/** Leaves are held back this long on the shared server (BELLHOP_WEBHOOK_DELAY_MS). */
const DELAY_MS = 500;
/** The batch window (BELLHOP_WEBHOOK_BATCH_MS, the default). */
const BATCH_MS = 250;

/**
 * A webhook receiver on 127.0.0.1:<free port>. Records every request (path, headers with
 * lower-case names, raw body, arrival time, the status it was answered with). Each path can
 * be scripted with a sequence of answers: a status code, or 'hang' (never answer); once the
 * script is used up every request gets 200.
 */
class Receiver {
  constructor() {
    this.requests = [];
    this.scripts = new Map();
    /** Set once bellhop is up: { appId, key, secret } used to validate requests. */
    this.app = null;
    this.http = http.createServer((req, res) => {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        const url = new URL(req.url, 'http://x');
        const script = this.scripts.get(url.pathname);
        const action = script && script.length ? script.shift() : 200;
        const rec = {
          n: this.requests.length,
          method: req.method,
          path: url.pathname,
          headers: req.headers,
          rawBody: Buffer.concat(chunks).toString('utf8'),
          at: Date.now(),
          answered: action,
        };
        this.requests.push(rec);
        if (action === 'hang') return; // bellhop's request timeout must give up on us
        res.writeHead(action, { 'Content-Type': 'text/plain' });
        res.end(action >= 200 && action < 300 ? 'ok' : `scripted ${action}`);
      });
    });
  }

  async start() {
    await new Promise((resolve, reject) => {
      this.http.once('error', reject);
      this.http.listen(0, '127.0.0.1', resolve);
    });
    this.base = `http://127.0.0.1:${this.http.address().port}`;
    return this;
  }

  url(p) {
    return `${this.base}${p}`;
  }

  script(p, actions) {
    this.scripts.set(p, [...actions]);
  }

  /** The official SDK's view of a request: { valid, events }. */
  check(rec) {
    if (!rec.checked) {
      const sdk = new PusherServer({ appId: this.app.appId, key: this.app.key, secret: this.app.secret });
      const wh = sdk.webhook({ headers: rec.headers, rawBody: rec.rawBody });
      const valid = wh.isValid();
      rec.checked = { valid, events: valid ? wh.getEvents() : [] };
    }
    return rec.checked;
  }

  to(p) {
    return this.requests.filter((r) => r.path === p);
  }

  /** Every event from valid requests to `p`, as { event, req }; optionally for one channel. */
  events(p, channel) {
    const out = [];
    for (const req of this.to(p)) {
      const { valid, events } = this.check(req);
      if (!valid) continue;
      for (const event of events) {
        if (channel === undefined || event.channel === channel) out.push({ event, req });
      }
    }
    return out;
  }

  /** The first event to `p` matching `pred` (or undefined). */
  find(p, pred) {
    return this.events(p).find(({ event }) => pred(event));
  }

  /** Waits until an event to `p` matches `pred`; returns { event, req }. */
  waitEvent(p, pred, message, ms = 5000) {
    return eventually(() => this.find(p, pred), `webhook to ${p}: ${message}; got ${this.summary()}`, ms);
  }

  /** Asserts that every request so far was a POST the SDK accepts. */
  assertAllValid() {
    for (const req of this.requests) {
      assert.equal(req.method, 'POST', `request #${req.n} to ${req.path}`);
      assert.equal(
        this.check(req).valid,
        true,
        `request #${req.n} to ${req.path} failed pusher.webhook().isValid(): ` +
          `headers ${JSON.stringify(req.headers)} body ${req.rawBody}`,
      );
    }
  }

  summary() {
    return JSON.stringify(
      this.requests.map((r) => ({ path: r.path, answered: r.answered, body: r.rawBody })),
    ).slice(0, 4000);
  }

  async close() {
    this.http.closeAllConnections();
    await new Promise((r) => this.http.close(r));
  }
}

const is = (name, channel, extra = {}) => (e) =>
  e.name === name && e.channel === channel && Object.entries(extra).every(([k, v]) => e[k] === v);

// ---------------------------------------------------------------------------------------
// Shared server for tests 1-4 and 6: one target for everything (with a custom header) and
// one that only wants channel_occupied + member_added.

let recv;
let server;

before(async () => {
  recv = await new Receiver().start();
  server = await startBellhop({
    env: {
      BELLHOP_APP_WEBHOOKS: JSON.stringify([
        { url: recv.url('/all'), headers: { 'X-Custom': 'v' } },
        { url: recv.url('/filtered'), event_types: ['channel_occupied', 'member_added'] },
      ]),
      BELLHOP_WEBHOOK_DELAY_MS: String(DELAY_MS),
      BELLHOP_WEBHOOK_BATCH_MS: String(BATCH_MS),
    },
  });
  recv.app = server;
});

after(async () => {
  await server?.stop();
  await recv?.close();
});

function assertFilteredOnlyWanted() {
  for (const { event } of recv.events('/filtered')) {
    assert.ok(
      ['channel_occupied', 'member_added'].includes(event.name),
      `/filtered (event_types channel_occupied, member_added) received ${JSON.stringify(event)}`,
    );
  }
}

test('1. presence subscription: channel_occupied + member_added, custom header, filter respected', async () => {
  const name = unique('presence-wh-occ-');
  const alice = makeClient(server, { userId: 'alice', userInfo: { name: 'Alice' } });
  await connected(alice);
  await subscribe(alice, name);

  const occ = await recv.waitEvent('/all', is('channel_occupied', name), `channel_occupied ${name}`);
  const add = await recv.waitEvent('/all', is('member_added', name, { user_id: 'alice' }), `member_added alice`);
  assert.deepEqual(occ.event, { name: 'channel_occupied', channel: name });
  assert.deepEqual(add.event, { name: 'member_added', channel: name, user_id: 'alice' });

  for (const { req } of [occ, add]) {
    assert.equal(req.headers['content-type'], 'application/json');
    assert.equal(req.headers['x-pusher-key'], server.key);
    assert.match(req.headers['x-pusher-signature'], /^[0-9a-f]{64}$/);
    assert.equal(req.headers['x-custom'], 'v', 'configured custom header is sent');
    const body = JSON.parse(req.rawBody);
    assert.equal(typeof body.time_ms, 'number');
    assert.ok(Math.abs(body.time_ms - Date.now()) < 60000, `time_ms ${body.time_ms} is now-ish`);
    assert.ok(Array.isArray(body.events));
  }

  // The filtered target gets the same two kinds, without the other target's header.
  const focc = await recv.waitEvent('/filtered', is('channel_occupied', name), `channel_occupied ${name}`);
  await recv.waitEvent('/filtered', is('member_added', name, { user_id: 'alice' }), 'member_added alice');
  assert.equal(focc.req.headers['x-custom'], undefined, 'custom header belongs to the other target');
  assert.equal(recv.events('/all', name).filter((e) => e.event.name === 'channel_occupied').length, 1);

  // Leaving produces channel_vacated + member_removed for /all only.
  alice.disconnect();
  await recv.waitEvent('/all', is('channel_vacated', name), `channel_vacated ${name}`);
  await recv.waitEvent('/all', is('member_removed', name, { user_id: 'alice' }), 'member_removed alice');
  await sleep(ABSENCE_MS);
  assertFilteredOnlyWanted();
  assert.deepEqual(
    recv.events('/filtered', name).map((e) => e.event.name).sort(),
    ['channel_occupied', 'member_added'],
  );
  recv.assertAllValid();
});

test('2. client_event webhook from a pusher-js client event (private and presence)', async () => {
  // Private channel: no user_id.
  const priv = unique('private-wh-ce-');
  const c1 = makeClient(server);
  const socketId = await connected(c1);
  const { channel: ch1 } = await subscribe(c1, priv);
  const payload = { text: 'hello hook', n: 42, list: [1, 2] };
  assert.equal(ch1.trigger('client-greet', payload), true);

  const { event } = await recv.waitEvent('/all', is('client_event', priv), `client_event on ${priv}`);
  assert.equal(event.event, 'client-greet');
  assert.equal(typeof event.data, 'string', `data must be a string: ${JSON.stringify(event)}`);
  assert.deepEqual(JSON.parse(event.data), payload);
  assert.equal(event.socket_id, socketId);
  assert.equal(event.user_id, undefined, 'no user_id on a private channel');

  // Presence channel: carries the sender's user_id.
  const pres = unique('presence-wh-ce-');
  const c2 = makeClient(server, { userId: 'dave', userInfo: {} });
  const socketId2 = await connected(c2);
  const { channel: ch2 } = await subscribe(c2, pres);
  assert.equal(ch2.trigger('client-wave', { hi: true }), true);
  const { event: e2 } = await recv.waitEvent('/all', is('client_event', pres), `client_event on ${pres}`);
  assert.equal(e2.event, 'client-wave');
  assert.deepEqual(JSON.parse(e2.data), { hi: true });
  assert.equal(e2.socket_id, socketId2);
  assert.equal(e2.user_id, 'dave');

  await sleep(ABSENCE_MS);
  assertFilteredOnlyWanted();
  c1.disconnect();
  c2.disconnect();
  recv.assertAllValid();
});

test('3. channel_vacated / member_removed are delayed, and a quick rejoin sends neither', async (t) => {
  // (a) unsubscribe from a presence channel.
  const pres = unique('presence-wh-leave-');
  const carol = makeClient(server, { userId: 'carol', userInfo: {} });
  await connected(carol);
  await subscribe(carol, pres);
  await recv.waitEvent('/all', is('member_added', pres, { user_id: 'carol' }), 'member_added carol');
  const t0 = Date.now();
  carol.unsubscribe(pres);
  const vac = await recv.waitEvent('/all', is('channel_vacated', pres), `channel_vacated ${pres}`);
  const rem = await recv.waitEvent('/all', is('member_removed', pres, { user_id: 'carol' }), 'member_removed carol');
  assert.deepEqual(vac.event, { name: 'channel_vacated', channel: pres });
  assert.deepEqual(rem.event, { name: 'member_removed', channel: pres, user_id: 'carol' });
  for (const { req, event } of [vac, rem]) {
    assert.ok(
      req.at - t0 >= DELAY_MS - 50,
      `${event.name} arrived ${req.at - t0} ms after the unsubscribe; expected >= ${DELAY_MS} ms`,
    );
  }

  t.diagnostic(`leave webhooks arrived ${vac.req.at - t0} / ${rem.req.at - t0} ms after unsubscribe`);

  // (b) disconnecting from a public channel.
  const pub = unique('wh-leave-');
  const erin = makeClient(server);
  await connected(erin);
  await subscribe(erin, pub);
  await recv.waitEvent('/all', is('channel_occupied', pub), `channel_occupied ${pub}`);
  const t1 = Date.now();
  erin.disconnect();
  const vac2 = await recv.waitEvent('/all', is('channel_vacated', pub), `channel_vacated ${pub}`);
  assert.ok(
    vac2.req.at - t1 >= DELAY_MS - 50,
    `channel_vacated arrived ${vac2.req.at - t1} ms after the disconnect; expected >= ${DELAY_MS} ms`,
  );

  t.diagnostic(`channel_vacated arrived ${vac2.req.at - t1} ms after disconnect`);

  // (c) unsubscribe + resubscribe within the window: no vacated/occupied (or removed/added) pair.
  const flap = unique('presence-wh-flap-');
  const frank = makeClient(server, { userId: 'frank', userInfo: {} });
  await connected(frank);
  await subscribe(frank, flap);
  await recv.waitEvent('/all', is('channel_occupied', flap), `channel_occupied ${flap}`);
  await recv.waitEvent('/all', is('member_added', flap, { user_id: 'frank' }), 'member_added frank');
  frank.unsubscribe(flap);
  await subscribe(frank, flap);
  // Long enough for a held-back leave to have been flushed and delivered.
  await sleep(DELAY_MS + BATCH_MS + 1000);
  assert.deepEqual(
    recv.events('/all', flap).map((e) => e.event.name),
    ['channel_occupied', 'member_added'],
    `flapping pair sent for ${flap}`,
  );
  assert.deepEqual(
    recv.events('/filtered', flap).map((e) => e.event.name).sort(),
    ['channel_occupied', 'member_added'],
  );
  // Positive control: leaving for good still reports the leave.
  frank.unsubscribe(flap);
  await recv.waitEvent('/all', is('channel_vacated', flap), `channel_vacated ${flap} after the final leave`);
  await recv.waitEvent('/all', is('member_removed', flap, { user_id: 'frank' }), 'member_removed frank');
  carol.disconnect();
  frank.disconnect();
  recv.assertAllValid();
});

test('4. events within the batch window arrive in one POST', async (t) => {
  const names = [unique('wh-batch-a-'), unique('wh-batch-b-'), unique('wh-batch-c-')];
  const client = makeClient(server);
  await connected(client);
  // subscribe() sends pusher:subscribe synchronously, so all three go out back to back.
  await Promise.all(names.map((n) => subscribe(client, n)));
  for (const n of names) {
    await recv.waitEvent('/all', is('channel_occupied', n), `channel_occupied ${n}`);
  }
  await sleep(BATCH_MS * 2);
  const carrying = new Set(
    names.flatMap((n) => recv.events('/all', n).map((e) => e.req)),
  );
  const occupied = names.flatMap((n) =>
    recv.events('/all', n).filter((e) => e.event.name === 'channel_occupied'),
  );
  t.diagnostic(`3 channel_occupied events arrived in ${carrying.size} POST(s)`);
  assert.equal(occupied.length, 3, 'each channel_occupied exactly once');
  assert.ok(
    carrying.size < occupied.length,
    `3 channel_occupied events came in ${carrying.size} POSTs; expected them batched`,
  );
  if (carrying.size === 1) {
    const [req] = carrying;
    const inBody = recv.check(req).events.filter((e) => names.includes(e.channel));
    assert.deepEqual(
      inBody.map((e) => e.channel).sort(),
      [...names].sort(),
    );
  }
  client.disconnect();
  recv.assertAllValid();
});

test('5. retries: 500, 500, 200 delivers the same batch; 400 is permanent; a hang times out and is retried', async (t) => {
  const r = await new Receiver().start();
  r.script('/flaky', [500, 500]);
  r.script('/bad', [400]);
  r.script('/hang', ['hang']);
  const only = ['channel_occupied'];
  const s = await startBellhop({
    env: {
      BELLHOP_APP_WEBHOOKS: JSON.stringify([
        { url: r.url('/flaky'), event_types: only },
        { url: r.url('/bad'), event_types: only },
        { url: r.url('/hang'), event_types: only },
      ]),
      BELLHOP_WEBHOOK_DELAY_MS: String(DELAY_MS),
      BELLHOP_WEBHOOK_TIMEOUT_MS: '500',
    },
  });
  r.app = s;
  try {
    const name = unique('wh-retry-');
    const client = makeClient(s);
    await connected(client);
    await subscribe(client, name);

    // 1 s base back-off, jittered to 0.5-1x, doubling; the worker polls every second.
    await eventually(
      () => r.to('/flaky').some((q) => q.answered === 200),
      `/flaky answered 200 eventually; got ${r.summary()}`,
      12000,
    );
    await eventually(
      () => r.to('/hang').some((q) => q.answered === 200),
      `/hang retried after the timeout; got ${r.summary()}`,
      8000,
    );
    // Room for any further (wrong) retry of /bad or /flaky to show up.
    await sleep(2500);

    const flaky = r.to('/flaky');
    assert.deepEqual(flaky.map((q) => q.answered), [500, 500, 200], 'attempts at /flaky');
    assert.equal(new Set(flaky.map((q) => q.rawBody)).size, 1, 'every attempt carries the same body');
    assert.equal(new Set(flaky.map((q) => q.headers['x-pusher-signature'])).size, 1);
    assert.deepEqual(r.check(flaky[0]).events, [{ name: 'channel_occupied', channel: name }]);
    const gap1 = flaky[1].at - flaky[0].at;
    const gap2 = flaky[2].at - flaky[1].at;
    assert.ok(gap1 >= 450 && gap1 <= 3000, `first retry after ${gap1} ms; expected 0.5-1 s (+ poll)`);
    assert.ok(gap2 >= 950 && gap2 <= 4000, `second retry after ${gap2} ms; expected 1-2 s (+ poll)`);

    t.diagnostic(`/flaky retry gaps ${gap1} ms, ${gap2} ms; /hang retry gap ${r.to('/hang')[1]?.at - r.to('/hang')[0]?.at} ms`);

    const bad = r.to('/bad');
    assert.deepEqual(bad.map((q) => q.answered), [400], '400 must not be retried');
    assert.equal(bad[0].rawBody, flaky[0].rawBody, 'all targets get the same batch body');

    const hang = r.to('/hang');
    assert.deepEqual(hang.map((q) => q.answered), ['hang', 200], 'attempts at /hang');
    assert.equal(hang[1].rawBody, hang[0].rawBody);
    assert.ok(hang[1].at - hang[0].at >= 500 + 450, `retry ${hang[1].at - hang[0].at} ms after a hung attempt`);

    r.assertAllValid();
    client.disconnect();
  } finally {
    await s.stop();
    await r.close();
  }
});

test('6. validation sanity: tampered body, wrong secret or wrong key fail isValid()', async () => {
  const name = unique('wh-sig-');
  const client = makeClient(server);
  await connected(client);
  await subscribe(client, name);
  const { req } = await recv.waitEvent('/all', is('channel_occupied', name), `channel_occupied ${name}`);
  client.disconnect();

  const good = new PusherServer({ appId: server.appId, key: server.key, secret: server.secret });
  const wrong = new PusherServer({ appId: server.appId, key: server.key, secret: 'not-the-secret' });
  const { headers, rawBody } = req;

  assert.equal(good.webhook({ headers, rawBody }).isValid(), true);
  // Independent check of the signature: HMAC-SHA256 hex of the raw body with the secret.
  assert.equal(
    headers['x-pusher-signature'],
    createHmac('sha256', server.secret).update(rawBody).digest('hex'),
  );

  const tampered = rawBody.replace(/"time_ms":(\d+)/, (_, d) => `"time_ms":${Number(d) + 1}`);
  assert.notEqual(tampered, rawBody);
  assert.doesNotThrow(() => JSON.parse(tampered));
  assert.equal(good.webhook({ headers, rawBody: tampered }).isValid(), false, 'tampered body');

  const renamed = rawBody.replace(name, `${name}x`);
  assert.equal(good.webhook({ headers, rawBody: renamed }).isValid(), false, 'tampered channel');

  assert.equal(wrong.webhook({ headers, rawBody }).isValid(), false, 'wrong secret');
  assert.equal(
    good.webhook({ headers: { ...headers, 'x-pusher-key': 'other-key' }, rawBody }).isValid(),
    false,
    'wrong key',
  );
  assert.equal(
    good.webhook({ headers: { ...headers, 'x-pusher-signature': '0'.repeat(64) }, rawBody }).isValid(),
    false,
    'wrong signature',
  );
  recv.assertAllValid();
});
