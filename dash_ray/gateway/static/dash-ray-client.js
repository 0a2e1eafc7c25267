// dash-ray-client: the WebSocket job feed and the REST API of a dash-ray gateway.
// Dependency-free ES module; works in browsers and in Node 20+ (pass a WebSocket class there).

/** Errors the REST API answers, by HTTP status; `code` and `message` are the server's. */
export class DashApiError extends Error {
  constructor(message, { status = 0, code = 'error', body = null, retryAfter = null } = {}) {
    super(message);
    this.name = this.constructor.name;
    this.status = status;
    this.code = code;
    this.body = body;
    this.retryAfter = retryAfter;
  }
}
export class InvalidPayload extends DashApiError {}
export class Unauthorized extends DashApiError {}
export class Forbidden extends DashApiError {}
export class NotFound extends DashApiError {}
export class Conflict extends DashApiError {}
export class RateLimited extends DashApiError {}
export class Unavailable extends DashApiError {}
export class ServerError extends DashApiError {}

const BY_STATUS = {
  400: InvalidPayload, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
  413: InvalidPayload, 422: InvalidPayload, 429: RateLimited, 503: Unavailable,
};

/** The typed error of an error answer (status, its JSON body, its Retry-After header). */
export function errorFrom(status, body, retryAfter = null) {
  const err = (body && body.error) || body || {};
  const Cls = BY_STATUS[status] || (status >= 500 ? ServerError : DashApiError);
  const after = retryAfter == null ? null : Number(retryAfter);
  return new Cls(err.message || `HTTP ${status}`, {
    status, code: err.code || 'error', body: err, retryAfter: Number.isFinite(after) ? after : null,
  });
}

const FINAL = new Set(['job:completed', 'job:failed']);
const MAX_IDS = 200; // per subscribe message (the server's limit)

function withParam(url, name, value) {
  return `${url}${url.includes('?') ? '&' : '?'}${name}=${encodeURIComponent(value)}`;
}

/**
 * One socket for the events of many jobs. It queues what is sent before it is open, reconnects
 * with backoff, and subscribes again with `since` (the last `seq` seen of each job), so no event
 * is lost or delivered twice across a reconnect.
 *
 * @param {object} o
 * @param {string} o.url          the gateway's WebSocket URL (`ws://host:8000/ws`)
 * @param {string} [o.token]      an API token (sent as `?token=`; prefer getTicket)
 * @param {() => Promise<string>} [o.getTicket]  a one-use ticket per connection (POST /v1/ws-ticket)
 * @param {typeof WebSocket} [o.WebSocket]  the WebSocket class (default: the global one)
 */
