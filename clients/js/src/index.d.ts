export type JobStatus = 'waiting' | 'delayed' | 'active' | 'retrying' | 'completed' | 'failed' | 'cancelled' | 'expired';

export interface JobProgressEvent {
  type: 'job:progress'; jobId: string; queue: string; status: JobStatus; progress: number; message: string;
  /** Absent on a refresh of a waiting job's place (`queuePosition`, `etaS`), which is not in the log. */
  seq?: number; ts: number; userId?: string; queuePosition?: number; attempt?: number; attempts?: number;
  epoch?: number; epochs?: number; loss?: number; step?: number; steps?: number; etaS?: number; finishEtaS?: number;
}
export interface JobCompletedEvent { type: 'job:completed'; jobId: string; queue: string; status: 'completed'; result: any; seq: number; ts: number; }
export interface JobFailedEvent { type: 'job:failed'; jobId: string; queue: string; status: 'failed' | 'cancelled' | 'expired'; error: string; seq: number; ts: number; }
export type JobEvent = JobProgressEvent | JobCompletedEvent | JobFailedEvent;
export interface ErrorMessage { type: 'error'; code: string; message: string; jobId?: string; }

export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed' | 'unauthorized';

export interface JobConnection {
  readonly state: ConnectionState;
  readonly reconnects: number;
  readonly received: number;
  subscribe(jobIds: string | string[], options?: { replay?: boolean }): void;
  unsubscribe(jobIds: string | string[]): void;
  /** Follow the caller's jobs (unfinished now, then each new one, from any client); 'all': every
   *  user's new jobs (admins). Returns a function that stops following. */
  follow(scope?: 'mine' | 'all', options?: { previews?: boolean }): () => void;
  on(type: 'job', fn: (e: JobEvent) => void): () => void;
  on(type: 'job:progress', fn: (e: JobProgressEvent) => void): () => void;
  on(type: 'job:completed', fn: (e: JobCompletedEvent) => void): () => void;
  on(type: 'job:failed', fn: (e: JobFailedEvent) => void): () => void;
  on(type: 'event', fn: (e: JobEvent) => void): () => void;
  on(type: 'error', fn: (e: ErrorMessage) => void): () => void;
  on(type: 'state', fn: (s: ConnectionState) => void): () => void;
  on(type: 'open', fn: (e: { reconnects: number }) => void): () => void;
  on(type: 'message', fn: (raw: string) => void): () => void;
  send(message: object | string): void;
  lastSeq(jobId: string): number;
  close(): void;
}

export interface ConnectOptions {
  url: string;
  token?: string;
  getTicket?: () => Promise<string>;
  WebSocket?: any;
  minBackoffMs?: number;
  maxBackoffMs?: number;
}
export function connectJobs(options: ConnectOptions): JobConnection;

export interface JobView {
  id: string; queue: string; userId?: string; status: JobStatus; progress: number; message: string;
  data?: Record<string, any>; result?: any; error?: string | null; attemptsMade: number; attempts: number;
  priority: number; queuePosition?: number | null; createdAt?: number; startedAt?: number; finishedAt?: number; seq: number;
  etaS?: number | null; finishEtaS?: number | null;
  /** This answer is an earlier completed run of the same payload (`options.cache`). */
  cached?: boolean;
  /** The job follows this unfinished run of the same payload and ends as it does. */
  sameAs?: string;
  /** A flow's job: the job that waits for it. */
  parentId?: string;
  /** The jobs it waits for (`options.after`, and the unfinished jobs its `job://` inputs name). */
  after?: string[];
}
export interface FlowRequest {
  queue: string; payload: Record<string, any>; options?: Record<string, any>;
  /** A child's: what its failure does to the job waiting for it. */
  onFailure?: 'fail' | 'ignore'; children?: FlowRequest[];
}
export interface ChainStep { queue: string; payload: Record<string, any>; options?: Record<string, any>; }
/** In `chain`: the `n`th image of the step before (`job://{previous}/images/<n>`). */
export function previousImage(n?: number): string;
/** The flow of a chain's steps (the last step on top). */
export function chainTree(steps: ChainStep[]): FlowRequest;
export interface GpuRow { gpuS: number; runS: number; attempts: number; completed: number; failed: number; preempted: number; batched: number; lost: number; [group: string]: any; }
export interface BudgetUse { used: number; limit: number; resetsAt: number; }
export interface UsageView {
  userId: string; submitRate: string;
  bytesKept: { used: number; limit: number }; jobsUnfinished: { used: number; limit: number };
  gpu?: { userId: string; from: number; to: number; groupBy: string; total: GpuRow; rows: GpuRow[] };
  budget?: { hard: boolean; gpuSecondsPerDay?: BudgetUse | null; gpuSecondsPerMonth?: BudgetUse | null } | null;
}
export interface AuditEntry { id: string; at: number; who: string; admin: boolean; action: string; target: string; owner: string | null; ip: string | null; detail: Record<string, any>; }
export interface FlowView { job: JobView; children: FlowView[]; }
export interface QueueView { name: string; counts: Record<string, number>; concurrency: number; gpuFraction: number; paused: boolean; }
export interface JobList { jobs: JobView[]; nextCursor?: string | null; }

