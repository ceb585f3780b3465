"""A deterministic-schedule simulation of a whole school on the real Scorecast stack.

FoundationDB- and Jepsen-style, scaled to a small machine: :mod:`sim.cluster` runs the real
processes on free ports (its own valkey and nx-27017, the ingest API, worker, flusher and two
gateways); :mod:`sim.actors` plays learners, a scoring service and board subscribers at random,
each from its own RNG derived from one master seed; :mod:`sim.faults` kills and restarts
processes on a seeded schedule; :mod:`sim.oracle` keeps what the simulation was TOLD (202s,
acks) and :mod:`sim.checks` compares it with the system's state once it quiesced. What the
system is supposed to do — how quizzes count, when a lecture completes, who may write scores —
lives in one place, :mod:`sim.policy`.

Run ``python -m sim --seed N --seconds S`` (``make soak`` for long runs); a failure prints the
seed and the command that replays its schedule.
"""
