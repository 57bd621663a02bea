// A HotelMate staff app's realtime connection, with the real pusher-js client: connects to
// bellhop, signs in with pusher.signin() and subscribes to the given channels. Used by
// tests/examples/hotelmate.py as the "connected porter".
//
//   node tests/examples/staff_client.mjs --host 127.0.0.1 --port 6001 --app-id 1001 \
//     --key hotelmate-key --secret hotelmate-secret-change-me --user 43 \
//     [--user-info '{"name":"Conor Walsh"}'] [--timeout-ms 15000] CHANNEL...
//
// Every option can also come from the environment: STAFF_HOST, STAFF_PORT, STAFF_APP_ID,
// STAFF_KEY, STAFF_SECRET, STAFF_USER, STAFF_USER_INFO, STAFF_TIMEOUT_MS, and STAFF_CHANNELS
// (comma-separated) when no channel is given as an argument.
//
// stdout is JSON lines only:
//   {"ready": true, "socket_id": "...", "user": "43", "channels": [...]}
//       once signed in (pusher.user's #server-to-user-{id} subscribed) and every channel's
//       subscription succeeded;
//   {"channel": "...", "event": "...", "data": ...}
//       one per event received on a subscribed channel or on pusher.user (whose events are
//       those on #server-to-user-{id}, e.g. bellhop:notification); `data` as pusher-js hands
//       it to the app (JSON payloads parsed);
//   {"error": "..."}
//       a signin or subscription error, a connection error, or not ready in time (then exit 1).
// It disconnects and exits 0 when stdin closes.
//
// pusher-js and the `pusher` server SDK come from tests/sdk/node_modules (`cd tests/sdk &&
// npm ci`). The server SDK only signs the user authentication and channel authorization
// locally, as the HotelMate backend's auth endpoints would.

import PusherClient from '../sdk/node_modules/pusher-js/dist/node/pusher.js';
import PusherServer from '../sdk/node_modules/pusher/lib/pusher.js';

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function fail(message) {
  out({ error: message });
  process.exitCode = 1;
  // Let stdout drain before leaving.
  process.stdout.write('', () => process.exit(1));
}

function parseArgs(argv) {
  const opts = {};
  const channels = [];
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      if (eq > 0) {
        opts[a.slice(2, eq)] = a.slice(eq + 1);
      } else {
        if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
        opts[a.slice(2)] = argv[i + 1];
        i += 1;
      }
    } else {
      channels.push(a);
    }
  }
  return { opts, channels };
}

let parsed;
try {
  parsed = parseArgs(process.argv.slice(2));
} catch (err) {
  fail(err.message);
}
const { opts, channels: argChannels } = parsed || { opts: {}, channels: [] };
const env = process.env;
const setting = (name, envName, dflt) => opts[name] ?? env[envName] ?? dflt;

const host = setting('host', 'STAFF_HOST', '127.0.0.1');
const port = Number(setting('port', 'STAFF_PORT', ''));
const appId = setting('app-id', 'STAFF_APP_ID', '1');
const key = setting('key', 'STAFF_KEY', '');
const secret = setting('secret', 'STAFF_SECRET', '');
const userId = setting('user', 'STAFF_USER', '');
const userInfoRaw = setting('user-info', 'STAFF_USER_INFO', '');
const timeoutMs = Number(setting('timeout-ms', 'STAFF_TIMEOUT_MS', '15000'));
const channels = argChannels.length
  ? argChannels
  : (env.STAFF_CHANNELS || '').split(',').map((c) => c.trim()).filter(Boolean);

if (parsed) {
  const missing = [
    ['--port', Number.isInteger(port) && port > 0],
    ['--key', key],
    ['--secret', secret],
    ['--user', userId],
  ].filter(([, v]) => !v).map(([n]) => n);
  if (missing.length) fail(`missing or invalid: ${missing.join(', ')}`);
}

