// node --test: the socket's bookkeeping against a scripted WebSocket (no server needed here;
// the browser tests in tests/browser/ run it against a live gateway).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connectJobs, createClient, errorFrom, RateLimited, Unauthorized, NotFound, chainTree, previousImage } from '../src/index.js';

class ScriptedSocket {
  static made = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    ScriptedSocket.made.push(this);
  }
  send(text) { assert.equal(this.readyState, 1, 'sent before open'); this.sent.push(JSON.parse(text)); }
  close(code = 1000) { this.readyState = 3; this.onclose?.({ code }); }
  // test side
  open() { this.readyState = 1; this.onopen?.(); }
  push(msg) { this.onmessage?.({ data: JSON.stringify(msg) }); }
  drop(code = 1006) { this.readyState = 3; this.onclose?.({ code }); }
}

function harness(extra = {}) {
  ScriptedSocket.made = [];
  const timers = [];
  const conn = connectJobs({
    url: 'ws://gw/ws', token: 't0k', WebSocket: ScriptedSocket, random: () => 1,
    setTimer: (fn, ms) => { timers.push({ fn, ms }); return timers.length; }, clearTimer: () => {}, ...extra,
  });
  return { conn, timers, sockets: ScriptedSocket.made };
}

const ev = (jobId, seq, extra = {}) => ({ type: 'job:progress', jobId, queue: 'generation', status: 'active', progress: seq, message: '', seq, ...extra });

test('sends queue until the socket opens, then go out in order after the subscribe', async () => {
  const { conn, sockets } = harness();
  await Promise.resolve();
  conn.subscribe(['a', 'b']);
  conn.send({ type: 'ping' });
  assert.equal(sockets.length, 1);
  assert.equal(sockets[0].url, 'ws://gw/ws?token=t0k');
  sockets[0].open();
  assert.deepEqual(sockets[0].sent, [{ type: 'subscribe', jobIds: ['a', 'b'] }, { type: 'ping' }]);
  assert.equal(conn.state, 'open');
});

test('events are delivered once, in seq order per job; unknown jobs are ignored', async () => {
  const { conn, sockets } = harness();
  await Promise.resolve();
  const got = [];
  conn.on('event', (e) => got.push(`${e.jobId}:${e.seq}`));
  conn.subscribe('a');
  sockets[0].open();
  for (const m of [ev('a', 1), ev('a', 2), ev('a', 2), ev('a', 1), ev('zz', 9), ev('a', 3)]) sockets[0].push(m);
  assert.deepEqual(got, ['a:1', 'a:2', 'a:3']);
  assert.equal(conn.lastSeq('a'), 3);
});

test('a dropped socket reconnects with backoff and resubscribes with since; finished jobs are left out', async () => {
  const { conn, sockets, timers } = harness({ minBackoffMs: 100, maxBackoffMs: 400 });
  await Promise.resolve();
  const states = [];
  conn.on('state', (s) => states.push(s));
  conn.subscribe(['a', 'b', 'c']);
  sockets[0].open();
  sockets[0].push(ev('a', 4));
  sockets[0].push({ type: 'job:completed', jobId: 'c', queue: 'generation', status: 'completed', result: {}, seq: 7 });
  for (let i = 0; i < 3; i += 1) {
    sockets[sockets.length - 1].drop();
    timers.at(-1).fn();
    await Promise.resolve();
  }
  assert.deepEqual(timers.map((t) => t.ms), [100, 200, 400]);  // doubling, capped
  assert.equal(conn.reconnects, 3);
  const last = sockets.at(-1);
  last.open();
  assert.deepEqual(last.sent, [{ type: 'subscribe', jobIds: ['a', 'b'], since: { a: 4 } }]);
  last.push(ev('a', 4));  // replayed again by the server: not delivered twice
  last.push(ev('a', 5));
  assert.equal(conn.lastSeq('a'), 5);
  assert.deepEqual(states, ['open', 'reconnecting', 'open']);  // one 'reconnecting' across three tries
});

test('a refused token stops reconnecting; a ticket is fetched for every connection', async () => {
  let tickets = 0;
  const { conn, sockets, timers } = harness({ token: undefined, getTicket: async () => `tk${++tickets}` });
  await new Promise((r) => setImmediate(r));
  assert.equal(sockets[0].url, 'ws://gw/ws?ticket=tk1');
  sockets[0].open();
  sockets[0].drop();
  timers.at(-1).fn();
  await new Promise((r) => setImmediate(r));
  assert.equal(sockets[1].url, 'ws://gw/ws?ticket=tk2');
  const errors = [];
  conn.on('error', (e) => errors.push(e.code));
  sockets[1].drop(4401);
  assert.equal(conn.state, 'unauthorized');
  assert.deepEqual(errors, ['unauthorized']);
  assert.equal(timers.length, 1);  // no new attempt
});

test('subscribes of one tick go out together, chunked by 200; unsubscribe forgets the job', async () => {
  const { conn, sockets } = harness();
  await Promise.resolve();
  sockets[0].open();
  const ids = Array.from({ length: 250 }, (_, i) => `j${i}`);
  conn.subscribe(ids.slice(0, 100));
  for (const id of ids.slice(100)) conn.subscribe(id);  // 150 calls, one message with the rest
  assert.equal(sockets[0].sent.length, 0);
  await Promise.resolve();
  assert.deepEqual(sockets[0].sent.map((m) => m.jobIds.length), [200, 50]);
  conn.unsubscribe('j0');
  assert.deepEqual(sockets[0].sent.at(-1), { type: 'unsubscribe', jobIds: ['j0'] });
  sockets[0].push(ev('j0', 1));
  assert.equal(conn.lastSeq('j0'), 0);
});

