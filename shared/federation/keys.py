"""The names of a message's records, and of the node's partition: the part of the wire format
(shared/federation/protocol.py, where the whole contract is described) that needs no torch, so
that a flwr-clientapp answering the partition query imports none (client/app.py)."""

ARRAYS, CONFIG, BASIS, METRICS, STATUS = "arrays", "config", "basis", "metrics", "status"
PARTITION_ID = "partition-id"
