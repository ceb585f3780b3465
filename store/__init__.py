"""Redis and MongoDB access shared by the gateway and the ingest service: the clients, the board
store, the progress store and its ping pipeline, the course catalog, stream backlog and trimming,
and outage probing. The wire shapes and key names they use live in :mod:`contract`."""
