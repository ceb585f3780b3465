"""What one flush cycle can reach while a master of a Redis Cluster is down (no I/O).

A cycle of the flusher (``ingest.flusher``) asks first which masters do not serve their slots
(``store.outage.unreachable_masters``: no answer, or not ``cluster_state:ok`` yet after a
restart). It then leaves alone every key that lives on one of them: a dirty bucket there is not
drained, a progress key there is not read, and a key whose unqueued completion would go to a
stream partition or need course metadata there is not written (its completion must be queued
first). :class:`Reach` answers those questions from the client's slot map and counts what the
cycle left for later. On one Redis nothing is down and every key is reachable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from contract import keys as rkeys


def _nowhere(key: str) -> str | None:
    return None


@dataclasses.dataclass(slots=True)
class Reach:
    """The masters one cycle found down (by name, ``host:port``), where a key lives (``master``:
    its master's name, None when no node serves its slot), and what the cycle left for later."""

    down: frozenset[str] = frozenset()
    master: Callable[[str], str | None] = _nowhere
    keys: int = 0  # keys not flushed, left dirty or in flight
    buckets: int = 0  # dirty buckets not drained (their keys uncounted: their master is down)

    def reachable(self, key: str) -> bool:
        """Whether ``key``'s master serves its slots (always, when nothing is down; never, for
        a slot that no node serves)."""
        if not self.down:
            return True
        master = self.master(key)
        return master is not None and master not in self.down

    def held(self, batch: list[str], hashes: list[dict[str, str]], partitions: int) -> list[int]:
        """The positions in ``batch`` (progress keys, read as ``hashes``) of those that must wait
        although they were read: their unqueued completions (``p:`` fields), which are queued
        before the hash is written, cannot be (see :meth:`completions_reachable`)."""
        if not self.down:
            return []
        return [
            i
            for i, (key, live) in enumerate(zip(batch, hashes, strict=True))
            if any(field.startswith("p:") for field in live)
            and not self.completions_reachable(key, partitions)
        ]

    def completions_reachable(self, progress_key: str, partitions: int) -> bool:
        """Whether the unqueued completions of ``progress_key`` can be queued: its user's
        partition of the completion stream (of ``partitions``) and its course's metadata (and
        the lock of its refill) are reachable."""
        user_id, course_id = rkeys.parse_progress(progress_key)
        needed = (
            rkeys.completion_stream(user_id, partitions),
            rkeys.course_meta(course_id),
            rkeys.course_meta_lock(course_id),
        )
        return all(self.reachable(key) for key in needed)

    @property
    def partial(self) -> bool:
        """Whether the cycle left anything for later."""
        return bool(self.keys or self.buckets)
