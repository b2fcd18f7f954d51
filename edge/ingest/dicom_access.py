"""Who may talk to the DICOM listener, over what, and for how long (issue 17).

- Calling AE titles: `[dicom] allowed_callers`. Empty, as on a fresh install, refuses every
  caller (`CALLER_NOT_ALLOWED`): failing closed, because accepting "the first modality seen"
  would trust whoever reaches the port first on a clinic network, and an installer standing at
  the modality sees the rejection at once. Each refused title is recorded with its address in
  `<data dir>/dicom-callers-seen.json`; `edge doctor` names them with the exact line to add.
  Connections refused for their address or a failed TLS handshake are recorded there too, and
  doctor warns about them for a day (a modality outside `allowed_networks`, or with the wrong
  certificate, reaches nothing and is otherwise only in the log).
  `["*"]` accepts any title, a choice the log warns about at every start.
- Addresses: `[dicom] allowed_networks` (addresses or CIDR networks); others are closed before
  any DICOM byte or TLS handshake is exchanged (`CALLER_ADDRESS_NOT_ALLOWED`).
- DICOM TLS: with `tls_cert` and `tls_key` the listener speaks TLS only (TLS 1.2 or newer);
  with `tls_ca` a caller must also present a certificate that CA signed. A handshake that fails
  or stalls past the ACSE timeout is dropped (`DICOM_TLS_REFUSED`): pynetdicom shakes hands in
  its accepting thread, so a caller that never finishes must not hold it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from edge.clock import utc_after, utc_now
from edge.config import DicomSettings, Settings
from edge.errors import Code, EdgeError
from edge.store.files import write_atomically

log = logging.getLogger(__name__)

ANY_CALLER = "*"
SEEN_FILE = "dicom-callers-seen.json"
NOBODY = "\\"
"""A calling AE title no association can carry (a backslash is not allowed in one): what
pynetdicom is given to check against when no title is allowed."""
MAX_SEEN = 64
REWRITE_S = 60.0
RECENT_S = 24 * 3600.0
"""How long doctor keeps warning about a refused address or TLS handshake (a port scan once a
month must not leave it warning for ever; a modality that keeps trying is seen every day)."""
CONNECTION_REFUSALS = {
    "address": "closed: not in [dicom] allowed_networks (add its address or network if it is yours)",
    "tls": "TLS handshake failed (its certificate is not signed by [dicom] tls_ca, or it does not speak TLS)",
}


def connection_key(kind: str, address: str) -> str:
    """The file's key for a refused connection: never an AE title (a backslash cannot be in one)."""
    return f"{NOBODY}{kind} {address}"


