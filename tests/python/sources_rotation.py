"""py-spiffe's X509Source and JwtSource against the agent: they initialise, and follow rotation.

X509Source: initialises with the expected SVID and the own trust domain bundle, then, within
--rotation-timeout seconds and without any action from the client, holds a new SVID (new serial,
later expiry) pushed on its stream; its subscribers were notified. JwtSource: initialises with the
own trust domain's JWT bundle, fetches a JWT-SVID that verifies against that bundle, and within
--rotation-timeout seconds fetches a newer one (later expiry) that verifies too.

Needs an entry with short X.509 and JWT SVID lifetimes (seconds), so rotation happens quickly.

Usage: sources_rotation.py --socket PATH --spiffe-id ID --audience AUD [--rotation-timeout S]
"""

from __future__ import annotations

import argparse
import threading
import time

from spiffe import JwtSource, JwtSvid, WorkloadApiClient, X509Source

from _common import Failure, cert_summary, check, check_chain, describe, run, step

INIT_TIMEOUT_S = 10.0
"""How long a source may take to receive its first update."""


def init_failure(what: str, err: Exception, endpoint: str) -> Failure:
    """Why ``what`` did not initialise; the sources retry silently, so a one-shot fetch with the
    same transport says what the agent answers."""
    try:
        with WorkloadApiClient(socket_path=endpoint, default_timeout=5) as client:
            client.fetch_x509_context()
        probe = "a one-shot fetch_x509_context succeeds"
    except Exception as probe_err:  # noqa: BLE001 - reported
        probe = f"a one-shot fetch_x509_context fails with {describe(probe_err)}"
    return Failure(f"{what} did not initialise: {describe(err)}; {probe}")


def x509_rotation(endpoint: str, expected: str, timeout_s: float) -> dict:
    try:
        source = X509Source(socket_path=endpoint, timeout_in_seconds=INIT_TIMEOUT_S)
    except Exception as err:  # noqa: BLE001 - explained by init_failure
        raise init_failure("X509Source", err, endpoint) from err
    updates = threading.Semaphore(0)
    source.subscribe_for_updates(updates.release)
    with source:
        ctx = step("X509Source.get_x509_context", source.get_x509_context)
        svid = ctx.default_svid
        check(
            str(svid.spiffe_id) == expected,
            f"X509Source: SVID {svid.spiffe_id}, expected {expected}",
        )
        td = svid.spiffe_id.trust_domain
        bundle = source.get_bundle_for_trust_domain(td)
        check(bundle is not None and bundle.x509_authorities, f"X509Source: no bundle for {td}")
        check_chain(svid.cert_chain, list(bundle.x509_authorities))
        first = cert_summary(svid.leaf)

        started = time.monotonic()
        deadline = started + timeout_s
        notified = 0
        while True:
            if updates.acquire(timeout=0.1):
                notified += 1
            check(not source.is_closed(), "X509Source closed itself while waiting for a rotation")
            current = source.get_x509_context().default_svid
            if current.leaf.serial_number != svid.leaf.serial_number:
                break
            if time.monotonic() >= deadline:
                raise Failure(
                    f"X509Source still holds serial {first['serial']} (valid until "
                    f"{first['not_after']}) after {timeout_s} s: no rotation reached it"
                )
        waited = time.monotonic() - started
        check(str(current.spiffe_id) == expected, f"rotated SVID is {current.spiffe_id}")
        rotated = cert_summary(current.leaf)
        check(
            rotated["not_after"] > first["not_after"],
            f"rotated SVID expires at {rotated['not_after']}, not after {first['not_after']}",
        )
        bundle = source.get_bundle_for_trust_domain(td)
        check_chain(current.cert_chain, list(bundle.x509_authorities))
        while updates.acquire(blocking=False):
            notified += 1
        check(notified >= 1, "X509Source rotated without notifying its subscriber")
    return {
        "first": first,
        "rotated": rotated,
        "waited_s": round(waited, 2),
        "notified": notified,
    }


def jwt_rotation(endpoint: str, expected: str, aud: str, timeout_s: float) -> dict:
    try:
        source = JwtSource(socket_path=endpoint, timeout_in_seconds=INIT_TIMEOUT_S)
    except Exception as err:  # noqa: BLE001 - explained by init_failure
        raise init_failure("JwtSource", err, endpoint) from err
    with source:
        tds = sorted(str(b.trust_domain) for b in step("JwtSource.bundles", lambda: source.bundles))
        first = step("JwtSource.fetch_svid", lambda: source.fetch_svid(audience={aud}))
        check(str(first.spiffe_id) == expected, f"JwtSource: subject {first.spiffe_id}")
        td = first.spiffe_id.trust_domain
        bundle = source.get_bundle_for_trust_domain(td)
        check(bundle is not None and bundle.jwt_authorities, f"JwtSource: no JWT bundle for {td}")
        step(
            "verifying the first JWT-SVID against JwtSource's bundle",
            lambda: JwtSvid.parse_and_validate(first.token, bundle, {aud}),
        )

        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            time.sleep(0.25)
            current = step("JwtSource.fetch_svid", lambda: source.fetch_svid(audience={aud}))
            if current.expiry > first.expiry:
                break
            check(
                time.monotonic() < deadline,
                f"JwtSource still gets the token expiring at {first.expiry} after {timeout_s} s",
            )
        waited = time.monotonic() - started
        bundle = source.get_bundle_for_trust_domain(td)
        step(
            "verifying the newer JWT-SVID against JwtSource's bundle",
            lambda: JwtSvid.parse_and_validate(current.token, bundle, {aud}),
        )
        check(str(current.spiffe_id) == expected, f"newer JWT-SVID subject {current.spiffe_id}")
    return {
        "bundles": tds,
        "authorities": len(bundle.jwt_authorities),
        "first_expiry": first.expiry,
        "newer_expiry": current.expiry,
        "waited_s": round(waited, 2),
    }


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="the agent's Workload API socket path")
    parser.add_argument("--spiffe-id", required=True, help="the SPIFFE ID the caller must get")
    parser.add_argument("--audience", required=True, help="audience of the JWT-SVIDs")
    parser.add_argument("--rotation-timeout", type=float, default=20.0, help="seconds")
    args = parser.parse_args()
    endpoint = f"unix://{args.socket}"
    return {
        "x509": x509_rotation(endpoint, args.spiffe_id, args.rotation_timeout),
        "jwt": jwt_rotation(endpoint, args.spiffe_id, args.audience, args.rotation_timeout),
    }


if __name__ == "__main__":
    run(main, deadline_s=90.0)
