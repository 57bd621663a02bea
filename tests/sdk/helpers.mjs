// Shared helpers for the SDK end-to-end tests: run a bellhop server as a child process,
// build pusher-js clients and `pusher` server SDK instances pointed at it, and wait for
// things with timeouts that fail with a clear message instead of hanging.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import PusherClient from 'pusher-js';
import PusherServer from 'pusher';

export { sleep };

const HERE = path.dirname(fileURLToPath(import.meta.url));

/**
 * The bellhop binary: $BELLHOP_BIN, else $CARGO_TARGET_DIR/debug/bellhop when that is set
 * (CI builds outside the tree), else ../../target/debug/bellhop from this folder.
 */
export const BELLHOP_BIN = process.env.BELLHOP_BIN
  ? path.resolve(HERE, process.env.BELLHOP_BIN)
  : process.env.CARGO_TARGET_DIR
    ? path.resolve(HERE, '../..', process.env.CARGO_TARGET_DIR, 'debug/bellhop')
    : path.resolve(HERE, '../../target/debug/bellhop');

/** Default time a single wait may take before the test fails. */
export const WAIT_MS = 5000;

/** How long to watch for an event that must NOT arrive. */
export const ABSENCE_MS = 600;

let appCounter = 0;

/**
 * Starts bellhop on a free port (BELLHOP_PORT=0; the port is read from the
 * `listening http://127.0.0.1:PORT` line it prints on stdout).
 *
 * @param {object} [opts]
 * @param {Record<string,string>} [opts.env] extra environment (e.g. BELLHOP_APP_MAX_CONNECTIONS)
 * @param {{appId: string, key: string, secret: string}} [opts.app] reuse this app (e.g. from
 *   an earlier server, so clustered nodes serve the same app); default: a new one per call
 * @param {number} [opts.startTimeoutMs]
 */
export async function startBellhop({ env = {}, app: reuseApp, startTimeoutMs = 15000 } = {}) {
  await waitForBinary();
  let app;
  if (reuseApp) {
    app = { appId: reuseApp.appId, key: reuseApp.key, secret: reuseApp.secret };
  } else {
    appCounter += 1;
    app = {
      appId: String(100000 + process.pid * 10 + appCounter),
      key: `sdk-key-${process.pid}-${appCounter}`,
      secret: `sdk-secret-${process.pid}-${appCounter}`,
    };
  }
  // Each server gets its own SQLite store in a fresh temp directory.
  const dataDir = mkdtempSync(path.join(tmpdir(), 'bellhop-sdk-'));
  const child = spawn(BELLHOP_BIN, [], {
    env: {
      PATH: process.env.PATH,
      BELLHOP_DATA_DIR: dataDir,
      BELLHOP_HOST: '127.0.0.1',
      BELLHOP_PORT: '0',
      BELLHOP_METRICS_PORT: '0',
      BELLHOP_APP_ID: app.appId,
      BELLHOP_APP_KEY: app.key,
      BELLHOP_APP_SECRET: app.secret,
      BELLHOP_APP_CLIENT_EVENTS: 'true',
      BELLHOP_LOG: process.env.BELLHOP_LOG || 'info',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });

  // Keep the tail of stderr so a failure can show what the server said.
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    stderr = (stderr + chunk).slice(-20000);
  });

  const port = await new Promise((resolve, reject) => {
    let stdout = '';
    const timer = setTimeout(() => {
      cleanup();
      child.kill('SIGKILL');
      reject(
        new Error(
          `bellhop did not print "listening http://127.0.0.1:PORT" within ${startTimeoutMs} ms` +
            `\nstdout: ${stdout}\nstderr: ${stderr}`,
        ),
      );
    }, startTimeoutMs);
    const onData = (chunk) => {
      stdout += chunk;
      const m = stdout.match(/listening http:\/\/127\.0\.0\.1:(\d+)/);
      if (m) {
        cleanup();
        resolve(Number(m[1]));
      }
    };
    const onExit = (code, signal) => {
      cleanup();
      reject(
        new Error(
          `bellhop exited before listening (code ${code}, signal ${signal})` +
            `\nstdout: ${stdout}\nstderr: ${stderr}`,
        ),
      );
    };
    const onError = (err) => {
      cleanup();
      reject(new Error(`could not start bellhop at ${BELLHOP_BIN}: ${err.message}`));
    };
    function cleanup() {
      clearTimeout(timer);
      child.stdout.off('data', onData);
      child.off('exit', onExit);
      child.off('error', onError);
    }
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', onData);
    child.on('exit', onExit);
    child.on('error', onError);
  });
  // Drain stdout so the pipe never fills.
  child.stdout.resume();

  const server = {
    ...app,
    port,
    host: '127.0.0.1',
    process: child,
    stderr: () => stderr,
    clients: new Set(),
    /** Disconnects every client made with makeClient, then SIGKILLs bellhop. */
    async stop() {
      for (const c of server.clients) {
        try {
          c.disconnect();
        } catch {
          // already gone
        }
      }
      server.clients.clear();
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGKILL');
        await withTimeout(exited, 5000, 'bellhop did not exit after SIGKILL');
      }
    },
  };
  return server;
}