export interface RestClient {
  submit(queue: 'generation' | 'upscaling' | 'training' | string, payload: object, options?: object): Promise<JobView>;
  get(id: string): Promise<JobView>;
  cancel(id: string): Promise<JobView>;
  retry(id: string): Promise<JobView>;
  /** A job and the jobs it waits for, made in one step (children run first). */
  flow(tree: FlowRequest): Promise<FlowView>;
  /** Steps that run one after the other (a flow): the last step is its top job. */
  chain(...steps: ChainStep[]): Promise<FlowView>;
  /** Reorder a waiting job (one of): to the front, before another of yours, or (admins) a new priority. */
  move(id: string, where: { to: 'front' } | { before: string } | { priority: 1 | 2 | 3 }): Promise<JobView>;
  jobs(filter?: { queue?: string; status?: string; limit?: number; cursor?: string; userId?: string;
    /** Search: text in the prompt, an id prefix, a creation time range (Unix seconds or ISO 8601). */
    q?: string; idPrefix?: string; from?: number | string; to?: number | string }): Promise<JobList>;
  queues(): Promise<QueueView[]>;
  /** Your limits, the GPU time charged to you (admins: `userId`, '*' for everyone) and your budget. */
  usage(filter?: { from?: number | string; to?: number | string; groupBy?: 'queue' | 'model' | 'day' | 'hour' | 'user' | 'none'; userId?: string }): Promise<UsageView>;
  /** Admins: the audit trail, newest first. */
  audit(filter?: { limit?: number; cursor?: string; action?: string; by?: string }): Promise<{ entries: AuditEntry[]; nextCursor: string | null }>;
  /** A recurring job (every N seconds, or a cron pattern); the same name replaces it. */
  schedule(body: ScheduleRequest): Promise<ScheduleView>;
  schedules(filter?: { userId?: string }): Promise<ScheduleView[]>;
  unschedule(name: string, filter?: { userId?: string }): Promise<ScheduleView>;
  pause(queue: string): Promise<QueueView>;
  resume(queue: string): Promise<QueueView>;
  upload(image: Blob | ArrayBuffer | Uint8Array): Promise<{ id: string; url: string; contentType: string; bytes: number; width: number; height: number }>;
  wsTicket(): Promise<string>;
  artifactUrl(path: string): string;
}
export function createClient(options?: { url?: string; token?: string; fetch?: typeof fetch }): RestClient;

export class DashApiError extends Error {
  status: number; code: string; body: any; retryAfter: number | null;
}
export class InvalidPayload extends DashApiError {}
export class Unauthorized extends DashApiError {}
export class Forbidden extends DashApiError {}
export class NotFound extends DashApiError {}
export class Conflict extends DashApiError {}
export class RateLimited extends DashApiError {}
export class Unavailable extends DashApiError {}
export class ServerError extends DashApiError {}
export function errorFrom(status: number, body: any, retryAfter?: string | null): DashApiError;

export interface ScheduleRequest {
  name: string; queue: string; payload: Record<string, any>;
  every?: number; cron?: string; tz?: string; endAt?: number | string; limit?: number;
  options?: { priority?: 1 | 2 | 3; attempts?: number; backoff?: { type?: 'fixed' | 'exponential'; delayS?: number }; timeoutS?: number };
}
export interface ScheduleView {
  id: string; name: string; queue: string; userId?: string; every?: number; cron?: string; tz?: string;
  endAt?: number; limit?: number; runs: number; nextAt?: number; payload: Record<string, any>;
}
