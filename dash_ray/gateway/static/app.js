// The dash-ray dashboard: plain ES modules on dash-ray-client (the same client apps import).
import { connectJobs, createClient, RateLimited, Unauthorized } from './dash-ray-client.js';

const $ = (sel, root = document) => root.querySelector(sel);
const KEY = 'dash-ray-token';
const TERMINAL = new Set(['completed', 'failed', 'cancelled', 'expired']);

const state = {
  api: null, conn: null, claims: null,
  jobs: new Map(),       // id -> view (as the REST API and events tell it)
  rows: new Map(),       // id -> <tr>
  losses: new Map(),     // id -> Map(epoch -> loss)
  started: new Map(),    // id -> ms when it became active (for the ETA)
  cursor: null,
  seqs: {},              // id -> every seq received, in order (read by the browser tests)
  history: [],           // [{t, depth, done}] for the chart
  queueTimer: null,
  updateLatencies: [],   // ms from an event arriving to the first frame that can show its row updated
};
window.dash = state;

// ---------------------------------------------------------------- sign-in
function claimsOf(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4)));
  } catch { return null; }
}

function takeTokenFromFragment() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!m) return null;
  history.replaceState(null, '', location.pathname + location.search); // the fragment leaves the URL
  return decodeURIComponent(m[1]);
}

function showSignIn(message = '') {
  stop();
  sessionStorage.removeItem(KEY);
  $('#app').hidden = true;
  $('#signin').hidden = false;
  $('#signout').hidden = true;
  $('#who').textContent = '';
  $('#signin-error').textContent = message;
  setConn('signed-out');
}

async function signIn(token) {
  const claims = claimsOf(token);
  if (!claims || !claims.sub) { showSignIn('That is not an API token.'); return; }
  state.api = createClient({ url: '', token });
  try {
    await state.api.queues();
  } catch (e) {
    showSignIn(e instanceof Unauthorized ? `The server refused the token: ${e.message}` : `Cannot reach the server: ${e.message}`);
    return;
  }
  sessionStorage.setItem(KEY, token);
  state.claims = claims;
  $('#signin').hidden = true;
  $('#app').hidden = false;
  $('#signout').hidden = false;
  const admin = (claims.roles || []).includes('admin');
  $('#who').textContent = `${claims.sub}${admin ? ' (admin)' : ''}`;
  $('#f-user-label').hidden = !admin;
  start();
}

// ---------------------------------------------------------------- live feed
function setConn(s) {
  const el = $('#conn');
  el.dataset.state = s;
  el.textContent = { open: 'live', connecting: 'connecting…', reconnecting: 'reconnecting…', closed: 'closed',
    unauthorized: 'signed out', 'signed-out': 'signed out' }[s] || s;
}

function start() {
  const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
  state.conn = connectJobs({ url: wsUrl, getTicket: () => state.api.wsTicket() });
  state.conn.on('state', (s) => {
    setConn(s);
    if (s === 'unauthorized') showSignIn('Your session ended (401). Sign in again.');
  });
  state.conn.on('open', (e) => { if (e.reconnects) notice('Reconnected; caught up.', 3000); });
  state.conn.on('event', onEvent);
  // Every job of the user's (an admin's: every user's) from any client — a notebook, the CLI,
  // another tab — appears as it is made, and is followed to its end.
  const admin = (state.claims?.roles || []).includes('admin');
  state.conn.follow(admin ? 'all' : 'mine');
  state.conn.on('error', (e) => { if (e.code !== 'unauthorized') notice(`Server: ${e.message}`, 5000); });
  setConn(state.conn.state);
  refreshQueues();
  refreshSchedules();
  refreshUsage();
  state.queueTimer = setInterval(() => {
    refreshQueues();
    if ((state.ticks = (state.ticks || 0) + 1) % 3 === 0) { refreshSchedules(); refreshUsage(); }
  }, 2000);
  loadJobs(true);
}

