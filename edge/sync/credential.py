"""Who this device is to its hub, and how the hub says no: the credential (device id, hub URL,
the private key in its own owner-only file), enrolment with a one-time code, the check that
the hub's URL is safe to send to, and the two ways a request fails (`HubRefused`: a refusal
retrying will not fix; `HubUnavailable`: try again later). Below `client.py`, which sends the
rounds with them.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import TypeAdapter, ValidationError

from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.store.files import write_atomically
from edge.sync import protocol, signatures
from edge.sync.protocol import WireCode

log = logging.getLogger(__name__)


class HubRefused(Exception):
    """The hub answered with a refusal that retrying will not fix (4xx): its status, its wire
    code (None when the body was not the hub's refusal, e.g. a proxy's page) and its sentence."""

    def __init__(self, status: int, code: WireCode | None, message: str) -> None:
        if code is WireCode.DEVICE_REVOKED:
            # What the technician must do, first: the status line and the TUI show this sentence.
            message = f"revoked: re-enrol this device (edge sync enroll URL CODE, a new code): {message}"
        super().__init__(f"{status} {code.value}: {message}" if code else f"{status} {message}")
        self.status, self.code, self.message = status, code, message

    @classmethod
    def from_response(cls, response: httpx.Response) -> HubRefused:
        refusal = protocol.read_refusal(response.content)
        if refusal is None:  # another server's page (a proxy, a wrong URL): say what to check
            kind = response.headers.get("content-type", "no content type").split(";")[0]
            return cls(
                response.status_code,
                None,
                f"the hub URL answered HTTP {response.status_code} ({kind}), not the edge hub's"
                f" protocol: check the hub URL and any proxy on the way ({response.text[:120]!r})",
            )
        return cls(response.status_code, refusal.code, refusal.message[:300])


class HubUnavailable(Exception):
    """Connection refused, cut, timed out, or the hub answered 5xx/429: try again later."""


def check_hub_url(url: str, insecure: bool) -> None:
    """https, plain http to this machine itself (loopback: no network path to listen on, e.g. a
    local TLS tunnel or a hub on the same box), or any http when the device was enrolled with
    --insecure (a lab). Over plain http on a network anyone on the path reads the de-identified
    results and can pose as the hub to the device."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise EdgeError(Code.CONFIG_INVALID, f"the hub URL {url!r} is not a URL: {exc}") from exc
    if parsed.scheme not in ("https", "http") or not parsed.host:
        raise EdgeError(Code.CONFIG_INVALID, f"the hub URL {url!r} must be https://HOST[:PORT]")
    if parsed.scheme == "http" and not insecure and not _loopback(parsed.host):
        raise EdgeError(
            Code.HUB_URL_INSECURE,
            f"the hub URL {url} is plain http: use https, or enrol with --insecure in a lab",
        )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Credential:
    """Who this device is to its hub: its id, its hub and its private key (the key lives in its
    own owner-only file, `key_path`, written once at enrolment and never sent anywhere)."""

    hub_url: str
    device_id: str
    clock_offset: float = 0.0
    insecure: bool = False
    key: Ed25519PrivateKey | None = field(default=None, repr=False, compare=False)
    site: str | None = None
    """The site this device enrolled as (the hub's name for it; what a site profile is signed
    for); None for a device enrolled before it was kept: the settings' `site` then."""

    @staticmethod
    def path(settings: Settings) -> Path:
        return settings.data_dir / "sync" / "credential.json"

    @staticmethod
    def key_path(settings: Settings) -> Path:
        return settings.data_dir / "sync" / "device.key"

    @classmethod
    def load(cls, settings: Settings) -> Credential | None:
        try:
            data = json.loads(cls.path(settings).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or "secret" in data:
            _say_once(settings, "this device enrolled with sync protocol 1 (a shared secret): enrol it again")
            return None
        try:
            key = signatures.load_private_key(cls.key_path(settings))
            return cls(**data, key=key)
        except (OSError, ValueError, TypeError) as exc:
            _say_once(settings, f"the device's key cannot be read ({type(exc).__name__}): enrol it again")
            return None

    @classmethod
    def problem(cls, settings: Settings) -> tuple[str, str] | None:
        """Where this device enrolled and why that cannot be used (its key missing or
        unreadable, an old protocol, a damaged file), or None: never enrolled, or enrolled and
        usable. A missing key read as "no hub enrolled" everywhere (an outside-style check)."""
        try:
            data = json.loads(cls.path(settings).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            return "the enrolled hub", f"{cls.path(settings)} cannot be read ({type(exc).__name__})"
        hub = data.get("hub_url") if isinstance(data, dict) else None
        hub = hub if isinstance(hub, str) else "the enrolled hub"
        if not isinstance(data, dict) or "secret" in data:
            return hub, "this device enrolled with sync protocol 1 (a shared secret)"
        try:
            cls(**data, key=signatures.load_private_key(cls.key_path(settings)))
        except (OSError, ValueError, TypeError) as exc:
            return hub, f"the device's key {cls.key_path(settings)} cannot be read ({type(exc).__name__})"
        return None

    def save(self, settings: Settings, with_key: bool = False) -> None:
        """The credential file (never the key in it); the key file too once, at enrolment."""
        if with_key:
            if self.key is None:
                raise EdgeError(Code.CONFIG_INVALID, "no key to keep: enrol the device again")
            write_atomically(self.key_path(settings), signatures.private_pem(self.key))
        fields: dict[str, Any] = {"hub_url": self.hub_url, "device_id": self.device_id}
        fields |= {"clock_offset": self.clock_offset, "insecure": self.insecure}
        if self.site is not None:
            fields["site"] = self.site
        write_atomically(self.path(settings), json.dumps(fields, indent=1).encode())

    def headers(
        self, method: str, path: str, body: bytes, timestamp: str | None = None, nonce: str | None = None
    ) -> dict[str, str]:
        """The signed headers of one request (`path` with its query string); a fresh nonce and
        the hub's time unless given (tests give them to build replays)."""
        if self.key is None:
            raise EdgeError(Code.CONFIG_INVALID, "this credential has no key: enrol the device again")
        timestamp = timestamp or f"{time.time() + self.clock_offset:.3f}"
        nonce = nonce or secrets.token_urlsafe(24)
        message = protocol.request_to_sign(method, path, body, timestamp, nonce, self.device_id)
        return {
            protocol.HEADER_DEVICE: self.device_id,
            protocol.HEADER_PROTOCOL: str(protocol.VERSION),
            protocol.HEADER_TIMESTAMP: timestamp,
            protocol.HEADER_NONCE: nonce,
            protocol.HEADER_SIGNATURE: self.key.sign(message).hex(),
        }


_SAID: set[tuple[Path, str]] = set()


def _say_once(settings: Settings, message: str) -> None:
    """Once per process: the TUI and the health snapshot load the credential every few seconds."""
    if (settings.data_dir, message) not in _SAID:
        _SAID.add((settings.data_dir, message))
        log.error("%s", message)


Answer = TypeVar("Answer")


def hub_answer(shape: type[Answer] | TypeAdapter[Answer], response: httpx.Response) -> Answer:
    """The hub's reply in its protocol's `shape`; a 2xx reply that is not one is a hub not
    reached (`HubUnavailable`: retried, shown "offline" with why). A captive portal or a proxy's
    login page answers 200 with HTML: it crashed the sync agent, which systemd restarted every
    5 s (an outside-style check)."""
    adapter = shape if isinstance(shape, TypeAdapter) else TypeAdapter(shape)
    try:
        return adapter.validate_json(response.content)
    except ValidationError as exc:
        kind = response.headers.get("content-type", "no content type").split(";")[0]
        raise HubUnavailable(
            f"the hub URL answered HTTP {response.status_code} ({kind}) that is not the edge hub's"
            " protocol: a captive portal or a proxy's login page in the way? Check the link"
            " and the hub URL"
        ) from exc


def _hub_protocol(http: httpx.Client, hub_url: str) -> int | None:
    """The sync protocol the hub says it speaks (`/v1/health`), or None if it says none."""
    try:
        spoken = http.get(hub_url + "/v1/health", timeout=10).json().get("protocol")
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return spoken if isinstance(spoken, int) else None


def _protocol_1_enrolment(settings: Settings) -> dict[str, str] | None:
    """This device's id and shared secret under sync protocol 1, from the credential file an
    older version wrote, or None. Sent whatever hub URL it names: the upgrade asks for https,
    and a device first enrolled with http://hub.lan was enrolled afresh under the https name
    (a re-check); a hub that never knew the id ignores it, and the secret opens nothing alone
    (protocol 1 is refused everywhere now; enrolling again needs that hub's code too)."""
    try:
        data = json.loads(Credential.path(settings).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("secret"), str):
        return None
    if not isinstance(data.get("device_id"), str):
        return None
    return {"device_id": data["device_id"], "secret": data["secret"]}


def enroll(
    settings: Settings, hub_url: str, code: str, device_name: str, http: httpx.Client, insecure: bool = False
) -> Credential:
    """Make this device's key pair and register its public half with the one-time code; keep
    the private half in an owner-only file (it never leaves the device)."""
    hub_url = hub_url.rstrip("/")
    check_hub_url(hub_url, insecure)
    key = signatures.new_device_key()
    request: dict[str, Any] = {"code": code, "device_name": device_name, "site": settings.site}
    request["public_key"] = signatures.public_hex(key)
    previous = _protocol_1_enrolment(settings)
    if previous is not None:  # the same device to the hub: its results and reviews stay its own
        request["previous"] = previous
    request["proof"] = key.sign(protocol.enrollment_to_sign(request)).hex()
    body = protocol.EnrollRequest(**request).model_dump_json(exclude_none=True)
    response = http.post(
        hub_url + "/v1/enroll",
        content=body,
        headers={"Content-Type": "application/json", protocol.HEADER_PROTOCOL: str(protocol.VERSION)},
    )
    if response.status_code != 200:
        spoken = _hub_protocol(http, hub_url)
        if spoken is not None and spoken < protocol.VERSION:  # it said "Extra inputs are not permitted"
            raise EdgeError(
                Code.CONFIG_INVALID,
                f"enrolment refused: the hub at {hub_url} speaks sync protocol {spoken}, this device"
                f" {protocol.VERSION}: upgrade the hub first, then enrol this device",
            )
        raise EdgeError(Code.CONFIG_INVALID, f"enrolment refused: {HubRefused.from_response(response)}")
    try:
        reply = hub_answer(protocol.EnrollResponse, response)
    except HubUnavailable as exc:
        raise EdgeError(Code.CONFIG_INVALID, f"enrolment failed: {exc}") from exc
    offset = reply.hub_time - time.time()
    credential = Credential(hub_url, reply.device_id, offset, insecure, key, site=settings.site)
    credential.save(settings, with_key=True)
    return credential
