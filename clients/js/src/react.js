// React hooks on dash-ray-client. React is a peer dependency (the app's own).
import { useEffect, useRef, useState } from 'react';
import { connectJobs } from './index.js';

const shared = new Map(); // url + credentials -> { conn, users }

function acquire(options) {
  const key = `${options.url}\u0000${options.token || ''}\u0000${options.getTicket ? 'ticket' : ''}`;
  let entry = shared.get(key);
  if (!entry) {
    entry = { conn: connectJobs(options), users: 0 };
    shared.set(key, entry);
  }
  entry.users += 1;
  return {
    conn: entry.conn,
    release() {
      entry.users -= 1;
      if (entry.users === 0) {
        entry.conn.close();
        shared.delete(key);
      }
    },
  };
}

function socketUrl(url) {
  if (url) return url;
  const loc = globalThis.location;
  return loc ? `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}/ws` : url;
}

/**
 * The design's hook: `const ws = useJobWebSocket(userId)`, then `ws.onmessage = ...` and
 * `ws.send(JSON.stringify({type: 'subscribe', jobIds: [...]}))`. The object behaves like a
 * WebSocket that never drops: sends wait until it is open, and after a reconnect each job is
 * subscribed again with `since`, so `onmessage` gets every event once.
 */
export function useJobWebSocket(userId, { url, token, getTicket, WebSocket } = {}) {
  const ref = useRef(null);
  if (ref.current === null) {
    const { conn, release } = acquire({ url: socketUrl(url), token, getTicket, WebSocket });
    const facade = {
      userId,
      onmessage: null,
      onopen: null,
      onerror: null,
      connection: conn,
      get readyState() { return conn.state === 'open' ? 1 : conn.state === 'closed' ? 3 : 0; },
      send(text) {
        const msg = typeof text === 'string' ? JSON.parse(text) : text;
        if (msg.type === 'subscribe') conn.subscribe(msg.jobIds);
        else if (msg.type === 'unsubscribe') conn.unsubscribe(msg.jobIds);
        else conn.send(msg);
      },
      close() { off.forEach((f) => f()); release(); },
    };
    const off = [
      conn.on('message', (data) => facade.onmessage && facade.onmessage({ data })),
      conn.on('open', (e) => facade.onopen && facade.onopen(e)),
      conn.on('error', (e) => facade.onerror && facade.onerror(e)),
    ];
    ref.current = facade;
  }
  useEffect(() => () => ref.current && ref.current.close(), []);
  return ref.current;
}

/** One job's live state: `{status, progress, message, result, error, epoch, loss, seq, preview, log,
 * queuePosition, etaS}` (`preview`: the latest `job:preview` image, a data URL; `log`: the latest
 * `job:log` line; `queuePosition` and `etaS`: a waiting job's place and seconds until it starts). */
export function useJob(jobId, { url, token, getTicket, WebSocket } = {}) {
  const [state, setState] = useState({ status: 'unknown', progress: 0, message: '', result: null, error: null });
  useEffect(() => {
    if (!jobId) return undefined;
    const { conn, release } = acquire({ url: socketUrl(url), token, getTicket, WebSocket });
    const off = conn.on('event', (e) => {
      if (e.jobId !== jobId) return;
      if (e.type === 'job:preview') { setState((s) => ({ ...s, seq: e.seq, preview: e.image })); return; }
      if (e.type === 'job:log') { setState((s) => ({ ...s, seq: e.seq, log: e.message })); return; }
      setState((s) => ({
        ...s,
        seq: e.seq ?? s.seq, // a seq-less job:progress refreshes a waiting job's place
        queuePosition: e.type === 'job:progress' && e.status === 'waiting' ? e.queuePosition : undefined,
        etaS: e.type === 'job:progress' ? e.etaS : undefined,
        status: e.status || (e.type === 'job:completed' ? 'completed' : s.status),
        progress: e.type === 'job:completed' ? 100 : (e.progress ?? s.progress),
        message: e.message ?? s.message,
        result: e.type === 'job:completed' ? e.result : s.result,
        error: e.type === 'job:failed' ? e.error : s.error,
        epoch: e.epoch ?? s.epoch,
        loss: e.loss ?? s.loss,
      }));
    });
    conn.subscribe([jobId]);
    return () => { off(); conn.unsubscribe([jobId]); release(); };
  }, [jobId, url, token, getTicket, WebSocket]);
  return state;
}

/**
 * All of the caller's jobs, live: those unfinished when it mounts, then each new one the moment
 * it is made, from any client (a notebook, the CLI, another tab). Returns the jobs newest first,
 * each `{id, queue, status, progress, message, result, error, preview, queuePosition, etaS}`;
 * `scope: 'all'` (admins) gets every user's new jobs. At most `max` are kept (the oldest go).
 */
export function useMyJobs({ url, token, getTicket, WebSocket, scope = 'mine', previews = true, max = 200 } = {}) {
  const [jobs, setJobs] = useState([]);
  useEffect(() => {
    const { conn, release } = acquire({ url: socketUrl(url), token, getTicket, WebSocket });
    const byId = new Map();
    let queued = false;
    const publish = () => {
      if (queued) return;
      queued = true;
      queueMicrotask(() => { queued = false; setJobs([...byId.values()].reverse()); });
    };
    const off = conn.on('event', (e) => {
      let job = byId.get(e.jobId);
      if (!job) {
        job = { id: e.jobId, queue: e.queue, status: 'unknown', progress: 0, message: '', result: null, error: null };
        byId.set(e.jobId, job);
        if (byId.size > max) byId.delete(byId.keys().next().value);
      }
      const next = { ...job };
      if (e.type === 'job:preview') next.preview = e.image;
      else if (e.type === 'job:log') next.log = e.message;
      else {
        next.status = e.status || (e.type === 'job:completed' ? 'completed' : job.status);
        next.progress = e.type === 'job:completed' ? 100 : (e.progress ?? job.progress);
        next.message = e.message ?? job.message;
        if (e.type === 'job:completed') next.result = e.result;
        if (e.type === 'job:failed') next.error = e.error;
        next.queuePosition = e.type === 'job:progress' && e.status === 'waiting' ? e.queuePosition : undefined;
        next.etaS = e.type === 'job:progress' ? e.etaS : undefined;
      }
      byId.set(e.jobId, next);
      publish();
    });
    const unfollow = conn.follow(scope, { previews });
    return () => { off(); unfollow(); release(); };
  }, [url, token, getTicket, WebSocket, scope, previews, max]);
  return jobs;
}
