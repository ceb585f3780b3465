"""Every MongoDB operation shape Scorecast uses, one test each, asserting what MongoDB itself
documents; the tests run against the MongoDB-protocol server we run (nx-27017 in development and
tests; real MongoDB in production). Each test names the code that relies on it.

Where nx-27017 differs from MongoDB the code keeps to a shape both get right, and says so:

- an upsert's filter is the ``_id`` alone: with more (``lastSeq: {$lt: n}``, ``$or``, ``$exists``)
  MongoDB answers a duplicate key when the ``_id`` document fails the rest, nx-27017 updates
  ANOTHER document that matches it (``ingest.flusher``);
- a ``replace_one`` upsert carries the ``_id`` in the replacement: without it nx-27017 stores a
  generated ObjectId (``ingest.api.quiz``, ``ingest.api.courses``);
- documents stay flat where an upsert uses ``$max``/``$inc``: nx-27017 writes a dotted path on the
  insert branch as a literal dotted key (``ingest.store``);
- REBUILD sums in Python: nx-27017's aggregate ``$match`` does not match array membership.

Audited: every update_one, update_many, bulk_write, replace_one, find, find_one,
count_documents, insert, create_index and delete in contract/, ingest/ and gateway/ (the last
two are only used by tests and benchmarks); each shape they use has its test below.
"""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import UpdateOne
from pymongo.errors import DuplicateKeyError

from ingest import store


async def test_an_id_is_unique(mongo: Any) -> None:
    # score_events: its _id (the actionId) makes an action count once, ever.
    await mongo.c.insert_one({"_id": "a"})
    with pytest.raises(DuplicateKeyError):
        await mongo.c.insert_one({"_id": "a"})


async def test_bulk_upsert_set_on_insert_keeps_the_first_version(mongo: Any) -> None:
    # ingest.worker.apply: score_events upserts, marked applied by $in, re-read by $in.
    ops = [UpdateOne({"_id": k}, {"$setOnInsert": {"v": 1, "applied": False}}, upsert=True) for k in "abc"]
    first = await mongo.c.bulk_write(ops, ordered=False)
    assert first.upserted_ids == {0: "a", 1: "b", 2: "c"}
    marked = await mongo.c.update_many({"_id": {"$in": ["a", "b"]}}, {"$set": {"applied": True}})
    assert (marked.matched_count, marked.modified_count) == (2, 2)
    again = [UpdateOne({"_id": k}, {"$setOnInsert": {"v": 2, "applied": False}}, upsert=True) for k in "abcd"]
    second = await mongo.c.bulk_write(again, ordered=False)
    assert (second.upserted_ids, second.matched_count, second.modified_count) == ({3: "d"}, 3, 0)
    docs = {d["_id"]: (d["v"], d["applied"]) async for d in mongo.c.find({})}
    assert docs == {"a": (1, True), "b": (1, True), "c": (1, False), "d": (2, False)}
    applied = [d async for d in mongo.c.find({"_id": {"$in": list("abcd")}, "applied": True}, {"_id": 1})]
    assert sorted(applied, key=lambda d: d["_id"]) == [{"_id": "a"}, {"_id": "b"}]
    assert [d async for d in mongo.c.find({"_id": {"$in": []}})] == []  # an empty $in matches nothing


async def test_max_on_flat_fields_works_on_both_upsert_branches(mongo: Any) -> None:
    # ingest.worker._persist (board_totals score and seq), ingest.flusher (w_<lectureId>).
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


async def test_the_flushers_upsert_combines_its_operators_on_both_branches(mongo: Any) -> None:
    """ingest.flusher.operations: $setOnInsert, $set, $max (numbers and the resume string) and
    $addToSet with $each in ONE upsert; the update branch meets a document that
    ingest.achievements made ($addToSet of single values and $setOnInsert)."""

    def flush(doc_id: str, watched: float, resume: str, completed: list[str]) -> UpdateOne:
        return UpdateOne(
            {"_id": doc_id},
            {
                "$setOnInsert": {"userId": doc_id[0], "courseId": "c"},
                "$set": {"updatedAt": watched},
                "$max": {"w_l1": watched, "resume": resume},
                "$addToSet": {"completedLectures": {"$each": completed}},
            },
            upsert=True,
        )

    await mongo.c.update_one(
        {"_id": "a|c"},
        {
            "$addToSet": {"completedLectures": "l1", "unlockedLectures": "l2"},
            "$setOnInsert": {"userId": "a", "courseId": "c"},
        },
        upsert=True,
    )
    await mongo.c.bulk_write(
        [flush("a|c", 30.0, "0005|l1|30.0", ["l2", "l1"]), flush("b|c", 10.0, "0002|l1|10.0", ["l1", "l1"])],
        ordered=False,
    )
    await mongo.c.bulk_write([flush("b|c", 4.0, "0001|l1|4.0", ["l3"])], ordered=False)  # older
    docs = [d async for d in mongo.c.find({}).sort("_id", 1)]
    assert docs == [
        {
            "_id": "a|c",
            "userId": "a",
            "courseId": "c",
            "completedLectures": ["l1", "l2"],
            "unlockedLectures": ["l2"],
            "updatedAt": 30.0,
            "w_l1": 30.0,
            "resume": "0005|l1|30.0",
        },
        {
            "_id": "b|c",
            "userId": "b",
            "courseId": "c",
            "completedLectures": ["l1", "l3"],
            "updatedAt": 4.0,
            "w_l1": 10.0,
            "resume": "0002|l1|10.0",
        },
    ]


