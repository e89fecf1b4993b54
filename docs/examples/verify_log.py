#!/usr/bin/env python3
"""Verify and decode Serval's event log using only a standard HMAC library and a
MessagePack decoder (docs/auditors.md walks through it).

Environment: REDIS_URL (redis://host:port), STREAMS_HMAC_KEY (hex), SERVAL_KEY_PREFIX
(default "serval"). Optional argument: a zone id (default: the system stream).
Prints one JSON line per event; exits 1 at the first entry whose signature fails.
"""
import hashlib
import hmac
import json
import os
import sys

import msgpack  # pip install msgpack
import redis    # pip install redis


def key_id(key: bytes) -> str:
    # The key id is the first 16 hex characters of SHA-256(key).
    return hashlib.sha256(key).hexdigest()[:16]


def verify_entry(key: bytes, fields: dict) -> bool:
    env, kid, sig = fields[b"env"], fields[b"kid"], fields[b"sig"]
    if kid.decode() != key_id(key):
        return False  # signed under another key (e.g. before a rotation)
    mac = hmac.new(key, b"serval.event.v1\n" + kid + b"\n" + env, hashlib.sha256)
    return hmac.compare_digest(mac.hexdigest(), sig.decode())


def verify_topic_message(key: bytes, stream: str, fields: dict) -> bool:
    """Caracal's `_sig` on the public caracal.* topics."""
    canonical = stream + "\n" + "".join(
        f"{name}={value}\n" for name, value in sorted(fields.items()) if name != "_sig"
    )
    mac = hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, fields.get("_sig", ""))


def main() -> int:
    key = bytes.fromhex(os.environ["STREAMS_HMAC_KEY"])
    prefix = os.environ.get("SERVAL_KEY_PREFIX", "serval")
    tag = "{sys}" if len(sys.argv) < 2 else "{z:%s}" % sys.argv[1]
    stream = f"{prefix}:{tag}:log"
    r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    for entry_id, fields in r.xrange(stream, "-", "+"):
        if not verify_entry(key, fields):
            print(f"BAD SIGNATURE at {stream} {entry_id.decode()}", file=sys.stderr)
            return 1
        envelope = msgpack.unpackb(fields[b"env"], raw=False)
        envelope["payload"] = msgpack.unpackb(envelope["payload"], raw=False)
        envelope["entry_id"] = entry_id.decode()
        print(json.dumps(envelope, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