let userInfo;
if (userInfoRaw) {
  try {
    userInfo = JSON.parse(userInfoRaw);
  } catch (err) {
    fail(`--user-info is not JSON: ${err.message}`);
  }
}

if (process.exitCode !== 1) main();

function main() {
  const sdk = new PusherServer({ appId, key, secret, host, port: String(port), useTLS: false });

  const pusher = new PusherClient(key, {
    wsHost: host,
    wsPort: port,
    forceTLS: false,
    enabledTransports: ['ws'],
    cluster: 'mt1',
    disableStats: true,
    userAuthentication: {
      customHandler: ({ socketId }, callback) => {
        try {
          const userData = { id: userId };
          if (userInfo !== undefined) userData.user_info = userInfo;
          callback(null, sdk.authenticateUser(socketId, userData));
        } catch (err) {
          callback(err, null);
        }
      },
    },
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        try {
          const presenceData = channelName.startsWith('presence-')
            ? { user_id: userId, user_info: userInfo }
            : undefined;
          callback(null, sdk.authorizeChannel(socketId, channelName, presenceData));
        } catch (err) {
          callback(err, null);
        }
      },
    },
  });

  let ready = false;
  let stopping = false;

  function stop(code) {
    if (stopping) return;
    stopping = true;
    clearTimeout(readyTimer);
    clearInterval(readyPoll);
    try {
      pusher.disconnect();
    } catch {
      // already gone
    }
    process.stdout.write('', () => process.exit(code));
  }

  const readyTimer = setTimeout(() => {
    const pending = channels.filter((c) => !pusher.channel(c)?.subscribed);
    const user = pusher.user.serverToUserChannel;
    if (!user?.subscribed) pending.unshift(`#server-to-user-${userId} (signin)`);
    out({
      error:
        `not ready within ${timeoutMs} ms (connection ${pusher.connection.state}; ` +
        `not subscribed: ${pending.join(', ') || 'none'})`,
    });
    stop(1);
  }, timeoutMs);

  // Ready once signed in (pusher-js subscribes pusher.user to #server-to-user-{id} after
  // pusher:signin_success) and every channel's subscription succeeded.
  const readyPoll = setInterval(() => {
    if (ready) return;
    const user = pusher.user.serverToUserChannel;
    if (
      pusher.user.user_data?.id === userId &&
      user?.subscribed &&
      channels.every((c) => pusher.channel(c)?.subscribed)
    ) {
      ready = true;
      clearTimeout(readyTimer);
      clearInterval(readyPoll);
      out({ ready: true, socket_id: pusher.connection.socket_id, user: userId, channels: [user.name, ...channels] });
    }
  }, 10);

  pusher.connection.bind('error', (err) => {
    out({ error: `connection: ${JSON.stringify(err?.error ?? err)}` });
  });
  pusher.user.bind('pusher:signin_error', (err) => {
    out({ error: `signin: ${JSON.stringify(err)}` });
    if (!ready) stop(1);
  });

  // Events on pusher.user: the #server-to-user-{id} channel's (pusher-js leaves out its
  // pusher: / pusher_internal: events).
  pusher.user.bind_global((event, data) => {
    if (event.startsWith('pusher:')) return; // pusher:signin_error, reported above
    out({ channel: `#server-to-user-${pusher.user.user_data?.id ?? userId}`, event, data });
  });

  pusher.signin();

  for (const name of channels) {
    const channel = pusher.subscribe(name);
    channel.bind('pusher:subscription_error', (err) => {
      out({ error: `subscribing to ${name}: ${JSON.stringify(err)}` });
      if (!ready) stop(1);
    });
    channel.bind_global((event, data) => {
      if (event.startsWith('pusher:') || event.startsWith('pusher_internal:')) return;
      out({ channel: name, event, data });
    });
  }

  // Exit when whoever started us closes our stdin.
  process.stdin.on('end', () => stop(0));
  process.stdin.on('close', () => stop(0));
  process.stdin.on('error', () => stop(0));
  process.stdin.resume();
}
