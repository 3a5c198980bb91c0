"""The transport layer: what crosses a process boundary and how. The rollout group's schema and
msgpack codec (`protocol`), the Redis queue and the run's keyspace (`queue`), the embedded
Redis server (`redis_server`), the weight-sender protocol and bucket packing (`weight_sync`)
and the checkpoint commit protocol (`checkpoint`). Imports only the config layer."""
