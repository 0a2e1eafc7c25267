// Node BullMQ on a dash-ray Redis, as a Node service or bull-board would read it: a QueueEvents
// listener for one job's `progress` and `completed` events, then Job.getState() and job.progress.
// Prints "ready" once listening, then one JSON line when the job completed (or a timeout).
//   node queue-events.mjs REDIS_URL PREFIX QUEUE JOB_ID [TIMEOUT_S]
import { Job, Queue, QueueEvents } from 'bullmq';
import IORedis from 'ioredis';

const [url, prefix, queueName, jobId, timeoutS = '60'] = process.argv.slice(2);
const connection = () => new IORedis(url, { maxRetriesPerRequest: null });
const events = new QueueEvents(queueName, { connection: connection(), prefix });
const queue = new Queue(queueName, { connection: connection(), prefix });
const progress = [];
const timer = setTimeout(() => finish({ error: 'timeout' }), Number(timeoutS) * 1000);

async function finish(extra) {
  clearTimeout(timer);
  const job = await Job.fromId(queue, jobId);
  const out = { ...extra, progressEvents: progress, state: job ? await job.getState() : null,
    jobProgress: job ? job.progress : null, returnvalue: job ? job.returnvalue : null };
  process.stdout.write(`${JSON.stringify(out)}\n`);
  await events.close();
  await queue.close();
  process.exit(0);
}

events.on('progress', ({ jobId: id, data }) => { if (id === jobId) progress.push(data); });
events.on('completed', ({ jobId: id }) => { if (id === jobId) finish({}); });
await events.waitUntilReady();
await new Promise((r) => setTimeout(r, 200)); // its blocking XREAD is issued
process.stdout.write('ready\n');
