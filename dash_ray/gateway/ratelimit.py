"""What a user holds open on a replica (`OpenSlots`: sockets, event streams, webhook lookups).
The submission rate limiter keeps its windows in Redis, so it lives in `queues/accounts.py`;
the unfinished-jobs cap is the store's (taken atomically with the job)."""

from __future__ import annotations

__all__ = ["OpenSlots"]


class OpenSlots:
    """What each user has open on this replica (sockets, event streams), at most `limit` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.by_user: dict[str, int] = {}

    def take(self, user_id: str) -> bool:
        """Take one of the user's slots; False when they have `limit` open."""
        n = self.by_user.get(user_id, 0)
        if n >= self.limit:
            return False
        self.by_user[user_id] = n + 1
        return True

    def give(self, user_id: str) -> None:
        """Give a slot back."""
        n = self.by_user.get(user_id, 1) - 1
        if n > 0:
            self.by_user[user_id] = n
        else:
            self.by_user.pop(user_id, None)

    def of(self, user_id: str) -> int:
        """How many the user has open."""
        return self.by_user.get(user_id, 0)

    @property
    def total(self) -> int:
        """How many are open, all users together."""
        return sum(self.by_user.values())
