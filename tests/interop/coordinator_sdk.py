"""Caracal's official SDK (`caracalai`) drives Serval's Coordinator, and
`caracalai-revocation-redis` learns a revocation from `caracal.sessions.revoke`.

Environment: STS_URL (the issuer), COORDINATOR_URL, ZONE_ID, APPLICATION_ID, CLIENT_SECRET,
RESOURCE, REDIS_URL, TOPIC_PREFIX (the server's topic key prefix), STREAMS_HMAC_KEY (hex).
The zone's active policy grants RESOURCE to the application.
"""

import asyncio
import os
import sys

import redis
from caracalai import Authority, Caracal, CoordinatorError, DelegationConstraints
from caracalai_revocation_redis import RedisRevocationConsumer, RedisRevocationStore

STS = os.environ["STS_URL"]
COORD = os.environ["COORDINATOR_URL"]
ZONE = os.environ["ZONE_ID"]
APP = os.environ["APPLICATION_ID"]
SECRET = os.environ["CLIENT_SECRET"]
RESOURCE = os.environ["RESOURCE"]
TOPICS = os.environ["TOPIC_PREFIX"]
STREAMS_KEY = bytes.fromhex(os.environ["STREAMS_HMAC_KEY"])


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def narrow(scopes, ttl, hops=None):
    return Authority.narrow(
        scopes,
        ttl_seconds=ttl,
        resource_id=RESOURCE,
        constraints=DelegationConstraints(max_hops=hops) if hops else None,
    )


async def main():
    c = Caracal.from_client_secret(
        coordinator_url=COORD,
        sts_url=STS,
        zone_id=ZONE,
        application_id=APP,
        client_secret=SECRET,
        resources=[RESOURCE],
    )
    r = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
    store = RedisRevocationStore(r, key_prefix=f"{TOPICS}revoked:")
    consumer = RedisRevocationConsumer(
        r,
        store,
        "interop-1",
        stream=f"{TOPICS}caracal.sessions.revoke",
        block_ms=100,
        stream_hmac_key=STREAMS_KEY,
    )
    consumer.ensure_group()

    async with c.session(labels=["root"], task="interop") as root:
        check(root.session_id, "a root Session started")
        check(root.delegation_id is None, "a root Session holds no Delegation")
        async with c.session(authority=narrow(["tickets:read"], 600, hops=2)) as child:
            check(child.delegation_id, "Authority.narrow gave the child a Delegation")
            check(child.hop == 1, "the child is one hop down")
            async with c.session(authority=narrow(["tickets:read"], 300)) as grandchild:
                check(grandchild.delegation_id, "a narrower grandchild Delegation passes")
                check(grandchild.hop == 2, "the grandchild is two hops down")
                grandchild_delegation = grandchild.delegation_id
                grandchild_session = grandchild.session_id
            try:
                async with c.session(authority=narrow(["tickets:read"], 300, hops=2)):
                    check(False, "a wider grandchild must be refused")
            except CoordinatorError as e:
                check(e.status == 403, f"a wider grandchild is 403 ({e.code})")
                check(
                    e.code == "delegation_exceeds_parent_authority",
                    "refused as exceeding the parent's authority",
                )
            # Revoke a Delegation: a grandchild still running is terminated, and its subject
            # record is announced on caracal.sessions.revoke.
            async with c.session(authority=narrow(["tickets:read"], 300)) as doomed:
                await c.revoke_delegation(doomed.delegation_id)
                revoked_session = doomed.session_id
                revoked_delegation = doomed.delegation_id
        check(grandchild_delegation != revoked_delegation, "distinct Delegations")

    # A service Session: lease, heartbeats, clean exit with its generation.
    handle = await c.start_session(heartbeat_interval=0, labels=["worker"])
    check(handle.session_id, "a service Session started")
    await handle.heartbeat()
    await handle.heartbeat("degraded")
    await handle.aclose()
    print("ok: heartbeats and a clean exit of a service Session")

    # The revocation consumer learns the revocation (signature checked).
    anchors = set()
    for _ in range(100):
        consumer.poll_once()
        if store.is_revoked(revoked_delegation):
            break
        await asyncio.sleep(0.1)
    check(store.is_revoked(revoked_delegation), "the revoked Delegation is marked revoked")
    check(store.is_revoked(revoked_session), "its target Session is marked revoked")
    check(not store.is_revoked(grandchild_session), "a Session that ended cleanly is not")
    await c.aclose()


asyncio.run(main())
