"""py-spiffe's WorkloadApiClient against the agent: every one-shot Workload API call.

fetch_x509_context (the SVID is the expected one, its chain verifies against the bundle and its
key matches the leaf), fetch_x509_bundles (the own trust domain), fetch_jwt_svid, validate_jwt_svid
through the agent (and a wrong audience refused), fetch_jwt_bundles and the token verified
offline against them (and a wrong audience refused).

Usage: workload_api_client.py --socket PATH --spiffe-id ID --audience AUD
"""

from __future__ import annotations

import argparse
import time

from spiffe import JwtSvid, WorkloadApiClient

from _common import (
    Failure,
    cert_summary,
    check,
    check_chain,
    describe,
    public_der,
    run,
    status_of,
    step,
)

TIMEOUT_S = 10.0
"""Deadline of each Workload API call."""


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="the agent's Workload API socket path")
    parser.add_argument("--spiffe-id", required=True, help="the SPIFFE ID the caller must get")
    parser.add_argument("--audience", required=True, help="audience of the JWT-SVID")
    args = parser.parse_args()
    expected = args.spiffe_id
    aud = args.audience

    client = step(
        "WorkloadApiClient()",
        lambda: WorkloadApiClient(socket_path=f"unix://{args.socket}", default_timeout=TIMEOUT_S),
    )
    with client:
        ctx = step("fetch_x509_context", client.fetch_x509_context)
        svid = ctx.default_svid
        check(
            str(svid.spiffe_id) == expected,
            f"fetch_x509_context: default SVID is {svid.spiffe_id}, expected {expected}",
        )
        chain = svid.cert_chain
        check(len(chain) >= 1, "fetch_x509_context: empty certificate chain")
        check(svid.private_key is not None, "fetch_x509_context: no private key")
        check(
            public_der(svid.private_key.public_key()) == public_der(svid.leaf.public_key()),
            "fetch_x509_context: the private key does not match the leaf certificate",
        )
        td = svid.spiffe_id.trust_domain
        ctx_bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(td)
        check(ctx_bundle is not None, f"fetch_x509_context: no bundle for {td}")
        roots = list(ctx_bundle.x509_authorities)
        check(roots, f"fetch_x509_context: the bundle of {td} has no authorities")
        check_chain(chain, roots)
        leaf = cert_summary(svid.leaf)
        check(leaf["spiffe_id"] == expected, f"leaf URI SAN is {leaf['spiffe_id']}")

        bundles = step("fetch_x509_bundles", client.fetch_x509_bundles)
        own = bundles.get_bundle_for_trust_domain(td)
        check(own is not None, f"fetch_x509_bundles: no bundle for {td}")
        check(
            own.x509_authorities == ctx_bundle.x509_authorities,
            "fetch_x509_bundles and fetch_x509_context disagree on the bundle of " + str(td),
        )

        jwt_svid = step("fetch_jwt_svid", lambda: client.fetch_jwt_svid(audience={aud}))
        check(
            str(jwt_svid.spiffe_id) == expected,
            f"fetch_jwt_svid: subject is {jwt_svid.spiffe_id}, expected {expected}",
        )
        check(aud in jwt_svid.audience, f"fetch_jwt_svid: audience is {jwt_svid.audience}")
        check(jwt_svid.expiry > time.time(), f"fetch_jwt_svid: expired token ({jwt_svid.expiry})")
        token = jwt_svid.token

        by_agent = step(
            "validate_jwt_svid", lambda: client.validate_jwt_svid(token=token, audience=aud)
        )
        check(
            str(by_agent.spiffe_id) == expected,
            f"validate_jwt_svid: subject is {by_agent.spiffe_id}",
        )
        wrong_aud = status_of(
            lambda: client.validate_jwt_svid(token=token, audience="not-" + aud)
        )

        jwt_bundles = step("fetch_jwt_bundles", client.fetch_jwt_bundles)
        jwt_bundle = jwt_bundles.get_bundle_for_trust_domain(td)
        check(jwt_bundle is not None, f"fetch_jwt_bundles: no bundle for {td}")
        check(jwt_bundle.jwt_authorities, f"fetch_jwt_bundles: the bundle of {td} is empty")
        offline = step(
            "JwtSvid.parse_and_validate against the fetched JWT bundle",
            lambda: JwtSvid.parse_and_validate(token, jwt_bundle, {aud}),
        )
        check(str(offline.spiffe_id) == expected, f"offline: subject is {offline.spiffe_id}")
        try:
            JwtSvid.parse_and_validate(token, jwt_bundle, {"not-" + aud})
        except Exception as err:  # noqa: BLE001 - any rejection will do
            offline_wrong_aud = describe(err)
        else:
            raise Failure("JwtSvid.parse_and_validate accepted a token for another audience")

    return {
        "x509": {
            "svids": len(ctx.x509_svids),
            "chain_len": len(chain),
            "leaf": leaf,
            "trust_domain": str(td),
            "bundle_authorities": len(roots),
        },
        "x509_bundles": sorted(str(b.trust_domain) for b in bundles.bundles),
        "jwt": {
            "spiffe_id": str(jwt_svid.spiffe_id),
            "audience": sorted(jwt_svid.audience),
            "expiry": jwt_svid.expiry,
            "validated_by_agent": str(by_agent.spiffe_id),
            "wrong_audience_by_agent": wrong_aud,
            "validated_offline": str(offline.spiffe_id),
            "wrong_audience_offline": offline_wrong_aud,
        },
        "jwt_bundles": sorted(str(b.trust_domain) for b in jwt_bundles.bundles),
        "jwt_authorities": len(jwt_bundle.jwt_authorities),
    }


if __name__ == "__main__":
    run(main)