function stop() {
  if (state.conn) state.conn.close();
  if (state.replay) state.replay.close();
  state.conn = null;
  state.replay = null;
  clearInterval(state.queueTimer);
  state.jobs.clear();
  state.rows.clear();
  $('#jobs tbody').replaceChildren();
}

/** Whether a job the feed brought belongs in the table as filtered (a text search shows only
 *  what it found: events carry no prompt). */
function wanted(e) {
  if ($('#f-q').value.trim()) return false;
  const queue = $('#f-queue').value, status = $('#f-status').value, prefix = $('#f-id').value.trim();
  const user = $('#f-user').value.trim();
  return (!queue || e.queue === queue) && (!status || e.status === status) && (!prefix || e.jobId.startsWith(prefix))
    && (!user || e.userId === user);
}

function onEvent(e) {
  const t0 = performance.now();
  if (!state.rows.has(e.jobId) && !wanted(e)) return;
  if (e.seq != null) (state.seqs[e.jobId] ||= []).push(e.seq); // seq-less: a waiting job's place refreshed
  const job = state.jobs.get(e.jobId) || { id: e.jobId, queue: e.queue, progress: 0 };
  if (e.type === 'job:progress') {
    Object.assign(job, { status: e.status, progress: e.progress, message: e.message });
    for (const k of ['epoch', 'epochs', 'step', 'steps', 'loss', 'etaS', 'queuePosition']) if (e[k] != null) job[k] = e[k];
    if (e.status === 'active' && !state.started.has(e.jobId)) state.started.set(e.jobId, Date.now());
    if (e.loss != null && e.epoch != null) {
      if (!state.losses.has(e.jobId)) state.losses.set(e.jobId, new Map());
      state.losses.get(e.jobId).set(e.epoch, e.loss);
    }
  } else if (e.type === 'job:completed') {
    Object.assign(job, { status: 'completed', progress: 100, result: e.result, message: '' });
  } else if (e.type === 'job:failed') {
    Object.assign(job, { status: e.status, error: e.error });
  } else if (e.type === 'job:preview') {
    job.preview = e.image; // the picture as it forms (or a training sample), until the result
  } // job:log and later event types change nothing shown here
  state.jobs.set(e.jobId, job);
  render(job);
  requestAnimationFrame(() => {
    state.updateLatencies.push(performance.now() - t0);
    if (state.updateLatencies.length > 20_000) state.updateLatencies.splice(0, 10_000);
  });
}

// ---------------------------------------------------------------- queues
async function refreshQueues() {
  const seq = (state.queueSeq = (state.queueSeq || 0) + 1);
  let queues;
  try {
    queues = await state.api.queues();
  } catch (e) {
    if (e instanceof Unauthorized) showSignIn('Your session ended (401). Sign in again.');
    return;
  }
  if (seq !== state.queueSeq) return; // a later refresh is on its way: this answer may predate a pause
  const admin = (state.claims?.roles || []).includes('admin');
  // Rows are kept and their cells updated in place, as the job rows are: a row rebuilt under a
  // click (every 2 s) would swallow it, the press landing on one button and the release on another.
  const body = $('#queues tbody');
  const shown = queues.filter((q) => q.name !== 'sleep' || admin);
  const rows = new Map([...body.children].map((tr) => [tr.dataset.queue, tr]));
  shown.forEach((q, i) => {
    let tr = rows.get(q.name);
    if (!tr) {
      tr = document.createElement('tr');
      tr.dataset.queue = q.name;
      tr.innerHTML = `<td>${q.name}</td>${['waiting', 'delayed', 'active', 'completed', 'failed']
        .map((k) => `<td class="num" data-count="${k}"></td>`).join('')}
        <td class="num conc"></td><td class="num frac"></td><td class="qstate"></td><td></td>`;
      if (admin) {
        const b = document.createElement('button');
        b.className = 'small';
        b.onclick = async () => {
          try {
            await (tr.dataset.paused === '1' ? state.api.resume(q.name) : state.api.pause(q.name));
          } catch (e) { showError(e); }
          refreshQueues();
        };
        tr.lastElementChild.append(b);
      }
    }
    for (const td of tr.querySelectorAll('[data-count]')) td.textContent = q.counts[td.dataset.count] ?? 0;
    $('.conc', tr).textContent = q.concurrency;
    $('.frac', tr).textContent = q.gpuFraction;
    $('.qstate', tr).textContent = q.paused ? 'paused' : 'running';
    tr.dataset.paused = q.paused ? '1' : '0';
    const b = $('button', tr);
    if (b) b.textContent = q.paused ? 'Resume' : 'Pause';
    if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
    rows.delete(q.name);
  });
  for (const tr of rows.values()) tr.remove();
  const depth = queues.reduce((n, q) => n + (q.counts.waiting || 0) + (q.counts.active || 0), 0);
  const done = queues.reduce((n, q) => n + (q.counts.completed || 0), 0);
  state.history.push({ t: Date.now(), depth, done });
  while (state.history.length && state.history[0].t < Date.now() - 5 * 60_000) state.history.shift();
  drawChart();
}