test('REST errors are typed with the server status, code, message and Retry-After', async () => {
  const answers = {
    '/v1/jobs/x': [404, { error: { code: 'not_found', message: "job 'x' not found" } }],
    '/v1/jobs/generation': [429, { error: { code: 'rate_limited', message: 'slow down' } }, { 'retry-after': '7' }],
    '/v1/queues': [200, [{ name: 'generation' }]],
  };
  const fetch = async (url, init) => {
    const [status, body, headers = {}] = answers[new URL(url).pathname];
    assert.equal(init.headers.Authorization, 'Bearer tk');
    return { ok: status < 400, status, text: async () => JSON.stringify(body), headers: { get: (h) => headers[h] ?? null } };
  };
  const api = createClient({ url: 'http://gw', token: 'tk', fetch });
  assert.deepEqual(await api.queues(), [{ name: 'generation' }]);
  await assert.rejects(api.get('x'), (e) => e instanceof NotFound && e.status === 404 && e.code === 'not_found');
  await assert.rejects(api.submit('generation', { prompt: 'x' }), (e) => e instanceof RateLimited && e.retryAfter === 7);
  assert.ok(errorFrom(401, {}) instanceof Unauthorized);
});

test('replay subscribes from the job start (since 0), also after a reconnect', async () => {
  const { conn, sockets, timers } = harness();
  await Promise.resolve();
  conn.subscribe('old', { replay: true });
  sockets[0].open();
  assert.deepEqual(sockets[0].sent, [{ type: 'subscribe', jobIds: ['old'], since: { old: 0 } }]);
  sockets[0].drop();
  timers.at(-1).fn();
  await Promise.resolve();
  sockets[1].open();
  assert.deepEqual(sockets[1].sent, [{ type: 'subscribe', jobIds: ['old'], since: { old: 0 } }]);
});

test('follow: the feed is asked for once open and after each reconnect; the jobs it brings are delivered', async () => {
  const { conn, sockets, timers } = harness();
  await Promise.resolve();
  const jobs = [], got = [];
  conn.on('job', (e) => jobs.push(e.jobId));
  conn.on('event', (e) => got.push(`${e.jobId}:${e.seq}`));
  const stopA = conn.follow('mine', { previews: false });
  const stopB = conn.follow('mine');  // a second follower shares it
  sockets[0].open();
  assert.deepEqual(sockets[0].sent, [{ type: 'subscribe', scope: 'mine', previews: false }]);
  for (const m of [ev('n1', 1), ev('n1', 2), ev('n1', 1), ev('n2', 1)]) sockets[0].push(m);
  sockets[0].push({ type: 'job:completed', jobId: 'n2', queue: 'generation', status: 'completed', result: {}, seq: 2 });
  assert.deepEqual(jobs, ['n1', 'n2']);
  assert.deepEqual(got, ['n1:1', 'n1:2', 'n2:1', 'n2:2']);
  sockets[0].drop();
  timers.at(-1).fn();
  await Promise.resolve();
  sockets[1].open();  // the unfinished job resumes with since; then the feed again
  assert.deepEqual(sockets[1].sent, [{ type: 'subscribe', jobIds: ['n1'], since: { n1: 2 } },
    { type: 'subscribe', scope: 'mine', previews: false }]);
  stopA();
  assert.equal(sockets[1].sent.length, 2);  // another follower still follows
  stopB();
  stopB();
  assert.deepEqual(sockets[1].sent.at(-1), { type: 'unsubscribe', scope: 'mine' });
  assert.equal(sockets[1].sent.length, 3);
  sockets[1].push(ev('n9', 1));  // no feed now: an unknown job is ignored
  assert.deepEqual(jobs, ['n1', 'n2']);
  conn.close();
});

test('chain: the last step on top, each taking the image of the step before; ids chosen once', async () => {
  const tree = chainTree([
    { queue: 'generation', payload: { prompt: 'a fox' } },
    { queue: 'upscaling', payload: { imageUrl: previousImage(1), scale: 2 } },
    { queue: 'upscaling', payload: { imageUrl: previousImage(), scale: 2, jobId: 'last' } },
  ]);
  assert.equal(tree.queue, 'upscaling');
  assert.equal(tree.payload.jobId, 'last');
  assert.equal(tree.options.jobId, undefined);  // the payload's id is the job's
  const [mid] = tree.children;
  const [first] = mid.children;
  assert.equal(tree.payload.imageUrl, `job://${mid.options.jobId}/images/0`);
  assert.equal(mid.payload.imageUrl, `job://${first.options.jobId}/images/1`);
  assert.match(first.options.jobId, /^[0-9a-f]{32}$/);
  assert.equal(first.children, undefined);
  assert.throws(() => chainTree([{ queue: 'upscaling', payload: { imageUrl: previousImage() } }]), /no step before/);
  const sent = [];
  const fetch = async (url, init) => {
    sent.push([new URL(url).pathname, JSON.parse(init.body)]);
    return { ok: true, status: 201, text: async () => '{"job":{},"children":[]}', headers: { get: () => null } };
  };
  await createClient({ url: 'http://gw', token: 'tk', fetch }).chain({ queue: 'generation', payload: { prompt: 'x' } });
  assert.equal(sent[0][0], '/v1/flows');
  assert.equal(sent[0][1].payload.prompt, 'x');
});
