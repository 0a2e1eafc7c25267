import type { ConnectOptions, JobConnection, JobStatus } from './index.js';

export interface JobWebSocket {
  readonly readyState: number;
  readonly connection: JobConnection;
  onmessage: ((event: { data: string }) => void) | null;
  onopen: ((event: { reconnects: number }) => void) | null;
  onerror: ((event: { code: string; message: string }) => void) | null;
  send(data: string): void;
  close(): void;
}
export function useJobWebSocket(userId: string, options?: Partial<ConnectOptions>): JobWebSocket;

export interface JobState {
  status: JobStatus | 'unknown'; progress: number; message: string; result: any; error: string | null;
  epoch?: number; loss?: number; seq?: number;
  /** The latest `job:preview` image (a data URL) and `job:log` line. */
  preview?: string; log?: string;
  /** While waiting: the place in line and the seconds until it starts (refreshed as jobs ahead finish). */
  queuePosition?: number; etaS?: number;
}
export function useJob(jobId: string | null | undefined, options?: Partial<ConnectOptions>): JobState;

export interface MyJob extends JobState { id: string; queue: string; }
/** The caller's jobs, live (unfinished ones, then each new one from any client), newest first. */
export function useMyJobs(options?: Partial<ConnectOptions> & { scope?: 'mine' | 'all'; previews?: boolean; max?: number }): MyJob[];
