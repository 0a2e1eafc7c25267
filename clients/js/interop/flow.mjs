// Node BullMQ's FlowProducer on a dash-ray Redis: one flow, its parent on one dash-ray queue and
// its child on another; dash-ray's consumers run the child, then the parent (BullMQ's layout:
// the parent waits in `waiting-children` until its dependencies are processed).
// Prints one JSON line: the ids made.
//   node flow.mjs REDIS_URL PREFIX PARENT_QUEUE PARENT_DATA_JSON CHILD_QUEUE CHILD_DATA_JSON
import { FlowProducer } from 'bullmq';
import IORedis from 'ioredis';

const [url, prefix, parentQueue, parentData, childQueue, childData] = process.argv.slice(2);
const flows = new FlowProducer({ connection: new IORedis(url, { maxRetriesPerRequest: null }), prefix });
const tree = await flows.add({
  name: 'parent', queueName: parentQueue, data: JSON.parse(parentData),
  children: [{ name: 'child', queueName: childQueue, data: JSON.parse(childData) }],
});
process.stdout.write(`${JSON.stringify({ parent: tree.job.id, child: tree.children[0].job.id })}\n`);
await flows.close();
process.exit(0);