export function connectJobs({
  url, token, getTicket, WebSocket: Impl = globalThis.WebSocket, minBackoffMs = 250, maxBackoffMs = 5000,
  random = Math.random, setTimer = setTimeout, clearTimer = clearTimeout,
} = {}) {
  if (!url) throw new Error('connectJobs: url is required');
  if (!Impl) throw new Error('connectJobs: no WebSocket class (pass WebSocket in Node)');
  const listeners = new Map();
  const seqs = new Map(); // jobId -> last seq delivered (0: none yet)
  const finished = new Set();
  const replay = new Set(); // jobs subscribed from their first event (since 0)
  const pendingSubs = new Set(); // subscribed this tick, sent together
  let flushQueued = false;
  const queued = [];
  let scope = null; // the feed of the caller's jobs ('mine' | 'all'), while anyone follows it
  let scopePreviews = true;
  let followers = 0;
  let ws = null;
  let closed = false;
  let failures = 0;
  let timer = null;
  const conn = {
    state: 'connecting', // connecting | open | reconnecting | closed | unauthorized
    reconnects: 0,
    received: 0,
  };

  function emit(type, data) {
    for (const fn of listeners.get(type) || []) {
      try { fn(data); } catch (e) { setTimer(() => { throw e; }, 0); }
    }
  }

  function setState(state) {
    if (conn.state !== state) {
      conn.state = state;
      emit('state', state);
    }
  }

  function rawSend(obj) {
    ws.send(typeof obj === 'string' ? obj : JSON.stringify(obj));
  }

  function subscribeMessages(ids) {
    const out = [];
    for (let i = 0; i < ids.length; i += MAX_IDS) {
      const chunk = ids.slice(i, i + MAX_IDS);
      const msg = { type: 'subscribe', jobIds: chunk };
      const since = {};
      for (const id of chunk) if (seqs.get(id) > 0 || replay.has(id)) since[id] = seqs.get(id);
      if (Object.keys(since).length) msg.since = since;
      out.push(msg);
    }
    return out;
  }

  function onMessage(text) {
    let m;
    try { m = JSON.parse(text); } catch { return; }
    conn.received += 1;
    if (typeof m.type === 'string' && m.type.startsWith('job:')) {
      if (!seqs.has(m.jobId)) {
        // not (or no longer) subscribed; with a feed, a job it brings (new, or unfinished when it began)
        if (!scope || finished.has(m.jobId)) return;
        seqs.set(m.jobId, 0);
        emit('job', m);
      }
      if (typeof m.seq === 'number' && m.seq <= seqs.get(m.jobId)) return; // seen already
      if (typeof m.seq === 'number') seqs.set(m.jobId, m.seq);
      if (FINAL.has(m.type)) finished.add(m.jobId);
      emit(m.type, m);
      emit('event', m);
    } else {
      emit(m.type, m);
    }
    emit('message', text);
  }

  async function open() {
    if (closed) return;
    let target = url;
    try {
      if (getTicket) target = withParam(url, 'ticket', await getTicket());
      else if (token) target = withParam(url, 'token', token);
    } catch (e) {
      if (e && e.status === 401) { setState('unauthorized'); emit('error', { code: 'unauthorized', message: e.message }); return; }
      scheduleReconnect();
      return;
    }
    if (closed) return;
    const socket = new Impl(target);
    ws = socket;
    socket.onopen = () => {
      if (ws !== socket) return;
      failures = 0;
      pendingSubs.clear(); // all of them go out now
      const ids = [...seqs.keys()].filter((id) => !finished.has(id));
      for (const msg of subscribeMessages(ids)) rawSend(msg);
      if (scope) rawSend({ type: 'subscribe', scope, previews: scopePreviews });
      while (queued.length) rawSend(queued.shift());
      setState('open');
      emit('open', { reconnects: conn.reconnects });
    };
    socket.onmessage = (e) => { if (ws === socket) onMessage(typeof e.data === 'string' ? e.data : String(e.data)); };
    socket.onerror = () => {};
    socket.onclose = (e) => {
      if (ws !== socket) return;
      ws = null;
      if (closed) { setState('closed'); return; }
      if (e && e.code === 4401) {
        setState('unauthorized');
        emit('error', { type: 'error', code: 'unauthorized', message: 'the server refused the token' });
        return;
      }
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    if (closed) return;
    setState('reconnecting');
    failures += 1;
    conn.reconnects += 1;
    const delay = Math.min(maxBackoffMs, minBackoffMs * 2 ** (failures - 1)) * (0.5 + random() / 2);
    clearTimer(timer);
    timer = setTimer(open, delay);
  }

  function send(obj) {
    if (ws && ws.readyState === 1) rawSend(obj);
    else queued.push(typeof obj === 'string' ? obj : JSON.stringify(obj));
  }

  Object.assign(conn, {
    /** Subscribe to jobs: their current state first, then live events; with `replay`, every
     *  event from each job's start that the server keeps (since 0) instead of the current state. */
    subscribe(jobIds, { replay: fromStart = false } = {}) {
      const fresh = [];
      for (const id of [].concat(jobIds)) {
        if (!seqs.has(id)) { seqs.set(id, 0); fresh.push(id); if (fromStart) replay.add(id); }
      }
      if (!fresh.length) return;
      // Subscribes made in one tick go out as one message (the server limits messages a second);
      // before the socket is open, they go out on open, with whatever `since` is known by then.
      fresh.forEach((id) => pendingSubs.add(id));
      if (!flushQueued) {
        flushQueued = true;
        queueMicrotask(() => {
          flushQueued = false;
          const ids = [...pendingSubs].filter((id) => seqs.has(id));
          pendingSubs.clear();
          if (ids.length && ws && ws.readyState === 1) for (const msg of subscribeMessages(ids)) rawSend(msg);
        });
      }
    },
    /** Follow the caller's jobs without naming them: those unfinished now, then each new one the
     *  moment it is made, from any client (`scope` 'all': every user's new jobs, admins only).
     *  Their events come as any subscribed job's; a 'job' listener hears of each job first.
     *  Returns a function that stops following (once every caller of follow() has). */
    follow(scopeName = 'mine', { previews = true } = {}) {
      followers += 1;
      if (scope !== scopeName) {
        scope = scopeName;
        scopePreviews = previews;
        if (ws && ws.readyState === 1) rawSend({ type: 'subscribe', scope, previews }); // else on open
      }
      let done = false;
      return () => {
        if (done) return;
        done = true;
        followers -= 1;
        if (followers === 0 && scope) {
          if (ws && ws.readyState === 1) rawSend({ type: 'unsubscribe', scope });
          scope = null;
        }
      };
    },
    unsubscribe(jobIds) {
      const ids = [].concat(jobIds).filter((id) => seqs.delete(id));
      ids.forEach((id) => { finished.delete(id); replay.delete(id); });
      if (ids.length) send({ type: 'unsubscribe', jobIds: ids });
    },
    /** Listen: 'job:progress' | 'job:completed' | 'job:failed' | 'event' | 'job' (a job the feed
     *  brought, its first event) | 'error' | 'state' | 'open' | 'message'. */
    on(type, fn) {
      if (!listeners.has(type)) listeners.set(type, new Set());
      listeners.get(type).add(fn);
      return () => listeners.get(type).delete(fn);
    },
    send,
    /** The last seq delivered for a job (0: none yet). */
    lastSeq(jobId) { return seqs.get(jobId) || 0; },
    close() {
      closed = true;
      clearTimer(timer);
      if (ws) ws.close(1000);
      setState('closed');
    },
  });
  open();
  return conn;
}

/**
 * The REST API: submit, get, cancel, retry, jobs, queues, pause, resume, upload, wsTicket.
 * Errors are DashApiError subclasses carrying the server's status, code and message.
 */
/** In `chain`: the `n`th image of the step before. */
export function previousImage(n = 0) { return `job://${PREVIOUS}/images/${n}`; }
const PREVIOUS = '{previous}';

function newId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID().replace(/-/g, '');
  const bytes = new Uint8Array(16);
  if (c && typeof c.getRandomValues === 'function') c.getRandomValues(bytes);
  else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function withPrevious(value, before) {
  if (typeof value === 'string' && value.startsWith(`job://${PREVIOUS}/`)) {
    if (before === null) throw new Error('chain: the first step has no step before it');
    return value.replace(PREVIOUS, before);
  }
  if (Array.isArray(value)) return value.map((v) => withPrevious(v, before));
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, withPrevious(v, before)]));
  }
  return value;
}

