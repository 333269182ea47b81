"""Shared by the interop scripts: failures, the result line, certificate helpers.

Every script prints exactly one line starting with ``RESULT `` and holding a JSON object on
success (the Rust side asserts on it), and exits 1 after printing ``FAILED: <why>`` on stderr on
any failure, with the gRPC status that caused it when there is one.
"""

from __future__ import annotations

import faulthandler
import json
import sys
import traceback
from typing import Any, Callable, Optional

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

RESULT_PREFIX = "RESULT "
"""Prefix of the single result line on stdout."""

WORKLOAD_HEADER = ("workload.spiffe.io", "true")
"""The security header every Workload API call must carry."""


class Failure(Exception):
    """A check that did not hold; its message is the whole explanation."""


def check(condition: object, message: str) -> None:
    """Raises :class:`Failure` with ``message`` unless ``condition`` is true."""
    if not condition:
        raise Failure(message)


def rpc_error(err: BaseException) -> Optional[grpc.RpcError]:
    """The gRPC error ``err`` is or was caused by (py-spiffe wraps them), if any."""
    seen: Optional[BaseException] = err
    while seen is not None:
        if isinstance(seen, grpc.RpcError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def describe(err: BaseException) -> str:
    """``err`` in one line, with the gRPC status code and details behind it when there is one."""
    text = f"{type(err).__name__}: {err}"
    rpc = rpc_error(err)
    if rpc is not None and rpc is not err and isinstance(rpc, grpc.Call):
        text += f" [gRPC {rpc.code().name}: {rpc.details()}]"
    elif isinstance(rpc, grpc.Call):
        text = f"gRPC {rpc.code().name}: {rpc.details()}"
    return text


def step(what: str, f: Callable[[], Any]) -> Any:
    """Runs ``f``; any exception becomes a :class:`Failure` saying which step failed and why."""
    try:
        return f()
    except Failure:
        raise
    except Exception as err:  # noqa: BLE001 - every error is reported, then the script fails
        raise Failure(f"{what}: {describe(err)}") from err


def status_of(f: Callable[[], Any]) -> dict:
    """Runs ``f``, expecting it to fail with a gRPC error; returns that error's code and details.

    A call that succeeds, or fails without a gRPC status, is a :class:`Failure`.
    """
    try:
        f()
    except Exception as err:  # noqa: BLE001 - inspected below
        rpc = rpc_error(err)
        if not isinstance(rpc, grpc.Call):
            raise Failure(f"expected a gRPC error, got {describe(err)}") from err
        return {"code": rpc.code().name, "details": rpc.details()}
    raise Failure("the call succeeded, but it should have been refused")


def spiffe_id_of(cert: x509.Certificate) -> str:
    """The single URI SAN of an X.509-SVID."""
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    check(len(uris) == 1, f"an X.509-SVID has exactly one URI SAN, this one has {uris}")
    return uris[0]


def public_der(key: Any) -> bytes:
    """The DER SubjectPublicKeyInfo of a public key."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_chain(chain: list[x509.Certificate], roots: list[x509.Certificate]) -> None:
    """Each certificate of ``chain`` (leaf first) is signed by the next, the last by a root."""
    check(chain, "empty certificate chain")
    for child, parent in zip(chain, chain[1:]):
        step(
            f"verifying {child.subject.rfc4514_string()!r} against its issuer in the chain",
            lambda: child.verify_directly_issued_by(parent),
        )
    last = chain[-1]
    for root in roots:
        try:
            last.verify_directly_issued_by(root)
            return
        except Exception:  # noqa: BLE001 - try the next root
            continue
    raise Failure(
        f"no bundle authority ({len(roots)} of them) signed {last.subject.rfc4514_string()!r}"
    )


def cert_summary(cert: x509.Certificate) -> dict:
    """The fields of a certificate the tests compare."""
    return {
        "spiffe_id": spiffe_id_of(cert),
        "serial": format(cert.serial_number, "x"),
        "not_before": int(cert.not_valid_before_utc.timestamp()),
        "not_after": int(cert.not_valid_after_utc.timestamp()),
    }


def run(main: Callable[[], dict], deadline_s: float = 60.0) -> None:
    """Runs ``main``, printing its result line, or ``FAILED: ...`` and exiting 1.

    After ``deadline_s`` every thread's stack is dumped and the script exits, so a hung call
    shows where it hung.
    """
    faulthandler.dump_traceback_later(deadline_s, exit=True)
    try:
        result = main()
    except Failure as err:
        if err.__cause__ is not None:
            traceback.print_exception(err.__cause__, file=sys.stderr)
        print(f"FAILED: {err}", file=sys.stderr, flush=True)
        sys.exit(1)
    except Exception as err:  # noqa: BLE001 - anything else is a failure too
        traceback.print_exc()
        print(f"FAILED: {describe(err)}", file=sys.stderr, flush=True)
        sys.exit(1)
    finally:
        faulthandler.cancel_dump_traceback_later()
    print(RESULT_PREFIX + json.dumps(result, sort_keys=True), flush=True)
