"""Caracal's official OAuth clients against Serval's STS: federation and a subject approval.

Environment: STS_URL, ZONE_ID, APPLICATION_ID, CLIENT_SECRET, RESOURCE, SESSION_ID, EDGE_ID
(a Delegation granting `tickets:read`, which the zone's policy gates for the subject), and
ID_TOKEN (an id token of an issuer registered in the zone).
"""

import asyncio
import base64
import json
import os
import sys

from caracalai_oauth import AccessDenied, OAuthClient
from caracalai_oauth.errors import ApprovalRequired
from caracalai_oauth.exchanger import ClientCredentials, ClientSecretExchanger

STS = os.environ["STS_URL"]
ZONE = os.environ["ZONE_ID"]
APP = os.environ["APPLICATION_ID"]
SECRET = os.environ["CLIENT_SECRET"]
RESOURCE = os.environ["RESOURCE"]
SESSION = os.environ["SESSION_ID"]
EDGE = os.environ["EDGE_ID"]
ID_TOKEN = os.environ["ID_TOKEN"]


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def claims(token):
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


async def main():
    client = OAuthClient(STS, ZONE, APP)
    exchanger = ClientSecretExchanger(
        sts_url=STS,
        credentials=lambda: ClientCredentials(ZONE, APP, SECRET),
        resources=[RESOURCE],
    )

    federated = await client.federate_subject(ID_TOKEN, client_secret=SECRET)
    user = claims(federated.access_token)
    check(user["use"] == "session" and user["sub_type"] == "user", "OAuthClient.federate_subject mints a user session mandate")
    check(bool(user.get("sid")), "the federated mandate names its authority record (sid)")
    minted = exchanger.federate_subject(ID_TOKEN, ttl_seconds=600)
    check(claims(minted.token)["sub"] == user["sub"], "ClientSecretExchanger.federate_subject relays the same subject")
    try:
        await client.federate_subject("not-a-token", client_secret=SECRET)
        check(False, "a malformed id token is refused")
    except Exception as e:  # the SDK maps 401 invalid_token to its error type
        check(getattr(e, "http_status", 0) == 401, f"a malformed id token is refused ({type(e).__name__})")

    try:
        exchanger.mint_mandate(resource=RESOURCE, scopes=["tickets:read"], session_id=SESSION, delegation_id=EDGE)
        check(False, "a gated mint raises ApprovalRequired")
    except ApprovalRequired as e:
        held = e
    check(len(held.binding) == 64 and held.tier == "payments", "ApprovalRequired carries the hold's binding and tier")

    waiting = asyncio.create_task(exchanger.await_approval(held.approval_id, timeout_seconds=30))
    await asyncio.sleep(0.3)
    try:
        await client.decide_approval(
            subject_token=federated.access_token,
            approval_id=held.approval_id,
            binding="0" * 64,
            decision="approved",
        )
        check(False, "a decision with another binding is refused")
    except AccessDenied as e:
        check(e.http_status == 409, "a decision with another binding is refused (409)")
    await client.decide_approval(
        subject_token=federated.access_token,
        approval_id=held.approval_id,
        binding=held.binding,
        decision="approved",
        reason="yes, that is me",
    )
    check(True, "OAuthClient.decide_approval records the user's decision")
    state = await asyncio.wait_for(waiting, 40)
    check(state == "approved", f"await_approval sees the decision ({state})")

    mandate = exchanger.mint_mandate(
        resource=RESOURCE, scopes=["tickets:read"], session_id=SESSION, delegation_id=EDGE, approval_id=held.approval_id
    )
    check(claims(mandate.token)["use"] == "gateway", "the retry with approval_id mints the gateway mandate")
    state = exchanger.wait_for_approval(held.approval_id, timeout_seconds=5)
    check(state == "consumed", f"wait_for_approval reads the consumed hold ({state})")
    await client.aclose()


asyncio.run(main())
