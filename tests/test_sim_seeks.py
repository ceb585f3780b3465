"""The simulation's oracle on forward seeks (no I/O): the server times a ping when it handles it,
anywhere between its send and its ack, so a seek sent at once after a slow ack may have been
seen seconds after the ping before it, and counted within that gap's credit.

Found by the cluster simulation (seed 11, 180 s, 30 learners): during a master's restart a
ping's ack took 1.8 s and the next one 2.2 s; the seek sent right after the slow ack covered the
rest of the lecture on the server's clock (4 s between the two handlings: 10 s of credit for a
5.6 s seek), while the oracle, allowing only one second of transit, ruled the completion out.
"""

from __future__ import annotations

from sim.oracle import Course, Learner, Oracle, PingRecord
from sim.policy import CURRENT, Tri, seek_counts

T0 = 1_800_000_000.0


def ping(seq: int, position: float, sent: float, acked: float, kind: str, gap_s: float) -> PingRecord:
    return PingRecord(
        device="A",
        conn=1,
        lecture_id="l1",
        position=position,
        seq=seq,
        sent_at=T0 + sent,
        kind=kind,
        gap_s=gap_s,
        acked_at=T0 + acked,
    )


def oracle_of(*pings: PingRecord) -> Oracle:
    oracle = Oracle(CURRENT)
    oracle.courses["c"] = Course("c", ["l1"], {"l1": 9.5}, {"l1": 5})
    oracle.learners["u"] = Learner("u", None, "UTC")
    for p in pings:
        oracle.ping("u", "c", p)
    return oracle


def watched_to(position: float, ack_delay_s: float) -> list[PingRecord]:
    """Playback from 0 to ``position`` at real pace, then a seek to the end sent the moment the
    last play ping was acked, ``ack_delay_s`` after it was sent; the seek's ack as slow."""
    pings = [ping(1, 0.0, 0.0, 0.01, "start", 0.0)]
    t, pos, seq = 0.01, 0.0, 2
    while pos < position:
        step = min(1.0, position - pos)
        pos += step
        sent = t + step
        acked = sent + (ack_delay_s if pos >= position else 0.01)
        pings.append(ping(seq, pos, sent, acked, "play", step))
        t, seq = acked, seq + 1
    pings.append(ping(seq, 9.5, t, t + ack_delay_s, "seek", 0.0))
    return pings


def test_a_seek_after_a_slow_ack_may_have_counted() -> None:
    # 0..4 watched; the seek 4 -> 9.5 is 5.5 s. Acks 2 s late: the server may have seen up to
    # 4 s between the two pings (2 * 4 + 2 = 10 s of credit), or almost none: either verdict.
    oracle = oracle_of(*watched_to(4.0, ack_delay_s=2.0))
    assert oracle.completion("u", "c", "l1") is Tri.MAYBE


def test_a_seek_beyond_any_credit_never_counts() -> None:
    # Prompt acks: at most ~0.02 s between the two handlings, 2.04 s of credit for 5.5 s.
    assert oracle_of(*watched_to(4.0, ack_delay_s=0.01)).completion("u", "c", "l1") is Tri.NO
    # Slow acks do not open every seek: 0..1 watched, an 8.5 s seek, acks 1 s late (at most 2 s
    # between the handlings: 6 s of credit).
    assert oracle_of(*watched_to(1.0, ack_delay_s=1.0)).completion("u", "c", "l1") is Tri.NO


def test_seek_verdicts_follow_the_gap_the_server_could_have_seen() -> None:
    assert seek_counts(CURRENT, 1.0, 1.0, 1.1) is Tri.YES  # within real time: playback
    assert seek_counts(CURRENT, 5.0, 0.0, 2.0) is Tri.MAYBE  # 2 * 2 + 2 = 6 s of credit at most
    assert seek_counts(CURRENT, 6.5, 0.0, 2.0) is Tri.NO