// ---------------------------------------------------------------- schedules
async function refreshSchedules() {
  const admin = (state.claims?.roles || []).includes('admin');
  let list;
  try {
    list = await state.api.schedules(admin ? { userId: '*' } : {});
  } catch (e) {
    if (e instanceof Unauthorized) showSignIn('Your session ended (401). Sign in again.');
    return;
  }
  const body = $('#schedules tbody');
  body.replaceChildren(...list.map((s) => {
    const tr = document.createElement('tr');
    tr.dataset.schedule = s.id;
    const when = s.every != null ? `every ${s.every} s` : `cron ${s.cron}${s.tz ? ` (${s.tz})` : ''}`;
    const cells = [admin && s.userId ? `${s.name} · ${s.userId}` : s.name, s.queue, String(s.runs), when,
      s.nextAt ? new Date(s.nextAt * 1000).toLocaleTimeString() : '-'];
    for (const text of cells) { const td = document.createElement('td'); td.textContent = text; tr.append(td); }
    const td = document.createElement('td');
    if (s.userId === state.claims.sub || admin) {
      const b = document.createElement('button');
      b.className = 'small unschedule';
      b.textContent = 'Delete';
      b.onclick = async () => {
        try { await state.api.unschedule(s.name, s.userId && s.userId !== state.claims.sub ? { userId: s.userId } : {}); }
        catch (e) { showError(e); }
        refreshSchedules();
      };
      td.append(b);
    }
    tr.append(td);
    return tr;
  }));
  $('#no-schedules').hidden = list.length > 0;
}
state.refreshSchedules = refreshSchedules;

// ---------------------------------------------------------------- usage and audit
function cells(tr, texts) {
  for (const text of texts) { const td = document.createElement('td'); td.textContent = text; tr.append(td); }
  return tr;
}