class CallerPolicy:
    """The allow-lists of `[dicom]`, as the listener and its server ask them."""

    def __init__(self, config: DicomSettings) -> None:
        titles = [title.strip() for title in config.allowed_callers]
        self.any_title = ANY_CALLER in titles
        self.titles = frozenset(title for title in titles if title != ANY_CALLER)
        self.networks = [ipaddress.ip_network(net, strict=False) for net in config.allowed_networks]

    def title_allowed(self, calling: str) -> bool:
        return self.any_title or calling.strip() in self.titles

    def pynetdicom_titles(self) -> list[str]:
        """`require_calling_aet` for pynetdicom, which reads an empty list as "anyone"."""
        if self.any_title:
            return []
        return sorted(self.titles) or [NOBODY]

    def address_allowed(self, host: str) -> bool:
        if not self.networks:
            return True
        try:
            address = ipaddress.ip_address(host.split("%", maxsplit=1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


class SeenCallers:
    """Calling AE titles refused for not being allowed: title -> address, count, first and last
    time. Device configuration, not patient data; kept to `MAX_SEEN` titles."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / SEEN_FILE
        self._lock = threading.Lock()
        self._written: dict[str, float] = {}  # title -> when last written (monotonic)
        self._pending: dict[str, int] = {}  # refusals not yet counted in the file

    def read(self) -> dict[str, dict[str, Any]]:
        try:
            value = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def record(self, title: str, address: str) -> None:
        """Count a refused calling AE title."""
        self._count(title, address, None)

    def record_connection(self, kind: str, address: str) -> None:
        """Count a connection refused before any title was read (`kind`: "address" or "tls")."""
        self._count(connection_key(kind, address), address, kind)

    def _count(self, title: str, address: str, kind: str | None) -> None:
        """The file is written at most once a minute per key, so a caller retrying in a loop
        costs no disk writes."""
        with self._lock:
            self._pending[title] = self._pending.get(title, 0) + 1
            last = self._written.get(title)
            if last is not None and time.monotonic() - last < REWRITE_S:
                return
            self._written[title] = time.monotonic()
            seen = self.read()
            now = utc_now()
            entry = seen.get(title) or {"first": now, "count": 0}
            count = int(entry.get("count", 0)) + self._pending.pop(title)
            entry.update(address=address, last=now, count=count)
            if kind is not None:
                entry["kind"] = kind
            seen[title] = entry
            if len(seen) > MAX_SEEN:  # a scanner cycling titles must not grow the file without end
                for stale in sorted(seen, key=lambda name: str(seen[name].get("last")))[
                    : len(seen) - MAX_SEEN
                ]:
                    del seen[stale]
            try:
                write_atomically(self.path, json.dumps(seen, indent=1, sort_keys=True).encode())
            except (OSError, EdgeError) as exc:
                log.warning("the refused caller %r could not be recorded: %s", title, exc)


def allow_line(titles: list[str], config_file: Path | None) -> str:
    """The exact setting that allows these callers, for doctor and the log."""
    where = config_file or "/etc/edge/edge.toml"
    return f"[dicom] allowed_callers = {json.dumps(sorted(titles))} in {where}"


def tls_context(config: DicomSettings) -> ssl.SSLContext | None:
    """The server side of DICOM TLS, or None when no certificate is configured."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
        if config.tls_ca is not None:
            context.load_verify_locations(cafile=str(config.tls_ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise EdgeError(
            Code.CONFIG_INVALID, f"[dicom] TLS certificate, key or CA cannot be loaded: {exc}"
        ) from exc
    return context


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, refusing addresses outside the allow-list before the TLS
    handshake, and bounding the handshake in time."""

    policy: CallerPolicy
    handshake_s: float
    seen: SeenCallers | None = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        if not self.policy.address_allowed(str(address[0])):
            return client, address  # not wrapped: verify_request closes it
        context = self.ssl_context
        if context is None:
            return client, address
        client.settimeout(self.handshake_s)
        try:
            wrapped = context.wrap_socket(client, server_side=True)
        except (OSError, ValueError) as exc:
            client.close()
            error = EdgeError(
                Code.DICOM_TLS_REFUSED, f"connection from {address[0]} dropped: TLS handshake failed ({exc})"
            )
            log.warning("%s", error.one_line())
            if self.seen is not None:
                self.seen.record_connection("tls", str(address[0]))
            raise OSError(str(exc)) from exc  # socketserver drops the connection quietly
        wrapped.settimeout(None)
        return wrapped, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0]) if isinstance(client_address, tuple) else str(client_address)
        if self.policy.address_allowed(host):
            return True
        error = EdgeError(
            Code.CALLER_ADDRESS_NOT_ALLOWED,
            f"connection from {host} closed: not in [dicom] allowed_networks",
        )
        log.warning("%s", error.one_line())
        if self.seen is not None:
            self.seen.record_connection("address", host)
        return False


def start_server(
    ae: Any, config: DicomSettings, policy: CallerPolicy, handlers: list[Any], seen: SeenCallers | None = None
) -> GuardedServer:
    """`AE.start_server(block=False)`, with our server class (pynetdicom's `start_server` takes
    none; `make_server` does); refused connections are recorded in `seen`."""
    server = ae.make_server(
        (config.bind, config.port),
        ssl_context=tls_context(config),
        evt_handlers=handlers,
        server_class=GuardedServer,
    )
    server.policy = policy
    server.seen = seen
    server.handshake_s = float(ae.acse_timeout or 30)
    thread = threading.Thread(target=server.serve_forever, name="DicomListener", daemon=True)
    thread.start()
    ae._servers.append(server)  # as AE.start_server does, so AE.shutdown stops it
    return server


__all__ = [
    "ANY_CALLER",
    "CallerPolicy",
    "GuardedServer",
    "SeenCallers",
    "allow_line",
    "start_server",
    "tls_context",
]


def callers_verdict(settings: Settings) -> tuple[str, str]:
    """`(level, sentence)` about who may send: pass, or warn with the exact setting line that
    would allow the modalities the listener refused (shown by `edge doctor` and the TUI)."""
    config = settings.dicom
    if ANY_CALLER in config.allowed_callers:
        return "warn", 'any calling AE title may send ([dicom] allowed_callers = ["*"])'
    seen = SeenCallers(settings.data_dir).read()
    connections = _recent_connection_refusals(seen, CallerPolicy(config))
    refused = {
        title: entry
        for title, entry in seen.items()
        if "kind" not in entry and title not in config.allowed_callers  # connections have a kind
    }
    if not refused and not connections:
        if not config.allowed_callers:
            return "warn", "no calling AE title is allowed yet: every modality is refused"
        return "pass", f"allowed: {', '.join(config.allowed_callers)}"
    sentences = list(connections)
    if refused:
        named = "; ".join(
            f"{title!r} from {entry.get('address')} ({entry.get('count')}x, last {entry.get('last')})"
            for title, entry in sorted(refused.items())
        )
        allow = allow_line(sorted({*config.allowed_callers, *refused}), settings.config_file)
        sentences.insert(0, f"refused (not allowed): {named}. If they are yours, set {allow}")
    return "warn", ". ".join(sentences)


def _recent_connection_refusals(seen: dict[str, dict[str, Any]], policy: CallerPolicy) -> list[str]:
    """Connections refused in the last `RECENT_S` for their address (unless allowed now) or TLS."""
    since = utc_after(-RECENT_S)
    sentences = []
    for entry in sorted(seen.values(), key=lambda entry: str(entry.get("last"))):
        kind, address = entry.get("kind"), str(entry.get("address"))
        if kind not in CONNECTION_REFUSALS or str(entry.get("last")) < since:
            continue
        if kind == "address" and policy.address_allowed(address):
            continue  # allowed since
        sentences.append(
            f"connections from {address} ({entry.get('count')}x, last {entry.get('last')}) "
            f"{CONNECTION_REFUSALS[kind]}"
        )
    return sentences
