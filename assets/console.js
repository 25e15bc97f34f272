// The console page (GET /): one RedisWsBridge client driven by the forms, the connection it
// holds, every frame it receives (live, or held while paused), and a publish form for
// administrators (POST /api/publish). Frame data only ever reaches the page as textContent.
'use strict';

const MAX_LOG = 200;
const $ = (id) => document.getElementById(id);
// The bridge writes its websocket.path into the page.
const wsPath = document.body.dataset.wsPath;
let client = null;
let paused = false;
// Entries that arrived while paused, oldest first; shown on resume.
let held = [];

function show(state) {
  $('status').textContent = state === 'open' ? 'connected' : state;
  $('status').className = `status ${state}`;
  $('connect').disabled = state !== 'closed';
  $('disconnect').disabled = state === 'closed';
  $('refresh').disabled = state !== 'open';
}

function showConnection(welcome) {
  const connected = welcome && welcome.type === 'connected';
  const list = (items) => (items && items.length ? items.join(', ') : 'none');
  $('info-user').textContent = connected ? welcome.user ?? 'anonymous' : '(welcome template)';
  $('info-roles').textContent = connected ? list(welcome.roles) : '–';
  $('info-epoch').textContent = connected ? welcome.epoch : '–';
  $('info-auto').textContent = connected ? list(welcome.topics) : '–';
}

function showSubscriptions() {
  const subscriptions = client ? client.subscriptions : [];
  const items = subscriptions.map(([topic, filter]) => {
    const item = document.createElement('li');
    item.dataset.topic = topic;
    item.append(filter ? `${topic} ${JSON.stringify(filter)}` : topic);
    const drop = document.createElement('button');
    drop.type = 'button';
    drop.textContent = '×';
    drop.title = `Unsubscribe from ${topic}`;
    drop.setAttribute('aria-label', drop.title);
    drop.addEventListener('click', () => run('unsubscribe', client.unsubscribe([topic])));
    item.append(drop);
    return item;
  });
  $('subscriptions').replaceChildren(...items);
  $('none').hidden = items.length > 0;
}

function matches(item) {
  const needle = $('search').value.trim().toLowerCase();
  return !needle || item.dataset.text.includes(needle);
}

function entry(label, value, note) {
  const item = document.createElement('li');
  if (note) item.className = 'note';
  const meta = document.createElement('div');
  meta.className = 'meta';
  meta.textContent = `${new Date().toISOString().slice(11, 23)}  ${label}`;
  item.append(meta);
  let text = label;
  if (value !== undefined) {
    const body = document.createElement('pre');
    body.textContent = value instanceof ArrayBuffer
      ? `<binary frame, ${value.byteLength} bytes>`
      : JSON.stringify(value, null, 2);
    item.append(body);
    text += `\n${body.textContent}`;
  }
  item.dataset.text = text.toLowerCase();
  return item;
}

function insert(item) {
  item.hidden = !matches(item);
  const list = $('log');
  list.prepend(item);
  while (list.childElementCount > MAX_LOG) list.lastElementChild.remove();
}

function log(label, value, note = false) {
  const item = entry(label, value, note);
  if (paused) {
    held.push(item);
    if (held.length > MAX_LOG) held.shift();
    $('held').textContent = `${held.length} held`;
  } else {
    insert(item);
  }
}

function setPaused(value) {
  paused = value;
  $('pause').textContent = paused ? 'Resume' : 'Pause';
  $('pause').setAttribute('aria-pressed', String(paused));
  if (!paused) {
    for (const item of held) insert(item);
    held = [];
    $('held').textContent = '';
  }
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
    })
    .finally(showSubscriptions);
}

$('connection').addEventListener('submit', (event) => {
  event.preventDefault();
  client = new RedisWsBridge(wsPath, { token: $('token').value.trim() || undefined });
  client.on('frame', (frame) => {
    log(frame && frame.type ? `← ${frame.type}` : '←', frame);
    // Once the client has acted on the frame (a `subscribed` adds topics).
    queueMicrotask(showSubscriptions);
  });
  client.on('open', (welcome) => {
    showConnection(welcome);
    show('open');
  });
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

// POST /api/publish with the token field's credential in a header (the bridge takes admin
// credentials from headers only). A payload that is not JSON is published as text.
$('publish').addEventListener('submit', async (event) => {
  event.preventDefault();
  const output = $('published');
  const text = $('payload').value;
  let payload = text;
  try {
    payload = JSON.parse(text);
  } catch {
    // Plain text.
  }
  const headers = { 'Content-Type': 'application/json' };
  const token = $('token').value.trim();
  if (token) headers.Authorization = `Bearer ${token}`;
  output.className = '';
  output.textContent = 'publishing…';
  try {
    const response = await fetch('/api/publish', {
      method: 'POST',
      headers,
      body: JSON.stringify({ channel: $('channel').value.trim(), payload }),
    });
    const answer = await response.json().catch(() => ({}));
    if (response.ok) {
      output.textContent = `published: ${answer.receivers} receiver(s)`;
    } else {
      output.className = 'failed';
      output.textContent = `${response.status}: ${answer.error || response.statusText}`;
    }
  } catch (err) {
    output.className = 'failed';
    output.textContent = `failed: ${err.message}`;
  }
});

$('search').addEventListener('input', () => {
  for (const item of $('log').children) item.hidden = !matches(item);
});
$('pause').addEventListener('click', () => setPaused(!paused));
$('clear').addEventListener('click', () => {
  $('log').replaceChildren();
  held = [];
  $('held').textContent = '';
});

show('closed');
showSubscriptions();