async def test_set_upsert_changes_only_the_fields_it_names(mongo: Any) -> None:
    # ingest.api.auth.login sets the profile and tz; ingest.worker._persist sets the profile
    # again without tz; student_stats takes $set upserts from two places the same way.
    login = {"name": "Ada", "avatarUrl": None, "region": "EU", "updatedAt": 1.0, "tz": "Asia/Tokyo"}
    created = await mongo.c.update_one({"_id": "ada"}, {"$set": login}, upsert=True)
    assert created.upserted_id == "ada"
    worker = {"name": "Ada L.", "avatarUrl": "https://a/b.png", "region": "EU", "updatedAt": 2.0}
    await mongo.c.bulk_write([UpdateOne({"_id": "ada"}, {"$set": worker}, upsert=True)], ordered=False)
    assert await mongo.c.find_one({"_id": "ada"}) == {"_id": "ada", **worker, "tz": "Asia/Tokyo"}


async def test_replace_upsert_with_the_id_in_the_replacement(mongo: Any) -> None:
    """ingest.api.quiz and ingest.api.courses: the document is stored under the filter's _id
    and a later replacement drops the fields it does not carry. (The _id is in the replacement:
    without it nx-27017 stores the insert under a generated ObjectId.)"""
    first = await mongo.c.replace_one(
        {"_id": "quiz1"}, {"_id": "quiz1", "title": "A", "key": {"q1": "b"}}, upsert=True
    )
    assert first.upserted_id == "quiz1"
    second = await mongo.c.replace_one({"_id": "quiz1"}, {"_id": "quiz1", "title": "B"}, upsert=True)
    assert (second.upserted_id, second.matched_count) == (None, 1)
    assert [d async for d in mongo.c.find({})] == [{"_id": "quiz1", "title": "B"}]


async def test_add_to_set_is_idempotent_and_upserts(mongo: Any) -> None:
    # ingest.achievements.record_activity: "new" is modified_count or upserted_id.
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


async def test_add_to_set_on_arrays_created_when_the_document_was_inserted(mongo: Any) -> None:
    """``progress`` documents: MongoDB creates a missing array on ``$addToSet``, but nx-27017
    leaves an existing document that lacks the array unchanged. So the upsert that inserts a
    document creates its arrays (``$setOnInsert``, ``ingest.store.progress_on_insert``) and later
    ``$addToSet`` calls only ever meet an existing array: the shape relied on here."""
    await mongo.c.update_one(
        {"_id": "p"}, {"$set": {"w": 1}, "$setOnInsert": {"done": [], "open": []}}, upsert=True
    )
    await mongo.c.update_one(
        {"_id": "p"},
        {"$addToSet": {"done": {"$each": ["a", "b"]}}, "$setOnInsert": {"open": []}},
        upsert=True,
    )
    await mongo.c.update_one({"_id": "p"}, {"$addToSet": {"open": "b", "done": "a"}}, upsert=True)
    await mongo.c.update_one(
        {"_id": "q"}, {"$addToSet": {"done": "a"}, "$setOnInsert": {"open": []}}, upsert=True
    )
    docs = {d["_id"]: d async for d in mongo.c.find({})}
    assert docs == {
        "p": {"_id": "p", "w": 1, "done": ["a", "b"], "open": ["b"]},
        "q": {"_id": "q", "done": ["a"], "open": []},
    }


async def test_range_query_sorted_with_projection_and_counts(mongo: Any) -> None:
    # ingest.api.heatmap.data (range, _id excluded, sorted), ingest.achievements (count).
    await mongo.c.insert_many(
        [{"_id": f"u|{d}", "userId": "u", "date": d, "events": ["e"]} for d in ("2026-11-03", "2026-11-01")]
    )
    await mongo.c.insert_one({"_id": "v|2026-11-02", "userId": "v", "date": "2026-11-02"})
    cursor = mongo.c.find(
        {"userId": "u", "date": {"$gte": "2026-11-01", "$lte": "2026-11-30"}}, {"_id": 0, "date": 1}
    )
    assert [d async for d in cursor.sort("date", 1)] == [{"date": "2026-11-01"}, {"date": "2026-11-03"}]
    assert await mongo.c.count_documents({"userId": "u"}) == 2
    assert await mongo.c.count_documents({"userId": "nobody"}) == 0


