"""Plain grpcio against an admin socket (the server's or the agent's): sigil.v1.Health/Check with
each :authority form grpcio clients send.

--authority raw      grpc.default_authority is the socket path itself (what grpc-java sends)
--authority default  C core's own choice (the percent-encoded socket path)

The request is the empty message; the reply's first field (serving, a bool) must be true.

Usage: admin_health.py --socket PATH --authority raw|default [--authority ...]
"""

from __future__ import annotations

import argparse

import grpc

from _common import check, run, step

HEALTH_CHECK = "/sigil.v1.Health/Check"


def check_health(socket: str, authority: str) -> int:
    """Calls Health/Check once; returns the reply's size in bytes."""
    options = [("grpc.default_authority", socket)] if authority == "raw" else []
    with grpc.insecure_channel(f"unix://{socket}", options=options) as channel:
        call = channel.unary_unary(HEALTH_CHECK)
        reply = step(f"Health/Check with the {authority} authority", lambda: call(b"", timeout=10))
    # Field 1 (serving), varint, true: 0x08 0x01.
    check(reply[:2] == b"\x08\x01", f"serving is not true in the reply {reply!r}")
    return len(reply)


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--authority", action="append", choices=["raw", "default"], required=True)
    args = parser.parse_args()
    return {a: check_health(args.socket, a) for a in args.authority}


if __name__ == "__main__":
    run(main)
