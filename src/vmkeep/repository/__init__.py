"""The content-addressed repository: codec (compress, encrypt, authenticate), keys, chunks,
disk indexes, manifests, locks and checks. Talks to storage only through the ObjectStore port.
Imports vmkeep.ports and vmkeep.domain only."""
