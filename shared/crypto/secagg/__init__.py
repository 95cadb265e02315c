"""Secure aggregation (SecAgg+ style, complete graph): the server learns sum(w' x) and sum(w').

Stages (server message -> each client's reply), dict keys are strings, fit Flower records:
  0 setup      SecAggParams.to_config()           -> SecAggClient(params, node_id)
  1 keys       (the setup)                         -> {"enc-pk", "mask-pk", "seed-hash"} 32 B each
  2 share-keys {"<node>": enc_pk || mask_pk}       -> {"<peer>": box} 116 B per peer: Shamir
               shares (t of n) of the self-mask seed b and the mask private key, boxed with
               ChaCha20-Poly1305 under X25519+HKDF of the pair's encryption keys; and
               "commitments": 64 B per participant (`verifiable_shares`)
  3 masked     {"<sender>": box || commitment}     -> (d + 1,) uint32: y = q(x w'/max_w) | w'
               + PRG(b) + sum_j +-PRG(pair seed ij) mod 2^k, over every sender j of stage 2
  4 unmask     {"survivors": [...], "dropped": [...]} -> {"<node>": seed share of a survivor,
               or mask-key share of a dropped node}; never both for one node
The server (`SecAggServer`) rebuilds b of each survivor and the mask key of each dropped node
from t shares, each checked against its owner's commitment (a bad one blames its revealer), the
secret checked against the seed hash / public key; removes the masks, dequantizes. At least
MIN_GROUP = 3 clients take part and are summed.
A client that stops after stage 2 is "dropped": its pairwise masks are rebuilt and removed.
Threat model: honest-but-curious server and clients; a client sending in-range garbage in
stage 3 corrupts the sum undetected (no proofs of input validity); the server is trusted to
send every client the same directory and survivor lists (no consistency round). The messages
are signed by the server and the replies sealed to it one layer up, so that a relay can change
none of them (shared/federation/secure_auth.py).
"""
