"""Plain grpcio (gRPC C core) against the agent, with the HTTP/2 :authority other stacks send.

--authority raw     the channel option grpc.default_authority is the socket path itself, as
                    grpc-java sends it
--authority default no option: C core derives the authority from the unix: target (the
                    percent-encoded socket path), as every grpcio / C++ / Ruby client does

Checks (--check, repeatable, run in order):
  x509       FetchX509SVID with the workload.spiffe.io header: the first stream message holds the
             expected SVID (spiffe_id field, leaf URI SAN, key, bundle)
  sds        Envoy SDS FetchSecrets for resource "default" (hand-encoded DiscoveryRequest, no
             header, as Envoy calls it): a tls_certificate Secret whose PEM chain's leaf is the
             expected SPIFFE ID, with its PEM private key
  no-header  FetchX509SVID without the header is refused; the result holds the status (the Rust
             side wants INVALID_ARGUMENT)

Messages of the Workload API come from py-spiffe's generated protos (spiffe._proto); SDS messages
are encoded and decoded by the minimal protobuf wire codec below (no grpcio-tools, no Envoy protos).

Usage: grpcio_raw.py --socket PATH --spiffe-id ID --authority raw|default --check C [--check C]...
"""

from __future__ import annotations

import argparse
from typing import Iterator

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe._proto import workload_pb2

from _common import (
    WORKLOAD_HEADER,
    Failure,
    cert_summary,
    check,
    public_der,
    run,
    status_of,
    step,
)

TIMEOUT_S = 10.0
"""Deadline of each call."""

FETCH_X509_SVID = "/SpiffeWorkloadAPI/FetchX509SVID"
FETCH_SECRETS = "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets"
SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


# --- a minimal protobuf wire codec, for the SDS messages -------------------------------------


def varint(n: int) -> bytes:
    """``n`` (non-negative) as a protobuf varint."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, value: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings, bytes, embedded messages."""
    return varint(number << 3 | 2) + varint(len(value)) + value


