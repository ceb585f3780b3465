"""The shared contract of Scorecast: what the gateway and ingest agree on.

- ``settings``: one Settings object read from the environment once.
- ``messages``: msgspec Structs for every message on the wire.
- ``keys``: Redis key and channel builders.
- ``boards``: board naming and segment rules.
- ``auth``: JWT issue and verification.
- ``errors``: the exception tree.
- ``http``: the JSON error shape for Starlette apps.
"""