async function waitForBinary() {
  // A concurrent `cargo build` may briefly remove the binary while relinking.
  const deadline = Date.now() + 30000;
  while (!existsSync(BELLHOP_BIN)) {
    if (Date.now() > deadline) {
      throw new Error(`bellhop binary not found at ${BELLHOP_BIN} (set BELLHOP_BIN)`);
    }
    await sleep(500);
  }
}

/** The official `pusher` server SDK, pointed at the server. */
export function makeServerSdk(server, extra = {}) {
  return new PusherServer({
    appId: server.appId,
    key: server.key,
    secret: server.secret,
    host: server.host,
    port: String(server.port),
    useTLS: false,
    timeout: WAIT_MS,
    ...extra,
  });
}

/**
 * A pusher-js client for the server. Channel authorization and user authentication are
 * signed locally with the `pusher` SDK (`authorizeChannel` / `authenticateUser`).
 *
 * @param {object} server from startBellhop
 * @param {object} [opts]
 * @param {string} [opts.userId] presence user id and sign-in id
 * @param {object} [opts.userInfo] presence user_info / sign-in user_info
 * @param {PusherServer} [opts.sdk] server SDK used for signing (default: makeServerSdk(server))
 * @param {Function} [opts.channelAuth] override: ({socketId, channelName}, sdk) => auth object
 * @param {string} [opts.key] app key (default: the server's)
 * @param {boolean} [opts.connect] connect right away (default true)
 * @param {object} [opts.options] extra pusher-js options
 */
export function makeClient(server, opts = {}) {
  const sdk = opts.sdk || makeServerSdk(server);
  const userId = opts.userId;
  const userInfo = opts.userInfo;
  const client = new PusherClient(opts.key || server.key, {
    wsHost: server.host,
    wsPort: server.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    cluster: 'mt1',
    disableStats: true,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        try {
          if (opts.channelAuth) {
            callback(null, opts.channelAuth({ socketId, channelName }, sdk));
            return;
          }
          const presenceData = channelName.startsWith('presence-')
            ? { user_id: userId, user_info: userInfo }
            : undefined;
          callback(null, sdk.authorizeChannel(socketId, channelName, presenceData));
        } catch (err) {
          callback(err, null);
        }
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) => {
        try {
          const userData = { id: userId };
          if (userInfo) userData.user_info = userInfo;
          callback(null, sdk.authenticateUser(socketId, userData));
        } catch (err) {
          callback(err, null);
        }
      },
    },
    ...(opts.options || {}),
  });
  server.clients.add(client);
  return client;
}

/** Rejects with `message` if `promise` has not settled within `ms`. */
export function withTimeout(promise, ms, message) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${message}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Waits until the client's connection state is `state`. */
export function waitForState(client, state, ms = WAIT_MS) {
  if (client.connection.state === state) return Promise.resolve();
  let handler;
  const p = new Promise((resolve) => {
    handler = ({ current }) => {
      if (current === state) resolve();
    };
    client.connection.bind('state_change', handler);
  });
  return withTimeout(
    p,
    ms,
    `connection state "${state}" (still "${client.connection.state}")`,
  ).finally(() => client.connection.unbind('state_change', handler));
}

