"""Fair limits on the work one submission may ask for, checked at the gateway before a job is
queued: attempts, backoff, image references, compute per job, the share of high priority, and
where a webhook may go. What differs per queue (its image fields, its compute limits, whether
priority 1 is a shared allowance) is declared on the queue's definition (models/queues.py)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Collection
from datetime import datetime, timezone
from typing import Any

from dash_ray.config import Settings
from dash_ray.errors import BudgetExceeded, JobNotFound, RateLimited
from dash_ray.gateway.auth import Principal
from dash_ray.gateway.ratelimit import OpenSlots
from dash_ray.models.images import job_ref
from dash_ray.models.options import MAX_AFTER, JobOptions
from dash_ray.models.payloads import GenerationJob, JobPayload, upload_path
from dash_ray.models.queues import bad_field, queue_def
from dash_ray.queues import JobStore, Quota
from dash_ray.queues.ledger import SOFT_WEIGHT, Budgets, default_budgets, org_id, resets_at
from dash_ray.services import ArtifactStore
from dash_ray.services.netguard import PrivateAddress, check_webhook_url
from dash_ray.services.registry import lora_path

__all__ = ["SubmitPolicy", "job_org", "with_waits"]

LOOKUPS_PER_USER = 2  # webhook URLs of one user resolved at once, per replica




def job_org(owner: str, who: Principal | None) -> str | None:
    """The group a new job of `owner`'s is charged to: the caller's token's `org`, when it is
    their own job (an admin's job for another user is that user's alone)."""
    return who.org if who is not None and who.user_id == owner else None


def with_waits(options: JobOptions | None, waits: Collection[str]) -> JobOptions:
    """The options with `after` naming `waits` too (the unfinished jobs a payload's inputs name:
    `SubmitPolicy.check`); InvalidPayload (422) past MAX_AFTER, or with a delay."""
    opts = options or JobOptions()
    given = list(opts.after or ())
    after = given + sorted(w for w in waits if w not in given)
    if len(after) > MAX_AFTER:
        raise bad_field("options.after", f"a job waits for at most {MAX_AFTER} jobs (its inputs' included)")
    if opts.delay_s:
        raise bad_field("options.delayS", "a job that waits for others (its inputs' jobs) takes no delay")
    return opts.model_copy(update={"after": after})


class SubmitPolicy:
    """What a job may ask for (`check`), per the deployment's settings; admins are not limited
    in their share of priority 1."""

    def __init__(self, settings: Settings, store: JobStore, artifacts: ArtifactStore) -> None:
        self.settings = settings
        self.store = store
        self.artifacts = artifacts
        default, org_default = default_budgets(settings)
        self.budgets = Budgets(store.redis, store.keys, default, org_default) if store is not None else None
        self._lookups = OpenSlots(LOOKUPS_PER_USER)  # webhook URLs being resolved now, per user

    async def check(self, queue: str, payload: JobPayload, options: JobOptions | None, who: Principal,
                    owner: str, flow: Collection[str] = (), waits: set[str] | None = None) -> None:
        """Raise InvalidPayload (422) or RateLimited (429) for a submission over a limit. A
        `job://` image must be of a job in `flow` (those it waits for, in a flow) or of a
        completed job of the owner's that has it; with `waits` (a set to fill), an unfinished
        job of the owner's may be named too (the image, or a LoRA its training job makes): its
        id is added, for the job to wait for it."""
        s = self.settings
        opts = options or JobOptions()
        if opts.attempts is not None and opts.attempts > s.max_attempts:
            raise bad_field("options.attempts", f"at most {s.max_attempts} (DASH_MAX_ATTEMPTS)")
        if opts.backoff.delay_s < s.min_backoff_s:
            raise bad_field("options.backoff.delayS", f"at least {s.min_backoff_s:g}s (DASH_MIN_BACKOFF_S)")
        q = queue_def(queue)  # what is checked per queue is declared on its definition
        for field, url in q.image_refs(payload):
            if url.startswith("data:") and (len(url) - url.find(",") - 1) * 3 // 4 > s.max_inline_image_bytes:
                raise bad_field(field, f"an inline image is at most {s.max_inline_image_bytes} bytes "
                                  "(DASH_MAX_INLINE_IMAGE_BYTES); upload it with POST /v1/uploads and "
                                  "pass the upload:// reference")
            if url.startswith("upload://") and not await asyncio.to_thread(self.artifacts.exists,
                                                                            upload_path(owner, url)):
                raise bad_field(field, "no such upload of yours")
            if url.startswith("artifact://"):
                raise bad_field(field, "artifact:// is the server's own (name a job's image: job://<id>/images/<n>)")
            if url.startswith("job://"):
                await self._job_image(field, url, owner, flow, waits)
        lora = payload.settings.lora_id if isinstance(payload, GenerationJob) else None
        if waits is not None and lora and await self._training(lora, owner):
            waits.add(lora)
        if q.limits is not None:  # compute per job (generation, training)
            q.limits(payload, s)
        if q.priority_share and opts.priority == 1 and not who.admin and s.high_priority_per_user <= 0:
            raise bad_field("options.priority", f"priority 1 on {queue} is for admins (DASH_HIGH_PRIORITY_PER_USER=0)")

    async def _training(self, lora: str, owner: str) -> bool:
        """True if `lora` is not trained yet but an unfinished training job of the owner's makes it."""
        if await asyncio.to_thread(self.artifacts.exists, lora_path(owner, lora)):
            return False
        try:
            view = await self.store.get(lora)
        except JobNotFound:
            return False
        return view.user_id == owner and view.queue == "training" and not view.done

    async def _job_image(self, field: str, url: str, owner: str, flow: Collection[str],
                         waits: set[str] | None = None) -> None:
        """A `job://<id>/images/<n>` input: a job the flow makes first, an image of a completed
        job of the owner's, or (`waits`) an unfinished one's, waited for (any other job's looks
        as if it did not exist)."""
        ref = job_ref(url)
        if ref is None:
            raise bad_field(field, "a job's image is job://<id>/images/<n>")
        source, n = ref
        if source in flow:
            return
        try:
            view = await self.store.get(source)
        except JobNotFound:
            view = None
        if view is None or view.user_id != owner:
            raise bad_field(field, f"no job {source} of yours (a flow's own jobs: only those this one waits for)")
        if waits is not None and not view.done:
            waits.add(source)
            return
        result = view.result if isinstance(view.result, dict) else {}
        images: list[Any] = result["images"] if isinstance(result.get("images"), list) else (
            [result["image"]] if isinstance(result.get("image"), str) else [])
        if view.status != "completed" or n >= len(images):
            raise bad_field(field, f"job {source} has no image {n} (it is {view.status})")

    async def budget_weight(self, owner: str, weight: float | None, who: Principal | None = None) -> float | None:
        """The owner's fair-share weight for a new job against their GPU budgets, their own and,
        for their own job, their group's (`who`'s token `org`: the job carries it, so its GPU time
        is the group's too): as given while within them; past a soft one, SOFT_WEIGHT of it; past
        a hard one, BudgetExceeded (429, with the budget, what was used and when it resets). No
        budget: no round trip."""
        if self.budgets is None:
            return weight
        org = job_org(owner, who)
        held = [(owner, await self.budgets.of(owner))]
        if org is not None:
            held.append((org_id(org), await self.budgets.of(org_id(org))))
        soft = False
        now = time.time()
        for whose, budget in held:
            if budget.empty:
                continue
            over = budget.over(*await self.store.ledger.spent(whose, now))
            if over is None:
                continue
            if not budget.hard:
                soft = True
                continue
            period, limit, used = over
            at = resets_at(period, now)
            of = f"your group {org}'s" if whose != owner else "your"
            raise BudgetExceeded(
                f"{of} GPU budget of {limit:g} GPU-seconds per {period} is spent ({used:.1f} used); it resets at "
                f"{datetime.fromtimestamp(at, timezone.utc).isoformat(timespec='seconds')}",
                retry_after_s=max(1, math.ceil(at - now)), budget=f"gpuSecondsPer{period.title()}", limit=limit,
                used=used, resets_at=at, **({"org": org} if whose != owner else {}))
        if not soft:
            return weight
        base = weight if weight is not None else self.settings.user_weights.get(owner, 1.0)
        return base * SOFT_WEIGHT

    async def check_webhook(self, options: JobOptions | None, owner: str) -> None:
        """Raise InvalidPayload (422) for a webhook that points inside the network. Its name is
        resolved on a small pool of its own with a deadline (checked again at every send: a
        name may be re-pointed); called after the rate limiter, so refused callers cost no lookup."""
        if options is None or options.webhook is None:
            return
        if not self._lookups.take(owner):
            raise RateLimited("too many webhook URLs being checked at once; retry in a moment", retry_after_s=2)
        try:
            await check_webhook_url(options.webhook.url, self.settings.webhook_allowed_networks, timeout_s=5.0)
        except PrivateAddress as exc:
            raise bad_field("options.webhook.url", f"{exc}; refused unless DASH_WEBHOOK_ALLOWED_NETWORKS "
                                              "covers it") from None
        finally:
            self._lookups.give(owner)

    def quota(self, queue: str, options: JobOptions | None, who: Principal, retry: bool = False) -> Quota:
        """The owner's limits this submission (or `retry`) must fit, taken atomically with the
        job by the store: unfinished jobs, bytes kept in Redis, and for a non-admin's priority-1
        training job, the share of those (a retried job counts as it was created)."""
        s = self.settings
        high = not who.admin and (retry or ((options or JobOptions()).priority == 1 and queue_def(queue).priority_share))
        return Quota(overhead_bytes=s.job_overhead_bytes, max_open=s.max_waiting_per_user,
                     max_bytes=s.max_bytes_per_user, high=high, max_high=s.high_priority_per_user if high else None)
