"""Verify Serval's audit ledger against a signed checkpoint, holding only the checkpoint
public key and an export. Needs Python 3.10+ and the `cryptography` package (Ed25519);
hashing is the standard library's.

    python verify_checkpoint.py --public-key HEX --export ledger.ndjson --checkpoint head.json \
        [--earlier-checkpoint old.json --consistency-proof proof.json] \
        [--inclusion-proof inclusion.json --event-id ID]

* export: `GET /api/audit/export?zone_id=…` (JSON lines in chain order);
* checkpoints: `GET /api/audit/checkpoint?zone_id=…` (or the `serval.audit.checkpoints` topic);
* proofs: `GET /api/audit/proof/consistency?zone_id=…&first=…&second=…` and
  `GET /api/audit/proof/inclusion?zone_id=…&event_id=…&tree_size=…`.

Exits 0 when everything verifies; otherwise prints what failed (naming the ledger row when
the failure is one row's) and exits 1.
"""

import argparse
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SEP = b"\x1f"
CONTENT_FIELDS = [
    "id", "zone_id", "event_type", "request_id", "decision", "policy_set_id",
    "policy_set_version_id", "manifest_sha", "evaluation_status",
    "determining_policies_json", "diagnostics_json", "metadata_json",
]


def fail(what):
    print(f"FAILED: {what}")
    sys.exit(1)


def content_sha256(row):
    """The row's content digest (events-and-audit.md §11.4): every field followed by 0x1F,
    then occurred_at as decimal Unix nanoseconds."""
    h = hashlib.sha256()
    for f in CONTENT_FIELDS:
        h.update(row[f].encode())
        h.update(SEP)
    h.update(row["occurred_at_unix_nanos"].encode())
    return h.hexdigest()


def leaf_hash(data):
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def mth(leaves):
    """RFC 9162 §2.1.1: the Merkle tree hash."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1
    while k << 1 < n:
        k <<= 1
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def verify_inclusion(index, size, leaf, proof, root):
    """RFC 9162 §2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first, second, first_root, second_root, proof):
    """RFC 9162 §2.1.4.2."""
    if first == 0 or first > second:
        return False
    if first == second:
        return not proof and first_root == second_root
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    if not path:
        return False
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


def check_signature(key, head):
    text = "serval.checkpoint.v1\n{}\n{}\n{}\n{}".format(
        head["zone_id"], head["tree_size"], head["root_hash"], head["timestamp"]
    )
    try:
        key.verify(bytes.fromhex(head["signature"]), text.encode())
    except InvalidSignature:
        fail(f"the checkpoint at size {head['tree_size']} is not signed by this key")


def load_json(path):
    with open(path) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--public-key", required=True)
    ap.add_argument("--export", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--earlier-checkpoint")
    ap.add_argument("--consistency-proof")
    ap.add_argument("--inclusion-proof")
    ap.add_argument("--event-id")
    a = ap.parse_args()
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(a.public_key))

    head = load_json(a.checkpoint)
    check_signature(key, head)
    print(f"ok: checkpoint signature (zone {head['zone_id']}, size {head['tree_size']})")

    with open(a.export) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    # Every row's digest is recomputed from its fields and must continue the chain: a
    # changed row is named here.
    leaves, prev = [], ""
    for i, row in enumerate(rows):
        digest = content_sha256(row)
        where = f"ledger row chain_seq={row['chain_seq']} id={row['id']}"
        if row["chain_seq"] != i + 1:
            fail(f"{where}: expected chain_seq {i + 1}")
        if digest != row["content_sha256"]:
            fail(f"{where}: its fields do not hash to its content_sha256")
        if row["prev_content_sha256"] != prev:
            fail(f"{where}: does not follow the row before it")
        prev = digest
        leaves.append(leaf_hash(bytes.fromhex(digest)))
    size = head["tree_size"]
    if len(leaves) < size:
        fail(f"the export holds {len(leaves)} rows, the checkpoint {size}")
    if mth(leaves[:size]).hex() != head["root_hash"]:
        fail("the export's first rows do not hash to the checkpoint's root")
    print(f"ok: the export's first {size} rows hash to the signed root")

    if a.earlier_checkpoint:
        old = load_json(a.earlier_checkpoint)
        check_signature(key, old)
        proof = [bytes.fromhex(h) for h in load_json(a.consistency_proof)["proof"]]
        if not verify_consistency(
            old["tree_size"], size, bytes.fromhex(old["root_hash"]),
            bytes.fromhex(head["root_hash"]), proof,
        ):
            fail(f"the tree of size {size} does not extend the tree of size {old['tree_size']}")
        print(f"ok: consistency {old['tree_size']} -> {size}")

    if a.inclusion_proof:
        p = load_json(a.inclusion_proof)
        index = next((i for i, r in enumerate(rows) if r["id"] == a.event_id), None)
        if index is None:
            fail(f"event {a.event_id} is not in the export")
        path = [bytes.fromhex(h) for h in p["audit_path"]]
        if not verify_inclusion(
            index, p["tree_size"], leaves[index], path, bytes.fromhex(head["root_hash"])
        ) or p["tree_size"] != size:
            fail(f"event {a.event_id} is not included in the checkpoint")
        print(f"ok: event {a.event_id} is included at index {index}")


main()
