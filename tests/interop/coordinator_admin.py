"""Caracal's official admin client (`caracalai-admin`) makes its Coordinator calls
(sdk-wire.md §2.3) against Serval with the operator token.

Environment: CARACAL_API_URL, CARACAL_ADMIN_TOKEN, COORDINATOR_URL, COORDINATOR_TOKEN,
ZONE_ID, ROOT (a Session with a child CHILD), EDGE (a live Delegation ROOT -> CHILD).
"""

import os

from caracalai_admin import AdminClient


def main() -> None:
    zone = os.environ["ZONE_ID"]
    root, child, edge = os.environ["ROOT"], os.environ["CHILD"], os.environ["EDGE"]
    client = AdminClient(
        api_url=os.environ["CARACAL_API_URL"],
        admin_token=os.environ["CARACAL_ADMIN_TOKEN"],
        coordinator_url=os.environ["COORDINATOR_URL"],
        coordinator_token=os.environ["COORDINATOR_TOKEN"],
        retries=0,
    )
    s = client.sessions.get(zone, root)
    assert s["session_id"] == root and s["parent_session_id"] is None, s
    assert s["authority_record_id"], s
    kids = client.sessions.children(zone, root)
    assert [k["session_id"] for k in kids] == [child], kids
    assert kids[0]["parent_session_id"] == root, kids

    ea = client.sessions.effective_authority(zone, child)
    assert ea["session_id"] == child and ea["inbound_delegations"] == [edge], ea
    active = client.delegations.active(zone)
    assert [d["delegation_id"] for d in active["items"]] == [edge], active
    walk = client.delegations.traverse(zone, edge)
    assert [(n["delegation_id"], n["depth"]) for n in walk] == [(edge, 1)], walk
    impact = client.delegations.impact(zone, edge)
    assert impact["delegation_id"] == edge, impact
    assert [d["delegation_id"] for d in impact["affected_delegations"]] == [edge], impact
    # Upstream shapes are kept where the client misreads them (sdk-wire.md §2.6): the
    # inbound list is a page object, which the client iterates key by key.
    assert client.delegations.inbound(zone, child) == ["items", "next_cursor"]

    assert client.sessions.suspend(zone, root) == {"suspended": 2}
    assert client.sessions.resume(zone, root) == {"resumed": 2}
    revoked = client.delegations.revoke(zone, edge)
    assert revoked["revoked_delegations"] == 1 and revoked["terminated_sessions"] == 1, revoked
    assert client.sessions.terminate(zone, root) is None
    assert client.sessions.get(zone, root)["status"] == "terminated"
    print("ok: the admin client's Coordinator calls")


main()