async function refreshUsage() {
  const admin = (state.claims?.roles || []).includes('admin');
  let usage;
  try {
    usage = await state.api.usage(admin ? { userId: '*', groupBy: 'user' } : { groupBy: 'queue' });
  } catch (e) {
    if (e instanceof Unauthorized) showSignIn('Your session ended (401). Sign in again.');
    return;
  }
  const by = admin ? 'user' : 'queue';
  $('#usage-by').textContent = by;
  $('#usage tbody').replaceChildren(...(usage.gpu?.rows || []).map((r) => {
    const tr = cells(document.createElement('tr'), [r[by], r.gpuS.toFixed(1), r.runS.toFixed(1), String(r.attempts),
      String(r.failed), String(r.lost)]);
    tr.dataset.usage = r[by];
    return tr;
  }));
  const b = usage.budget;
  const part = (name, u) => u ? `${u.used.toFixed(1)} of ${u.limit} GPU-seconds this ${name} (resets ${new Date(u.resetsAt * 1000).toLocaleString()})` : null;
  const share = (u) => u ? `${u.held} of ${u.limit} GPUs held at once now` : null;
  const line = (whose, x) => `${whose} ${x.hard ? '' : 'soft '}budget: ${[part('day', x.gpuSecondsPerDay), part('month', x.gpuSecondsPerMonth), share(x.gpuShare)].filter(Boolean).join('; ')}`;
  const ob = usage.orgBudget;
  $('#budget').textContent = [
    b ? line('Your', b) : (admin ? 'Every user\'s GPU time.' : 'No GPU budget set for you.'),
    ob ? line(`Your group ${usage.org}'s`, ob) : null,
  ].filter(Boolean).join(' ');
  if (!admin) return;
  $('#audit-panel').hidden = false;
  let trail;
  try { trail = await state.api.audit({ limit: 20 }); } catch (e) { return; }
  $('#audit tbody').replaceChildren(...trail.entries.map((e) => cells(document.createElement('tr'), [
    new Date(e.at * 1000).toLocaleTimeString(), e.who, e.action, e.target, e.owner || '-', e.ip || '-'])));
}
state.refreshUsage = refreshUsage;

function drawChart() {
  const cv = $('#chart');
  const g = cv.getContext('2d');
  const w = cv.width, h = cv.height, hs = state.history;
  g.clearRect(0, 0, w, h);
  if (hs.length < 2) return;
  const t0 = Date.now() - 5 * 60_000;
  const x = (t) => ((t - t0) / (5 * 60_000)) * w;
  const rates = hs.map((p, i) => {
    const back = hs.find((q) => q.t >= p.t - 10_000) || hs[0];
    return i ? Math.max(0, p.done - back.done) : 0;
  });
  const top = Math.max(1, ...hs.map((p) => p.depth), ...rates);
  const line = (vals, color) => {
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath();
    hs.forEach((p, i) => { const y = h - 4 - (vals[i] / top) * (h - 8); i ? g.lineTo(x(p.t), y) : g.moveTo(x(p.t), y); });
    g.stroke();
  };
  line(hs.map((p) => p.depth), '#2f6fed');
  line(rates, '#2e7d32');
}

// ---------------------------------------------------------------- jobs
async function loadJobs(reset) {
  if (reset) {
    state.cursor = null;
    for (const id of state.rows.keys()) state.conn?.unsubscribe(id);
    state.rows.clear();
    state.jobs.clear();
    $('#jobs tbody').replaceChildren();
  }
  const admin = (state.claims?.roles || []).includes('admin');
  let page;
  try {
    page = await state.api.jobs({ queue: $('#f-queue').value, status: $('#f-status').value, limit: 20,
      q: $('#f-q').value.trim() || undefined, idPrefix: $('#f-id').value.trim() || undefined,
      cursor: state.cursor || undefined, userId: admin ? $('#f-user').value.trim() || '*' : undefined });
  } catch (e) {
    if (e instanceof Unauthorized) showSignIn('Your session ended (401). Sign in again.');
    return;
  }
  for (const v of page.jobs) {
    state.jobs.set(v.id, { ...state.jobs.get(v.id), ...v });
    render(state.jobs.get(v.id), true);
  }
  state.conn.subscribe(page.jobs.map((v) => v.id));
  state.cursor = page.nextCursor;
  $('#more').hidden = !page.nextCursor;
  if (admin) $('#jobs').classList.add('admin');
}