/** Waits for the client to be connected and returns its socket id. */
export async function connected(client, ms = WAIT_MS) {
  await waitForState(client, 'connected', ms);
  return client.connection.socket_id;
}

/**
 * Subscribes and waits for pusher:subscription_succeeded (resolving with the channel
 * and the event's data); rejects with the subscription_error payload if refused.
 */
export function subscribe(client, channelName, ms = WAIT_MS) {
  const channel = client.subscribe(channelName);
  let ok;
  let bad;
  const p = new Promise((resolve, reject) => {
    ok = (data) => resolve({ channel, data });
    bad = (err) =>
      reject(new Error(`subscription to ${channelName} failed: ${JSON.stringify(err)}`));
    channel.bind('pusher:subscription_succeeded', ok);
    channel.bind('pusher:subscription_error', bad);
  });
  return withTimeout(p, ms, `pusher:subscription_succeeded on ${channelName}`).finally(() => {
    channel.unbind('pusher:subscription_succeeded', ok);
    channel.unbind('pusher:subscription_error', bad);
  });
}

/**
 * Records every `eventName` on a bindable (channel, client, connection or `client.user`);
 * `next()` waits for the next unseen one, `events` holds all seen so far.
 */
export class Recorder {
  constructor(bindable, eventName, label = eventName) {
    this.bindable = bindable;
    this.eventName = eventName;
    this.label = label;
    this.events = [];
    this.read = 0;
    this.waiters = [];
    this.handler = (data, metadata) => {
      this.events.push({ data, metadata });
      this.wake();
    };
    bindable.bind(eventName, this.handler);
  }

  wake() {
    while (this.waiters.length && this.read < this.events.length) {
      this.waiters.shift()(this.events[this.read++]);
    }
  }

  /** The next event not yet returned by next(): { data, metadata }. */
  next(ms = WAIT_MS) {
    const p = new Promise((resolve) => {
      this.waiters.push(resolve);
      this.wake();
    });
    return withTimeout(p, ms, `event "${this.label}" (seen ${this.events.length} so far)`);
  }

  /** Waits until at least `n` events have been seen in total. */
  async count(n, ms = WAIT_MS) {
    const deadline = Date.now() + ms;
    while (this.events.length < n) {
      if (Date.now() > deadline) {
        throw new Error(
          `timed out after ${ms} ms: wanted ${n} "${this.label}" events, saw ` +
            JSON.stringify(this.events.map((e) => e.data)),
        );
      }
      await sleep(20);
    }
    return this.events;
  }

  stop() {
    this.bindable.unbind(this.eventName, this.handler);
  }
}

/** Waits once for `eventName` on a bindable; resolves with { data, metadata }. */
export function once(bindable, eventName, ms = WAIT_MS, label = eventName) {
  let handler;
  const p = new Promise((resolve) => {
    handler = (data, metadata) => resolve({ data, metadata });
    bindable.bind(eventName, handler);
  });
  return withTimeout(p, ms, `event "${label}"`).finally(() =>
    bindable.unbind(eventName, handler),
  );
}

/** Polls `fn` until it returns a truthy value; fails with `message` after `ms`. */
export async function eventually(fn, message, ms = WAIT_MS, every = 50) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms: ${message} (last: ${describe(last)})`);
    }
    await sleep(every);
  }
}

function describe(v) {
  if (v instanceof Error) return v.message;
  try {
    return JSON.stringify(v);
  } catch {
    return String(v);
  }
}

/** GETs a path of the HTTP API with the server SDK and returns the parsed JSON body. */
export async function apiGet(sdk, pathName, params) {
  const res = await withTimeout(
    sdk.get({ path: pathName, params }),
    WAIT_MS,
    `GET ${pathName}`,
  );
  return res.json();
}

/** A unique channel name suffix, so tests in one file never share channels. */
let uniq = 0;
export function unique(prefix) {
  uniq += 1;
  return `${prefix}${process.pid}-${uniq}`;
}