def fields(message: bytes) -> Iterator[tuple[int, int, object]]:
    """The (field number, wire type, value) triples of ``message``; values of length-delimited
    fields are bytes, of varints ints. Raises :class:`Failure` on malformed input."""

    def read_varint(pos: int) -> tuple[int, int]:
        shift = result = 0
        while True:
            check(pos < len(message), "truncated varint in a protobuf message")
            byte = message[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result, pos
            shift += 7
            check(shift < 64, "overlong varint in a protobuf message")

    pos = 0
    while pos < len(message):
        key, pos = read_varint(pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = read_varint(pos)
            check(pos + length <= len(message), "truncated field in a protobuf message")
            yield number, wire, message[pos : pos + length]
            pos += length
        elif wire == 1:
            check(pos + 8 <= len(message), "truncated fixed64 in a protobuf message")
            yield number, wire, message[pos : pos + 8]
            pos += 8
        elif wire == 5:
            check(pos + 4 <= len(message), "truncated fixed32 in a protobuf message")
            yield number, wire, message[pos : pos + 4]
            pos += 4
        else:
            raise Failure(f"unsupported protobuf wire type {wire} (field {number})")


def submessages(message: bytes, number: int) -> list[bytes]:
    """Every length-delimited value of field ``number``."""
    return [v for n, w, v in fields(message) if n == number and w == 2]  # type: ignore[misc]


def one(message: bytes, number: int, what: str) -> bytes:
    """The single length-delimited value of field ``number``, which must be present."""
    values = submessages(message, number)
    check(len(values) == 1, f"{what}: expected exactly one, found {len(values)}")
    return values[-1]


def data_source(message: bytes, what: str) -> bytes:
    """The inline content of an envoy.config.core.v3.DataSource (inline_bytes = 2,
    inline_string = 3)."""
    inline = submessages(message, 2) + submessages(message, 3)
    check(len(inline) == 1, f"{what}: not an inline DataSource ({len(inline)} inline fields)")
    return inline[0]


def discovery_request(resource_names: list[str]) -> bytes:
    """An envoy.service.discovery.v3.DiscoveryRequest: node = 2 {id = 1, cluster = 2},
    resource_names = 3, type_url = 4."""
    node = field(1, b"python-grpcio") + field(2, b"sigil-e2e")
    body = field(2, node)
    for name in resource_names:
        body += field(3, name.encode())
    return body + field(4, SECRET_TYPE_URL.encode())


def der_certificates(data: bytes) -> list[x509.Certificate]:
    """The certificates of a concatenation of DER certificates (the Workload API's chains)."""
    certs = []
    pos = 0
    while pos < len(data):
        check(data[pos] == 0x30 and pos + 2 <= len(data), "not a DER SEQUENCE in a chain")
        first = data[pos + 1]
        if first < 0x80:
            header, length = 2, first
        else:
            size = first & 0x7F
            check(1 <= size <= 4 and pos + 2 + size <= len(data), "bad DER length in a chain")
            header, length = 2 + size, int.from_bytes(data[pos + 2 : pos + 2 + size], "big")
        end = pos + header + length
        check(end <= len(data), "truncated DER certificate in a chain")
        certs.append(x509.load_der_x509_certificate(data[pos:end]))
        pos = end
    check(certs, "empty certificate chain")
    return certs


# --- the checks -------------------------------------------------------------------------------


def fetch_x509(channel: grpc.Channel, expected: str) -> dict:
    call = channel.unary_stream(
        FETCH_X509_SVID,
        request_serializer=workload_pb2.X509SVIDRequest.SerializeToString,
        response_deserializer=workload_pb2.X509SVIDResponse.FromString,
    )
    stream = call(workload_pb2.X509SVIDRequest(), metadata=[WORKLOAD_HEADER], timeout=TIMEOUT_S)
    try:
        first = step("FetchX509SVID (first stream message)", lambda: next(stream))
    finally:
        stream.cancel()
    check(first.svids, "FetchX509SVID: the first message has no SVID")
    svid = first.svids[0]
    check(
        svid.spiffe_id == expected,
        f"FetchX509SVID: spiffe_id {svid.spiffe_id!r}, expected {expected}",
    )
    check(svid.x509_svid_key, "FetchX509SVID: no private key")
    check(svid.bundle, "FetchX509SVID: no bundle")
    certs = step("parsing x509_svid (DER chain)", lambda: der_certificates(svid.x509_svid))
    leaf = cert_summary(certs[0])
    check(leaf["spiffe_id"] == expected, f"FetchX509SVID: leaf URI SAN {leaf['spiffe_id']}")
    key = step(
        "parsing x509_svid_key (PKCS#8 DER)",
        lambda: serialization.load_der_private_key(svid.x509_svid_key, password=None),
    )
    check(
        public_der(key.public_key()) == public_der(certs[0].public_key()),
        "FetchX509SVID: the key does not match the leaf",
    )
    return {"spiffe_id": svid.spiffe_id, "svids": len(first.svids), "leaf": leaf}


def fetch_secrets(channel: grpc.Channel, expected: str) -> dict:
    call = channel.unary_unary(FETCH_SECRETS, request_serializer=None, response_deserializer=None)
    response = step(
        "SDS FetchSecrets for \"default\"",
        lambda: call(discovery_request(["default"]), timeout=TIMEOUT_S),
    )
    check(isinstance(response, bytes), f"FetchSecrets: raw bytes expected, got {type(response)}")
    resources = submessages(response, 2)
    check(len(resources) == 1, f"FetchSecrets: {len(resources)} resources for [\"default\"]")
    any_type = one(resources[0], 1, "Any.type_url").decode()
    check(any_type == SECRET_TYPE_URL, f"FetchSecrets: resource of type {any_type!r}")
    secret = one(resources[0], 2, "Any.value")
    name = one(secret, 1, "Secret.name").decode()
    check(name == "default", f"FetchSecrets: secret named {name!r}")
    tls = one(secret, 2, "Secret.tls_certificate")
    chain_pem = data_source(one(tls, 1, "TlsCertificate.certificate_chain"), "certificate_chain")
    key_pem = data_source(one(tls, 2, "TlsCertificate.private_key"), "private_key")
    check(b"-----BEGIN CERTIFICATE-----" in chain_pem, "FetchSecrets: no PEM certificate")
    certs = step("parsing the PEM chain", lambda: x509.load_pem_x509_certificates(chain_pem))
    leaf = cert_summary(certs[0])
    check(leaf["spiffe_id"] == expected, f"FetchSecrets: leaf URI SAN {leaf['spiffe_id']}")
    key = step(
        "parsing the PEM private key",
        lambda: serialization.load_pem_private_key(key_pem, password=None),
    )
    check(
        public_der(key.public_key()) == public_der(certs[0].public_key()),
        "FetchSecrets: the private key does not match the leaf",
    )
    version = submessages(response, 1)
    return {
        "secret": name,
        "chain_len": len(certs),
        "leaf": leaf,
        "version_info": version[0].decode() if version else "",
    }


def no_header(channel: grpc.Channel) -> dict:
    call = channel.unary_stream(
        FETCH_X509_SVID,
        request_serializer=workload_pb2.X509SVIDRequest.SerializeToString,
        response_deserializer=workload_pb2.X509SVIDResponse.FromString,
    )

    def first_message() -> None:
        stream = call(workload_pb2.X509SVIDRequest(), timeout=TIMEOUT_S)
        try:
            next(stream)
        finally:
            stream.cancel()

    return status_of(first_message)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="the agent's Workload API socket path")
    parser.add_argument("--spiffe-id", required=True, help="the SPIFFE ID the caller must get")
    parser.add_argument("--authority", required=True, choices=["raw", "default"])
    parser.add_argument(
        "--check", action="append", required=True, choices=["x509", "sds", "no-header"]
    )
    args = parser.parse_args()
    options = []
    if args.authority == "raw":
        options.append(("grpc.default_authority", args.socket))
    result: dict = {"authority": args.socket if args.authority == "raw" else None}
    with grpc.insecure_channel(f"unix:{args.socket}", options=options) as channel:
        for name in args.check:
            if name == "x509":
                result[name] = fetch_x509(channel, args.spiffe_id)
            elif name == "sds":
                result[name] = fetch_secrets(channel, args.spiffe_id)
            else:
                result[name] = step("FetchX509SVID without the header", lambda: no_header(channel))
    return result


if __name__ == "__main__":
    run(main)