function detail(job) {
  if (TERMINAL.has(job.status)) {
    if (job.status !== 'completed') return job.error || job.message || '';
    return job.sameAs ? `the result of ${job.sameAs}` : job.cached ? 'cached: an earlier run of the same payload' : '';
  }
  const bits = [];
  if (job.sameAs) bits.push(`follows ${job.sameAs} (the same payload, running)`);
  if (job.parentId) bits.push(`for ${job.parentId}`);
  if (job.epoch != null && job.epochs) bits.push(`epoch ${job.epoch}/${job.epochs}`);
  else if (job.step != null && job.steps) bits.push(`step ${job.step}/${job.steps}`);
  if (job.loss != null) bits.push(`loss ${Number(job.loss).toFixed(4)}`);
  const since = state.started.get(job.id);
  if (job.status === 'active' && since && job.progress >= 5) {  // MIN_PROGRESS of queues/eta.py
    const left = ((Date.now() - since) / job.progress) * (100 - job.progress) / 1000;
    bits.push(`ETA ${left < 90 ? `${Math.ceil(left)} s` : `${Math.ceil(left / 60)} min`}`);
  }
  if (job.status === 'waiting' && job.queuePosition) {
    bits.push(`#${job.queuePosition} in queue`);
    if (job.etaS != null) bits.push(`starts in ~${job.etaS < 90 ? `${Math.ceil(job.etaS)} s` : `${Math.ceil(job.etaS / 60)} min`}`);
  }
  return bits.join(' · ') || job.message || '';
}

function render(job, append = false) {
  let tr = state.rows.get(job.id);
  if (!tr) {
    tr = document.createElement('tr');
    tr.dataset.job = job.id;
    tr.innerHTML = `<td class="id"><code class="jid"></code> <button class="copy small" title="Copy the job id">copy</button>
      <div class="user"></div></td><td>${job.queue}</td>
      <td class="status"></td><td><progress max="100" value="0"></progress> <span class="pct"></span></td>
      <td class="detail"></td><td class="result"></td><td class="actions"></td>`;
    // The whole id (users choose theirs: `portrait-session-1` and `-2` must read apart), wrapped,
    // never cut; the button copies it.
    $('.jid', tr).textContent = job.id;
    $('.copy', tr).onclick = async () => {
      try { await navigator.clipboard.writeText(job.id); $('.copy', tr).textContent = 'copied'; }
      catch (e) { window.getSelection().selectAllChildren($('.jid', tr)); }  // no clipboard: selected to copy by hand
    };
    state.rows.set(job.id, tr);
    const body = $('#jobs tbody');
    append ? body.append(tr) : body.prepend(tr);
  }
  const admin = (state.claims?.roles || []).includes('admin');
  if (admin && job.userId) $('.user', tr).textContent = job.userId;
  if (job.parentId) { tr.classList.add('flow-child'); tr.dataset.parent = job.parentId; }
  const st = $('.status', tr);
  st.textContent = job.status || '';
  st.className = `status status-${job.status}`;
  $('progress', tr).value = job.progress || 0;
  $('.pct', tr).textContent = `${Math.round(job.progress || 0)}%`;
  $('.detail', tr).textContent = detail(job);
  renderActions(job, tr);
  renderResult(job, tr);
}

function renderActions(job, tr) {
  const cell = $('.actions', tr);
  const want = TERMINAL.has(job.status) ? (job.status === 'completed' ? '' : 'retry')
    : job.status === 'waiting' ? 'front cancel' : 'cancel';
  if (cell.dataset.kind === want) return;
  cell.dataset.kind = want;
  cell.replaceChildren();
  const admin = (state.claims?.roles || []).includes('admin');
  for (const kind of want.split(' ').filter(Boolean)) {
    const b = document.createElement('button');
    b.className = `small ${kind}`;
    b.textContent = { cancel: 'Cancel', retry: 'Retry', front: 'To front' }[kind];
    // an admin's puts it at the front of its queue; a user's, first among their own waiting jobs
    if (kind === 'front') b.title = admin ? 'Run it next' : 'First among your waiting jobs';
    b.onclick = async () => {
      try {
        const v = await (kind === 'cancel' ? state.api.cancel(job.id) : kind === 'retry' ? state.api.retry(job.id)
          : state.api.move(job.id, { to: 'front' }));
        if (kind === 'retry') { state.conn.unsubscribe(job.id); state.started.delete(job.id); state.conn.subscribe(job.id); }
        Object.assign(job, v);
        render(job);
      } catch (e) { showError(e); }
    };
    cell.append(b);
  }
}

