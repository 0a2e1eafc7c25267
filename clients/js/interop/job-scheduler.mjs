// Node BullMQ's job scheduler on a dash-ray Redis: `upsertJobScheduler` makes a recurring job of a
// user's payload on one of dash-ray's queues (dash-ray's consumers run it and make each next run);
// prints "ready" with the scheduler's first job, then on any line from stdin removes it and exits.
//   node job-scheduler.mjs REDIS_URL PREFIX QUEUE SCHEDULER_ID EVERY_MS DATA_JSON
import { Queue } from 'bullmq';
import IORedis from 'ioredis';
import { createInterface } from 'node:readline';

const [url, prefix, queueName, schedulerId, everyMs, data] = process.argv.slice(2);
const queue = new Queue(queueName, { connection: new IORedis(url, { maxRetriesPerRequest: null }), prefix });
const first = await queue.upsertJobScheduler(schedulerId, { every: Number(everyMs) },
  { name: 'from-node', data: JSON.parse(data), opts: { attempts: 2 } });
process.stdout.write(`${JSON.stringify({ ready: true, firstJob: first && first.id })}\n`);
const lines = createInterface({ input: process.stdin });
for await (const _line of lines) break;
const removed = await queue.removeJobScheduler(schedulerId);
process.stdout.write(`${JSON.stringify({ removed })}\n`);
await queue.close();
process.exit(0);
