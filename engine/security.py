"""CURVE keys and the rule that a socket bound beyond loopback must use them."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import zmq


class SecurityError(RuntimeError):
    """Refused: a non-loopback bind without CURVE, or missing / unreadable keys."""


class CurveKeys(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Paths of the key files written by `engine.cluster keys` (zmq.auth certificate format)."""

    dir: str  # holds server.key(_secret) and client.key(_secret)


def is_loopback(endpoint: str) -> bool:
    """True for inproc/ipc and tcp endpoints bound to a loopback address."""
    if endpoint.startswith(("inproc://", "ipc://")):
        return True
    host = urlsplit(endpoint).hostname or ""
    if host in ("localhost",):
        return True
    if host in ("*", "0.0.0.0", "::", ""):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


def check_bind(endpoint: str, keys: CurveKeys | None) -> None:
    if keys is None and not is_loopback(endpoint):
        raise SecurityError(
            f"refusing to bind {endpoint} without CURVE: it is not a loopback address. "
            'Run `python -m engine.cluster keys DIR` and set `curve = {dir = "DIR"}` in the spec.'
        )


def write_keys(directory: str | Path) -> Path:
    """Create server and client key pairs under `directory` (refuses to overwrite)."""
    import zmq.auth

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name in ("server", "client"):
        if (d / f"{name}.key_secret").exists():
            raise SecurityError(f"{d / (name + '.key_secret')} exists; not overwriting keys")
    for name in ("server", "client"):
        zmq.auth.create_certificates(str(d), name)
    for secret in d.glob("*.key_secret"):
        secret.chmod(0o600)
    return d


def _load(path: Path) -> tuple[bytes, bytes | None]:
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise SecurityError(f"cannot read CURVE key {path}: {exc}") from None
    return public, secret


def apply_server(sock: zmq.Socket[Any], keys: CurveKeys) -> None:
    public, secret = _load(Path(keys.dir) / "server.key_secret")
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def apply_client(sock: zmq.Socket[Any], keys: CurveKeys) -> None:
    server_public, _ = _load(Path(keys.dir) / "server.key")
    public, secret = _load(Path(keys.dir) / "client.key_secret")
    sock.curve_serverkey = server_public
    sock.curve_publickey = public
    sock.curve_secretkey = secret