function renderResult(job, tr) {
  const cell = $('.result', tr);
  if (job.queue === 'training' && state.losses.get(job.id)?.size) {
    let cv = $('canvas.loss', cell);
    if (!cv) { cv = document.createElement('canvas'); cv.className = 'loss'; cv.width = 160; cv.height = 48; cell.append(cv); }
    drawLoss(cv, [...state.losses.get(job.id).entries()].sort((a, b) => a[0] - b[0]));
  }
  let pv = $('img.preview', cell);
  if (job.preview && !cell.dataset.done && job.status !== 'completed') {
    if (!pv) { pv = document.createElement('img'); pv.className = 'preview'; pv.alt = `preview of ${job.id}`; cell.append(pv); }
    if (pv.src !== job.preview) pv.src = job.preview;
  } else if (pv && (job.status === 'completed' || cell.dataset.done)) pv.remove();
  if (job.status !== 'completed' || cell.dataset.done) return;
  const r = job.result || {};
  const urls = [...(r.images || []), ...(r.image ? [r.image] : [])];
  if (!urls.length && job.queue !== 'training') return;
  cell.dataset.done = '1';
  for (const url of urls) {
    const img = document.createElement('img');
    img.src = url; // signed for this path: no token in the URL
    img.alt = `result of ${job.id}`;
    img.onclick = () => { $('#viewer img').src = url; $('#viewer').showModal(); };
    cell.append(img);
    addEarlier(job, url);
  }
  if (job.queue === 'training' && !state.losses.get(job.id)?.size) loadLosses(job);
}

function loadLosses(job) {
  // A training job that finished before this page opened: its epochs from its replay stream, on
  // one extra socket for all such jobs (a socket each would use up the per-user socket limit).
  if (!state.replay) {
    state.replay = connectJobs({ url: `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`,
      getTicket: () => state.api.wsTicket() });
    state.replay.on('event', (e) => {
      if (e.loss == null || e.epoch == null) return;
      if (!state.losses.has(e.jobId)) state.losses.set(e.jobId, new Map());
      state.losses.get(e.jobId).set(e.epoch, e.loss);
      const j = state.jobs.get(e.jobId);
      if (j && state.rows.has(e.jobId)) renderResult(j, state.rows.get(e.jobId));
    });
  }
  state.replay.subscribe(job.id, { replay: true });
}

function drawLoss(cv, points) {
  const g = cv.getContext('2d');
  g.clearRect(0, 0, cv.width, cv.height);
  if (!points.length) return;
  const vs = points.map((p) => p[1]);
  const lo = Math.min(...vs), hi = Math.max(...vs), span = hi - lo || 1;
  const n = points.length;
  g.strokeStyle = '#2f6fed';
  g.fillStyle = '#2f6fed';
  g.lineWidth = 1.5;
  g.beginPath();
  points.forEach(([, v], i) => {
    const x = 6 + (n === 1 ? 0 : (i / (n - 1)) * (cv.width - 12));
    const y = cv.height - 6 - ((v - lo) / span) * (cv.height - 12);
    i ? g.lineTo(x, y) : g.moveTo(x, y);
    g.fillRect(x - 1.5, y - 1.5, 3, 3);
  });
  g.stroke();
  cv.dataset.epochs = String(n);
  cv.title = points.map(([e, v]) => `epoch ${e}: ${v.toFixed(4)}`).join('\n');
}

function addEarlier(job, url) {
  for (const sel of document.querySelectorAll('select[name=earlier]')) {
    const o = document.createElement('option');
    o.value = url;
    o.textContent = `${job.queue} ${job.id.slice(0, 8)} ${url.split('?')[0].split('/').pop()}`;
    sel.append(o);
  }
}

// ---------------------------------------------------------------- submit
function notice(text, ms) {
  const el = $('#notice');
  el.textContent = text;
  el.hidden = false;
  clearTimeout(el._t);
  if (ms) el._t = setTimeout(() => { el.hidden = true; }, ms);
}

