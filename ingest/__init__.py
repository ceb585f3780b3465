"""The write path and the durable store.

- ``api``: the HTTP API (auth, score writes, leaderboard reads, progress, courses, stats).
- ``worker``: consumes the score stream with a consumer group and applies actions to boards.
- ``flusher``: write-behind of watch-time progress from Redis to MongoDB.
- ``store``: MongoDB collections and their indexes.
"""
