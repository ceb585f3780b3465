"""Where a gateway follows each sharded Pub/Sub channel on a Redis Cluster (gateway.shards, no I/O)."""

from __future__ import annotations

import pytest

from gateway.shards import SlotMap, by_slot, plan, slot_of

A, B, C = "10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"
# Slots as the Redis documentation gives them (CLUSTER KEYSLOT): hello 866, somekey 11058, foo 12182.
THREE = SlotMap(((0, 5460, A), (5461, 10922, B), (10923, 16383, C)))


def test_slots_are_those_redis_computes_and_a_hash_tag_decides() -> None:
    assert (slot_of("hello"), slot_of("somekey"), slot_of("foo")) == (866, 11058, 12182)
    assert slot_of("sc:board:{foo}") == slot_of("{foo}:z") == 12182


def test_cluster_slots_reply_is_read_into_sorted_ranges() -> None:
    reply = [
        [10923, 16383, ["10.0.0.3", 7000, "id3", {}]],
        [0, 5460, [b"10.0.0.1", b"7000", b"id1"], ["10.0.0.9", 7001, "replica"]],
        [5461, 10922, ["10.0.0.2", 7000, "id2", {}]],
    ]
    slots = SlotMap.from_cluster_slots(reply)
    assert slots == THREE
    assert slots.masters == {A, B, C}
    assert (slots.node_of("hello"), slots.node_of("somekey"), slots.node_of("foo")) == (A, C, C)


@pytest.mark.parametrize("reply", [[[1, 2]], [["x", 2, ["h", 1]]], [[0, 16384, ["h", 1]]], [None]])
def test_a_reply_of_another_shape_is_refused(reply: list[object]) -> None:
    with pytest.raises(ValueError):
        SlotMap.from_cluster_slots(reply)


def test_a_slot_no_master_serves_has_no_node() -> None:
    holes = SlotMap(((0, 5460, A), (12000, 16383, C)))
    assert holes.node_of("somekey") is None  # 11058
    assert holes.node_of("hello") == A
    assert SlotMap(()).node_of("hello") is None


def test_first_plan_opens_every_master_and_follows_each_channel_on_its_own() -> None:
    changes = plan(THREE, ["hello", "somekey", "foo"], {})
    assert changes.open == {A, B, C}
    assert changes.retire == set()
    assert changes.follow == {A: {"hello"}, C: {"somekey", "foo"}}
    assert changes.drop == {}
    assert changes.moved == set()


def test_a_settled_placement_changes_nothing() -> None:
    changes = plan(THREE, ["hello", "foo"], {A: {"hello"}, B: set(), C: {"foo"}})
    assert (changes.open, changes.retire, changes.follow, changes.drop, changes.moved) == (
        set(),
        set(),
        {},
        {},
        set(),
    )


def test_a_failover_retires_the_old_master_and_moves_its_channels_to_the_new_one() -> None:
    promoted = "10.0.0.9:7001"
    after = SlotMap(((0, 5460, promoted), (5461, 10922, B), (10923, 16383, C)))
    changes = plan(after, ["hello", "foo"], {A: {"hello"}, B: set(), C: {"foo"}})
    assert changes.open == {promoted}
    assert changes.retire == {A}
    assert changes.follow == {promoted: {"hello"}}
    assert changes.drop == {}  # nothing to unsubscribe on a connection that is closed anyway
    assert changes.moved == {"hello"}


def test_a_migrated_slot_moves_its_channel_between_kept_masters() -> None:
    # Slot 866 (hello) migrated from A to B.
    after = SlotMap(((0, 865, A), (866, 866, B), (867, 5460, A), (5461, 10922, B), (10923, 16383, C)))
    changes = plan(after, ["hello"], {A: {"hello"}, B: set(), C: set()})
    assert changes.follow == {B: {"hello"}}
    assert changes.drop == {A: {"hello"}}
    assert changes.moved == {"hello"}
    assert changes.open == changes.retire == set()


def test_a_channel_no_longer_wanted_is_dropped_and_one_without_a_master_waits() -> None:
    holes = SlotMap(((0, 5460, A), (12000, 16383, C)))
    changes = plan(holes, ["hello", "somekey"], {A: {"hello", "old"}, C: set()})
    assert slot_of("old") <= 5460  # so A serves it
    assert changes.drop == {A: {"old"}}
    assert changes.unserved == {"somekey"}
    assert changes.follow == {}


def test_channels_are_grouped_by_slot_for_one_command_each() -> None:
    groups = by_slot(["{foo}:a", "hello", "{foo}:b", "somekey"])
    assert groups == [["hello"], ["somekey"], ["{foo}:a", "{foo}:b"]]
