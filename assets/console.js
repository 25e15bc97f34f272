// The console page (GET /): one RedisWsBridge client driven by the forms, every frame it
// receives logged. Frame data only ever reaches the page as textContent.
'use strict';

const MAX_LOG = 200;
const $ = (id) => document.getElementById(id);
// The bridge writes its websocket.path into the page.
const wsPath = document.body.dataset.wsPath;
let client = null;

function show(state) {
  $('status').textContent = state === 'open' ? 'connected' : state;
  $('status').className = `status ${state}`;
  $('connect').disabled = state !== 'closed';
  $('disconnect').disabled = state === 'closed';
  $('refresh').disabled = state !== 'open';
}

function log(label, value, note = false) {
  const item = document.createElement('li');
  if (note) item.className = 'note';
  const meta = document.createElement('div');
  meta.className = 'meta';
  meta.textContent = `${new Date().toISOString().slice(11, 23)}  ${label}`;
  item.append(meta);
  if (value !== undefined) {
    const body = document.createElement('pre');
    body.textContent = value instanceof ArrayBuffer
      ? `<binary frame, ${value.byteLength} bytes>`
      : JSON.stringify(value, null, 2);
    item.append(body);
  }
  const list = $('log');
  list.prepend(item);
  while (list.childElementCount > MAX_LOG) list.lastElementChild.remove();
}

function showSubscriptions() {
  const topics = client ? client.subscriptions.map(([topic]) => topic) : [];
  $('subscribed').textContent = topics.length ? topics.join(', ') : 'none';
}

function topicsInput() {
  return $('topics').value.split(',').map((t) => t.trim()).filter(Boolean);
}

// The answers themselves are in the log already, as frames.
function run(label, promise) {
  promise
    .then(() => log(`${label}: ok`, undefined, true))
    .catch((err) => {
      const code = err.code ? `${err.code}: ` : '';
      log(`${label}: ${code}${err.message}`, undefined, true);
    });
}

$('connection').addEventListener('submit', (event) => {
  event.preventDefault();
  client = new RedisWsBridge(wsPath, { token: $('token').value.trim() || undefined });
  client.on('frame', (frame) => {
    log(frame && frame.type ? `← ${frame.type}` : '←', frame);
    // Once the client has acted on the frame (a `subscribed` adds topics).
    queueMicrotask(showSubscriptions);
  });
  client.on('open', () => show('open'));
  client.on('close', ({ code, reason, reconnect }) => {
    const why = reason ? ` "${reason}"` : '';
    log(`closed ${code}${why}${reconnect ? '' : ', not reconnecting'}`, undefined, true);
    show(reconnect ? 'reconnecting' : 'closed');
  });
  client.on('reconnecting', ({ attempt, delay }) => {
    log(`reconnecting: attempt ${attempt} in ${delay} ms`, undefined, true);
    show('reconnecting');
  });
  client.on('gap', (gap) => log('gap: refetch these topics', gap, true));
  show('connecting');
  client.connect();
});

$('disconnect').addEventListener('click', () => client && client.close());

// The token field's new value replaces the connection's token without a reconnect.
$('refresh').addEventListener('click', () => {
  if (client) run('refresh', client.refresh($('token').value.trim()));
});

$('subscription').addEventListener('submit', (event) => {
  event.preventDefault();
  const topics = topicsInput();
  if (!client || !topics.length) return;
  let filter;
  if ($('filter').value.trim()) {
    try {
      filter = JSON.parse($('filter').value);
    } catch (err) {
      log(`filter is not JSON: ${err.message}`, undefined, true);
      return;
    }
  }
  run('subscribe', client.subscribe(topics, filter));
});

$('unsubscribe').addEventListener('click', () => {
  const topics = topicsInput();
  if (client && topics.length) run('unsubscribe', client.unsubscribe(topics));
});

$('clear').addEventListener('click', () => $('log').replaceChildren());

show('closed');
