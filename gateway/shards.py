"""Which sharded Pub/Sub channel is followed on which Redis Cluster master (no I/O).

On a Redis Cluster a gateway follows its board and user channels with SSUBSCRIBE, on the master
that owns each channel's slot, over one connection per master. :class:`SlotMap` is the cluster's
slot table as ``CLUSTER SLOTS`` reports it; :func:`plan` compares the channels wanted with where
they are followed now and says what to change after a (re)discovery: which masters to open or
retire, which channels to follow where, and which moved (their events meanwhile may be lost, so
their boards are read again).

One SSUBSCRIBE may only name channels of one slot (CROSSSLOT otherwise), hence
:func:`by_slot`.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from redis.crc import key_slot

SLOTS = 16384


def slot_of(channel: str) -> int:
    """The cluster slot of ``channel`` (its ``{hash tag}`` if it has one, else the whole name)."""
    return key_slot(channel.encode())


@dataclasses.dataclass(frozen=True, slots=True)
class SlotMap:
    """Slot ranges and the master (``host:port``) serving each, sorted by first slot."""

    ranges: tuple[tuple[int, int, str], ...]

    @classmethod
    def from_cluster_slots(cls, reply: Sequence[Any]) -> SlotMap:
        """Parse a ``CLUSTER SLOTS`` reply: ``[[first, last, [host, port, id, ...], replicas...]]``.

        Raises ValueError on a reply of another shape.
        """
        ranges = []
        for entry in reply:
            try:
                first, last, master = int(entry[0]), int(entry[1]), entry[2]
                host, port = _text(master[0]), int(master[1])
            except (TypeError, IndexError, ValueError) as exc:
                raise ValueError(f"not a CLUSTER SLOTS entry: {entry!r}") from exc
            if not 0 <= first <= last < SLOTS:
                raise ValueError(f"slot range out of bounds: {first}-{last}")
            ranges.append((first, last, f"{host}:{port}"))
        return cls(tuple(sorted(ranges)))

    @property
    def masters(self) -> frozenset[str]:
        return frozenset(node for _, _, node in self.ranges)

    def node_of(self, channel: str) -> str | None:
        """The master serving ``channel``'s slot; None when no master serves it."""
        slot = slot_of(channel)
        i = bisect.bisect_right(self.ranges, (slot, SLOTS, "")) - 1
        if i >= 0:
            first, last, node = self.ranges[i]
            if first <= slot <= last:
                return node
        return None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """What to change so that every wanted channel is followed on the master of its slot."""

    open: frozenset[str]  # masters to hold a subscription connection to
    retire: frozenset[str]  # connections to masters that left the slot table
    follow: Mapping[str, frozenset[str]]  # master -> channels to SSUBSCRIBE there
    drop: Mapping[str, frozenset[str]]  # master (kept) -> channels to SUNSUBSCRIBE there
    moved: frozenset[str]  # channels that change master: read again once followed
    unserved: frozenset[str]  # wanted channels whose slot no master serves (kept where they are)


def plan(slots: SlotMap, wanted: Iterable[str], current: Mapping[str, set[str]]) -> Plan:
    """Compare ``wanted`` channels with ``current`` (master -> channels followed there).

    A channel whose slot no master serves stays where it is (or unfollowed) until a later
    discovery finds its master.
    """
    masters = slots.masters
    where = {channel: node for node, channels in current.items() for channel in channels}
    follow: dict[str, set[str]] = {}
    drop: dict[str, set[str]] = {}
    moved: set[str] = set()
    unserved: set[str] = set()
    wanted_set = set(wanted)
    for channel in wanted_set:
        node = slots.node_of(channel)
        old = where.get(channel)
        if node is None:
            unserved.add(channel)
        elif node != old:
            follow.setdefault(node, set()).add(channel)
            if old is not None:
                moved.add(channel)
                if old in masters:
                    drop.setdefault(old, set()).add(channel)
    for channel, old in where.items():
        if channel not in wanted_set and old in masters:
            drop.setdefault(old, set()).add(channel)
    return Plan(
        open=frozenset(masters - set(current)),
        retire=frozenset(set(current) - masters),
        follow={node: frozenset(c) for node, c in follow.items()},
        drop={node: frozenset(c) for node, c in drop.items()},
        moved=frozenset(moved),
        unserved=frozenset(unserved),
    )


def by_slot(channels: Iterable[str]) -> list[list[str]]:
    """``channels`` grouped by slot, each group small enough for one SSUBSCRIBE/SUNSUBSCRIBE."""
    groups: dict[int, list[str]] = {}
    for channel in sorted(channels):
        groups.setdefault(slot_of(channel), []).append(channel)
    return [group for _, group in sorted(groups.items())]
