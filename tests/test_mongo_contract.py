"""Every MongoDB behaviour Scorecast relies on, checked against the MongoDB-protocol server we
run (nx-27017 in development and tests; real MongoDB in production must behave the same)."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import UpdateOne
from pymongo.errors import DuplicateKeyError


async def test_an_id_is_unique(mongo: Any) -> None:
    await mongo.c.insert_one({"_id": "a"})
    with pytest.raises(DuplicateKeyError):
        await mongo.c.insert_one({"_id": "a"})


async def test_bulk_upsert_set_on_insert_keeps_the_first_version(mongo: Any) -> None:
    ops = [UpdateOne({"_id": k}, {"$setOnInsert": {"v": 1, "applied": False}}, upsert=True) for k in "abc"]
    await mongo.c.bulk_write(ops, ordered=False)
    await mongo.c.update_many({"_id": {"$in": ["a", "b"]}}, {"$set": {"applied": True}})
    again = [UpdateOne({"_id": k}, {"$setOnInsert": {"v": 2, "applied": False}}, upsert=True) for k in "abcd"]
    await mongo.c.bulk_write(again, ordered=False)
    docs = {d["_id"]: (d["v"], d["applied"]) async for d in mongo.c.find({})}
    assert docs == {"a": (1, True), "b": (1, True), "c": (1, False), "d": (2, False)}
    applied = [
        d["_id"] async for d in mongo.c.find({"_id": {"$in": list("abcd")}, "applied": True}, {"_id": 1})
    ]
    assert sorted(applied) == ["a", "b"]


async def test_max_on_flat_fields_works_on_both_upsert_branches(mongo: Any) -> None:
    for score in (5, 3, 9):
        await mongo.c.bulk_write(
            [
                UpdateOne(
                    {"_id": "t"},
                    {"$max": {"score": score, "w_l1": score}, "$setOnInsert": {"b": "g"}},
                    upsert=True,
                )
            ]
        )
    assert await mongo.c.find_one({"_id": "t"}) == {"_id": "t", "score": 9, "w_l1": 9, "b": "g"}


async def test_max_on_a_string_keeps_the_greatest_in_byte_order_on_both_upsert_branches(mongo: Any) -> None:
    """The flusher's resume point: ``$max`` of a zero-padded string on an ``_id``-only upsert.
    MongoDB compares strings byte by byte (simple collation) and ``$max`` sets a field the
    document lacks; the order of the writes does not matter. (Not a filter ``{_id, lastSeq:
    {$lt: n}}`` on an upsert: MongoDB answers a duplicate key when the ``_id`` document is newer,
    nx-27017 updates ANOTHER document that matches the rest of the filter.)"""
    await mongo.c.insert_one({"_id": "old", "w_l1": 3.0})  # made by a completion: no resume yet
    points = ["0007|l2|70.0", "0003|l1|30.0", "0012|l1|12.5", "0009|l3|9.0"]
    for doc_id in ("old", "new"):
        for point in points:
            await mongo.c.bulk_write(
                [
                    UpdateOne(
                        {"_id": doc_id}, {"$max": {"resume": point}, "$setOnInsert": {"u": 1}}, upsert=True
                    )
                ]
            )
    docs = [d async for d in mongo.c.find({}).sort("_id", 1)]
    assert docs == [
        {"_id": "new", "resume": "0012|l1|12.5", "u": 1},
        {"_id": "old", "w_l1": 3.0, "resume": "0012|l1|12.5"},
    ]


async def test_add_to_set_is_idempotent_and_upserts(mongo: Any) -> None:
    first = await mongo.c.update_one(
        {"_id": "d"}, {"$addToSet": {"events": "e1"}, "$set": {"u": 1}}, upsert=True
    )
    assert first.upserted_id == "d"
    again = await mongo.c.update_one(
        {"_id": "d"}, {"$addToSet": {"events": "e1"}, "$set": {"u": 1}}, upsert=True
    )
    assert again.modified_count == 0
    await mongo.c.update_one({"_id": "d"}, {"$addToSet": {"events": {"$each": ["e1", "e2"]}}})
    assert (await mongo.c.find_one({"_id": "d"}))["events"] == ["e1", "e2"]


async def test_range_query_sorted_with_projection_and_counts(mongo: Any) -> None:
    await mongo.c.insert_many(
        [{"_id": f"u|{d}", "userId": "u", "date": d} for d in ("2026-11-03", "2026-11-01")]
    )
    await mongo.c.insert_one({"_id": "v|2026-11-02", "userId": "v", "date": "2026-11-02"})
    cursor = mongo.c.find(
        {"userId": "u", "date": {"$gte": "2026-11-01", "$lte": "2026-11-30"}}, {"_id": 0, "date": 1}
    )
    assert [d async for d in cursor.sort("date", 1)] == [{"date": "2026-11-01"}, {"date": "2026-11-03"}]
    assert await mongo.c.count_documents({"userId": "u"}) == 2
    await mongo.c.replace_one({"_id": "v|2026-11-02"}, {"userId": "v", "date": "x"}, upsert=True)
    assert (await mongo.c.find_one({"_id": "v|2026-11-02"}))["date"] == "x"


async def test_array_membership_matches_in_find_through_a_multikey_index(mongo: Any) -> None:
    """REBUILD finds a board's events by membership in their ``boards`` array. (nx-27017's
    aggregate ``$match`` does not match array membership, so the code sums in Python.)"""
    await mongo.ev.create_index([("boards", 1), ("applied", 1)])
    await mongo.ev.insert_many(
        [
            {"_id": "a1", "userId": "ada", "boards": ["global", "weekly:x"], "applied": True},
            {"_id": "a2", "userId": "ada", "boards": ["global"], "applied": False},
            {"_id": "b1", "userId": "bob", "boards": ["weekly:x"], "applied": False},
        ]
    )
    in_flight = [d["_id"] async for d in mongo.ev.find({"boards": "global", "applied": False})]
    assert in_flight == ["a2"]
    users = [d["_id"] async for d in mongo.ev.find({"userId": {"$in": ["ada", "bob"]}, "boards": "weekly:x"})]
    assert sorted(users) == ["a1", "b1"]
    assert await mongo.ev.find_one({"boards": "monthly:y"}) is None


async def test_keyset_page_newest_first_with_or_and_limit(mongo: Any) -> None:
    # ingest.audit.page: (tsMs desc, _id desc) with an $or cursor beside a field filter.
    await mongo.c.create_index([("userId", 1), ("tsMs", -1)])
    docs = [{"_id": f"u|{i}", "userId": "u" if i % 3 else "v", "tsMs": 100 + i // 2} for i in range(10)]
    await mongo.c.insert_many(docs)
    cursor = {"$or": [{"tsMs": {"$lt": 103}}, {"tsMs": 103, "_id": {"$lt": "u|7"}}]}
    found = [
        d["_id"]
        async for d in mongo.c.find({"userId": "u", "tsMs": {"$gte": 101}, **cursor})
        .sort([("tsMs", -1), ("_id", -1)])
        .limit(3)
    ]
    assert found == ["u|5", "u|4", "u|2"]


async def test_set_on_insert_stores_a_nested_evidence_object_and_counts_by_range(mongo: Any) -> None:
    # ingest.anomaly.record: the evidence object is inserted whole, never upserted by path.
    op = UpdateOne(
        {"_id": "ada|burst|1"},
        {"$setOnInsert": {"userId": "ada", "evidence": {"actions": 5, "windowS": 1.5}, "blockedUntilMs": 9}},
        upsert=True,
    )
    first = await mongo.c.bulk_write([op], ordered=False)
    second = await mongo.c.bulk_write([op], ordered=False)
    assert first.upserted_ids == {0: "ada|burst|1"} and second.upserted_ids == {}
    assert (await mongo.c.find_one({"_id": "ada|burst|1"}))["evidence"] == {"actions": 5, "windowS": 1.5}
    assert await mongo.c.count_documents({"blockedUntilMs": {"$gt": 0}}) == 1
    assert await mongo.c.count_documents({"blockedUntilMs": {"$gt": 9}}) == 0