async def test_an_inclusion_projection_keeps_the_id_and_leaves_missing_fields_out(mongo: Any) -> None:
    # ingest.rebuild (board_totals), ingest.api.stats (progress, courses), ingest.api.leaderboards.
    await mongo.c.insert_many(
        [
            {"_id": "g|ada", "board": "g", "userId": "ada", "score": 5, "seq": 2},
            {"_id": "g|bob", "board": "g", "userId": "bob", "score": 3},
            {"_id": "h|ada", "board": "h", "userId": "ada", "score": 1, "seq": 1},
        ]
    )
    found = [
        d async for d in mongo.c.find({"board": "g"}, {"userId": 1, "score": 1, "seq": 1}).sort("_id", 1)
    ]
    assert found == [
        {"_id": "g|ada", "userId": "ada", "score": 5, "seq": 2},
        {"_id": "g|bob", "userId": "bob", "score": 3},
    ]
    assert await mongo.c.find_one({"board": "h"}, {"_id": 1}) == {"_id": "h|ada"}
    assert await mongo.c.find_one({"board": "x"}, {"_id": 1}) is None


async def test_ensure_indexes_may_run_at_every_start(mongo: Any) -> None:
    # ingest.store.ensure_indexes runs at every process start: the same index again is a no-op.
    await store.ensure_indexes(mongo)
    await store.ensure_indexes(mongo)
    indexes = await mongo[store.BOARD_TOTALS].index_information()
    # Compared by fields: nx-27017 names an index its own way (MongoDB: "board_1_score_-1_seq_1")
    # and reports every key ascending. Directions only serve sorts; nothing relies on them.
    assert sorted([field for field, _ in i["key"]] for i in indexes.values()) == [
        ["_id"],
        ["board", "score", "seq"],
    ]


async def test_update_many_reports_what_it_changed(mongo: Any) -> None:
    # ingest.anomaly.clear answers how many open flags it cleared.
    await mongo.c.insert_many(
        [{"_id": f"f{i}", "userId": "ada" if i < 3 else "bob", "status": "open"} for i in range(4)]
    )
    clear = {"$set": {"status": "cleared", "clearedBy": "root"}}
    cleared = await mongo.c.update_many({"userId": "ada", "status": "open"}, clear)
    assert cleared.modified_count == 3
    assert (await mongo.c.update_many({"userId": "ada", "status": "open"}, clear)).modified_count == 0
    assert await mongo.c.count_documents({"status": "open"}) == 1
    # ingest.api.metrics: a comparison never matches a document without the field
    assert await mongo.c.count_documents({"blockedUntilMs": {"$gt": 0}}) == 0


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


async def test_set_on_insert_keeps_an_array_of_pairs_and_two_field_equality_finds_it(mongo: Any) -> None:
    """quiz_attempts: a submission's answers as [[questionId, option], ...]; the tally is restored
    by userId + quizId through the compound index."""
    await mongo["qa"].create_index([("userId", 1), ("quizId", 1)])
    for n, (user, quiz) in enumerate([("ada", "q1"), ("ada", "q2"), ("bob", "q1"), ("ada", "q1")]):
        await mongo["qa"].update_one(
            {"_id": f"{user}|a{n}"},
            {
                "$setOnInsert": {
                    "userId": user,
                    "quizId": quiz,
                    "attempt": n,
                    "answers": [["x.1", "a"], ["y", "b"]],
                }
            },
            upsert=True,
        )
    await mongo["qa"].update_one(  # a retry: the first version stays
        {"_id": "ada|a0"}, {"$setOnInsert": {"userId": "ada", "quizId": "q1", "attempt": 99}}, upsert=True
    )
    found = [d async for d in mongo["qa"].find({"userId": "ada", "quizId": "q1"}, {"attempt": 1})]
    assert sorted(d["attempt"] for d in found) == [0, 3]
    assert all(set(d) == {"_id", "attempt"} for d in found)
    doc = await mongo["qa"].find_one({"_id": "ada|a0"})
    assert doc is not None and doc["answers"] == [["x.1", "a"], ["y", "b"]]


async def test_insert_one_keeps_a_list_of_subdocuments_and_refuses_its_id_twice(mongo: Any) -> None:
    # store.archive.insert: a closed board's archive, written once by racing workers (the second
    # insert_one of the _id raises DuplicateKeyError and the first document stands).
    entries = [
        {"rank": i, "userId": f"u{i}", "name": "Ädä", "avatarUrl": None, "score": 10 - i} for i in (1, 2)
    ]
    await mongo.c.insert_one({"_id": "weekly:2026-W47", "rankedUsers": 2, "entries": entries})
    with pytest.raises(DuplicateKeyError):
        await mongo.c.insert_one({"_id": "weekly:2026-W47", "rankedUsers": 9, "entries": []})
    doc = await mongo.c.find_one({"_id": "weekly:2026-W47"})
    assert doc == {"_id": "weekly:2026-W47", "rankedUsers": 2, "entries": entries}