/** The flow (`POST /v1/flows` body) of steps that run one after the other: each `{queue,
 *  payload, options?}`, taking the step before's image as `previousImage()`; the last step is its
 *  top job, the one before it its child, and so on. */
export function chainTree(steps) {
  if (!steps.length) throw new Error('chain: give at least one step');
  let tree = null, before = null;
  for (const step of steps) {
    const payload = { ...step.payload };
    const options = { ...(step.options || {}) };
    const own = payload.jobId || payload.loraId;
    const id = own || options.jobId || newId();
    if (!own) options.jobId = id;
    const node = { queue: step.queue, payload: withPrevious(payload, before), options };
    if (tree) node.children = [tree];
    tree = node; before = id;
  }
  return tree;
}

export function createClient({ url = '', token, fetch: doFetch = globalThis.fetch.bind(globalThis) } = {}) {
  const base = url.replace(/\/$/, '');
  async function call(method, path, { json, body, headers = {} } = {}) {
    const h = { ...headers };
    if (token) h.Authorization = `Bearer ${token}`;
    if (json !== undefined) h['Content-Type'] = 'application/json';
    const resp = await doFetch(base + path, { method, headers: h, body: json !== undefined ? JSON.stringify(json) : body });
    const text = await resp.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = { error: { message: text } }; }
    if (!resp.ok) throw errorFrom(resp.status, data, resp.headers.get('retry-after'));
    return data;
  }
  const q = (params) => {
    const s = Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== '')
      .map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join('&');
    return s ? `?${s}` : '';
  };
  return {
    submit: (queue, payload, options) => call('POST', `/v1/jobs/${queue}`, { json: options ? { ...payload, options } : payload }),
    get: (id) => call('GET', `/v1/jobs/${encodeURIComponent(id)}`),
    cancel: (id) => call('DELETE', `/v1/jobs/${encodeURIComponent(id)}`),
    retry: (id) => call('POST', `/v1/jobs/${encodeURIComponent(id)}/retry`),
    /** A job and the jobs it waits for, made in one step: `{queue, payload, options?, onFailure?,
     *  children: [...]}`; a payload may take a child's image as `job://<childId>/images/<n>`. */
    flow: (tree) => call('POST', '/v1/flows', { json: tree }),
    /** Steps that run one after the other, made in one step (see `chainTree`); the last step's
     *  flow view. E.g. `chain({queue: 'generation', payload: {prompt}}, {queue: 'upscaling',
     *  payload: {imageUrl: previousImage(), scale: 2}})`. A job submitted alone may also wait
     *  for earlier ones: `options.after`, or a `job://<id>/images/<n>` input of a job not done. */
    chain: (...steps) => call('POST', '/v1/flows', { json: chainTree(steps) }),
    /** Reorder a waiting job: `{to: 'front'}`, `{before: otherId}` (yours, same priority), or an
     *  admin's `{priority: 1-3}`. Your jobs only trade places among themselves. */
    move: (id, where) => call('POST', `/v1/jobs/${encodeURIComponent(id)}/move`, { json: where }),
    /** Your jobs, newest first; search with `q` (prompt text), `idPrefix`, `from` / `to` (creation time). */
    jobs: ({ queue, status, limit, cursor, userId, q: text, idPrefix, from, to } = {}) =>
      call('GET', `/v1/jobs${q({ queue, status, limit, cursor, userId, q: text, idPrefix, from, to })}`),
    queues: () => call('GET', '/v1/queues'),
    /** What you hold against your limits, the GPU time charged to you (`gpu`: `from` / `to`,
     *  `groupBy` queue | model | day | hour | user | none; admins: `userId`, or '*' for everyone)
     *  and your GPU budget (`budget`). */
    usage: ({ from, to, groupBy, userId } = {}) => call('GET', `/v1/usage${q({ from, to, groupBy, userId })}`),
    /** Admins: the audit trail, newest first (`action`, `by`: filters; `cursor`: nextCursor). */
    audit: ({ limit, cursor, action, by } = {}) => call('GET', `/v1/audit${q({ limit, cursor, action, by })}`),
    /** A recurring job: `{name, queue, payload, every (s) | cron, tz?, endAt?, limit?, options?}`;
     *  the same name replaces it. */
    schedule: (body) => call('POST', '/v1/schedules', { json: body }),
    schedules: ({ userId } = {}) => call('GET', `/v1/schedules${q({ userId })}`),
    unschedule: (name, { userId } = {}) => call('DELETE', `/v1/schedules/${encodeURIComponent(name)}${q({ userId })}`),
    pause: (queue) => call('POST', `/v1/queues/${queue}/pause`),
    resume: (queue) => call('POST', `/v1/queues/${queue}/resume`),
    upload: (blob) => call('POST', '/v1/uploads', { body: blob }),
    wsTicket: async () => (await call('POST', '/v1/ws-ticket')).ticket,
    artifactUrl: (path) => base + path,
  };
}
