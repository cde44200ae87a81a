#!/usr/bin/env python3
"""Reference client of Chokepoint's attestation endpoint, for gateway teams to copy.

A gateway that accepted a connection knows the peer address it sees and its own local address.
It asks the node's Chokepoint which identity, tenant and task the kernel attributes to that live
connection, and authorises on that instead of on what the client claims.

    python3 attest_client.py --socket /run/chokepoint/attest.sock --peer 10.0.3.7:41234 --local 10.77.0.1:8080

As a library:

    who = attest("/run/chokepoint/attest.sock", ("10.0.3.7", 41234), ("10.77.0.1", 8080))
    if who is None: reject()          # not an attested agent connection
    else: authorise(who["identity"], who["tenant"], who["task"])

Standard library only. Answers arrive in well under a millisecond on the node; keep a short
timeout and fail closed (treat errors as "not attested").
"""

import argparse
import json
import socket
import sys
from urllib.parse import quote


def _fmt(addr):
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def attest(sock_path, peer, local, timeout=0.2):
    """Returns the attestation dict, or None when no live connection of an identity matches."""
    target = f"/v1/attest?peer={quote(_fmt(peer))}&local={quote(_fmt(local))}"
    request = f"GET {target} HTTP/1.1\r\nHost: chokepoint\r\nConnection: close\r\n\r\n".encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status == 404:
        return None
    payload = json.loads(body or b"{}")
    if status != 200:
        raise RuntimeError(f"attestation failed ({status}): {payload.get('error')}")
    return payload


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", default="/run/chokepoint/attest.sock")
    ap.add_argument("--peer", required=True, help="client address as the gateway sees it, IP:PORT")
    ap.add_argument("--local", required=True, help="the gateway's own address, IP:PORT")
    a = ap.parse_args()

    def split(s):
        host, _, port = s.rpartition(":")
        return host.strip("[]"), int(port)

    who = attest(a.socket, split(a.peer), split(a.local))
    if who is None:
        print("not attested: no live connection of an enforced identity", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(who, indent=2))


if __name__ == "__main__":
    main()