function showError(e) {
  if (e instanceof Unauthorized) { showSignIn('Your session ended (401). Sign in again.'); return; }
  const msg = e instanceof RateLimited ? `Too many requests: retry in ${e.retryAfter ?? '?'} s. (${e.message})` : e.message;
  $('#submit-error').textContent = msg;
}

async function imageRef(file) {
  return (await state.api.upload(file)).url; // upload://<id>, checked by the server
}

async function earlierRef(url) {
  // an earlier result: fetched through its signed link, uploaded as an input
  const blob = await (await fetch(url)).blob();
  return imageRef(blob);
}

async function submit(form) {
  $('#submit-error').textContent = '';
  const f = Object.fromEntries(new FormData(form).entries());
  const num = (k) => (f[k] === '' || f[k] == null ? undefined : Number(f[k]));
  let queue = form.dataset.queue, payload, options;
  if (queue === 'generation') {
    payload = { prompt: f.prompt, settings: { steps: num('steps'), width: num('width'), height: num('height'),
      seed: num('seed'), numImages: num('numImages'), loraId: f.loraId || undefined } };
  } else if (queue === 'upscaling') {
    const file = form.elements.file.files[0];
    const url = file ? await imageRef(file) : (f.earlier ? await earlierRef(f.earlier) : null);
    if (!url) throw new Error('Pick an image, or an earlier result.');
    payload = { imageUrl: url, scale: num('scale'), model: f.model || 'lanczos' };
  } else {
    const files = [...form.elements.files.files];
    const earlier = [...form.elements.earlier.selectedOptions].map((o) => o.value);
    const urls = [...await Promise.all(files.map(imageRef)), ...await Promise.all(earlier.map(earlierRef))];
    if (!urls.length) throw new Error('Pick one or more images.');
    payload = { loraId: f.loraId, prompt: f.prompt, imageUrls: urls,
      settings: { epochs: num('epochs'), rank: num('rank'), resolution: num('resolution') } };
    options = { priority: num('priority') };
  }
  track(await state.api.submit(queue, JSON.parse(JSON.stringify(payload)), options));
}

/** Show a job (a view from the REST API) and follow it live. */
function track(view) {
  state.jobs.set(view.id, { ...state.jobs.get(view.id), ...view });
  render(state.jobs.get(view.id));
  state.conn.subscribe(view.id);
}
state.track = track;

// ---------------------------------------------------------------- wiring
function wire() {
  $('#signin-form').onsubmit = (e) => { e.preventDefault(); signIn($('#token').value.trim()); };
  $('#signout').onclick = () => showSignIn('Signed out.');
  for (const b of document.querySelectorAll('.tabs button')) {
    b.onclick = () => {
      for (const x of document.querySelectorAll('.tabs button')) x.classList.toggle('active', x === b);
      for (const form of document.querySelectorAll('#submit-panel form')) form.hidden = form.dataset.queue !== b.dataset.tab;
    };
  }
  for (const form of document.querySelectorAll('#submit-panel form')) {
    form.onsubmit = async (e) => {
      e.preventDefault();
      const button = $('button', form);
      button.disabled = true;
      try { await submit(form); } catch (err) { showError(err); } finally { button.disabled = false; }
    };
  }
  $('#f-queue').onchange = () => loadJobs(true);
  $('#f-status').onchange = () => loadJobs(true);
  $('#f-user').onchange = () => loadJobs(true);
  $('#f-q').onchange = () => loadJobs(true);
  $('#f-id').onchange = () => loadJobs(true);
  $('#more').onclick = () => loadJobs(false);
  setInterval(() => { for (const job of state.jobs.values()) if (job.status === 'active') $('.detail', state.rows.get(job.id)).textContent = detail(job); }, 1000);
}

wire();
const fromFragment = takeTokenFromFragment();
const token = fromFragment || sessionStorage.getItem(KEY);
if (token) signIn(token); else showSignIn();
