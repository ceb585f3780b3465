"""The shared contract of Scorecast: what the gateway and ingest agree on.

- ``settings``: one Settings object read from the environment once.
- ``wire``: what every wire message is made of: bounded field types, Input/Output bases, the JSON encoder.
- ``bodies``: msgspec Structs of the ingest HTTP API's requests and answers.
- ``push``: msgspec Structs of what the gateway exchanges with clients (WebSocket, SSE), decoders.
- ``events``: msgspec Structs of stream entries and Pub/Sub events between services, decoders.
- ``keys``: Redis key and channel builders.
- ``boards``: board naming and segment rules.
- ``auth``: JWT issue and verification.
- ``errors``: the exception tree.
- ``http``: the JSON error shape for Starlette apps.
"""
