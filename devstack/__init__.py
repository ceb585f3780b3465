"""Run Scorecast on one machine: embedded Redis-protocol and MongoDB-protocol servers plus
every Scorecast process. ``python -m devstack`` is what ``make run`` calls; the tests use
:mod:`devstack.servers` to start the same servers on free ports."""
