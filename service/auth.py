"""API keys, scopes and tenants.

Keys live in `REDLINE_API_KEYS_FILE`, one per line: `<sha256 hex of the key> <tenant> <scope>[,<scope>...]`
(keys are never stored in clear), then an optional `# comment`. Clients send `Authorization: Bearer <key>`.

A tenant owns its outputs: inside Redis its output ids are `tenant~id` and its deployed-model names
`tenant~model` ('~' is allowed in neither public name, so nothing collides), so ids, windows, counters
and metrics never mix between tenants and another tenant's output is simply not found. The open (no
keys) mode is one tenant, `default`, whose names are stored unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .errors import ConfigError, Forbidden, NotFound, Unauthorized

log = logging.getLogger(__name__)

SCOPES = ("outputs:write", "labels:write", "read")
# Characters of a new key kept in its line's comment ("rl_" and four of its 43 random ones).
KEY_HINT = 7
DEFAULT_TENANT = "default"
TENANT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"


# Hex digits of a key's SHA-256 that name it in what it wrote (`labeled_by`) and in `redline keys list`:
# enough to tell a tenant's keys apart, and no secret (the key itself is 256 random bits).
KEY_ID_HEX = 12


def tenant_of(internal_id: str) -> str:
    """The tenant an internal output id belongs to (as store_scripts.PENDING's tenant_of reads it)."""
    tenant, sep, _ = internal_id.partition("~")
    return tenant if sep else DEFAULT_TENANT


@dataclass(frozen=True)
class Principal:
    """Who is calling: their tenant and scopes, and which key (None without keys: the open mode)."""

    tenant: str
    scopes: frozenset[str]
    key_id: str | None = None

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"this API key lacks the {scope!r} scope")

    # Tenant namespacing: the one place public names become internal ones and back.
    def output_id(self, public_id: str) -> str:
        return self._internal(public_id, "output with id")

    def public_id(self, internal_id: str) -> str:
        return internal_id if self.tenant == DEFAULT_TENANT else internal_id.split("~", 1)[1]

    def model(self, public_model: str) -> str:
        return self._internal(public_model, "scores for model")

    def _internal(self, public: str, what: str) -> str:
        # No valid public name holds '~' (validation refuses it where names are created), but paths and
        # query parameters reach here unvalidated: from the default tenant, whose names are unprefixed,
        # `team-a~x1` would name team-a's output. Such a name names nothing.
        if "~" in public:
            raise NotFound(f"no {what} {public!r}")
        return public if self.tenant == DEFAULT_TENANT else f"{self.tenant}~{public}"

    def owns(self, internal_name: str) -> bool:
        """Whether an internal output id or model name belongs to this tenant."""
        if self.tenant == DEFAULT_TENANT:
            return "~" not in internal_name
        return internal_name.startswith(f"{self.tenant}~")

    def public_model(self, internal_model: str) -> str:
        return internal_model if self.tenant == DEFAULT_TENANT else internal_model.split("~", 1)[1]


OPEN = Principal(DEFAULT_TENANT, frozenset(SCOPES))


# How often a process looks at the keys file for changes: a revoked key stops working within this.
RELOAD_CHECK_S = 1.0


class KeyStore:
    """The keys file, read again when it changes, so keys are added and revoked without a restart.

    Each API process checks the file's identity (inode, size, mtime) at most every RELOAD_CHECK_S.
    A changed file that does not parse is refused: the keys in force stay, and the error is logged,
    since an API that stopped authenticating anyone over a typo would be an outage. Lookups compare
    digests in constant time.
    """

    def __init__(self, entries: dict[str, Principal], path: Path | None = None,
                 seen: tuple[int, int, int] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.entries = entries
        self.path, self.clock = path, clock
        self._checked = clock()
        self._seen = seen  # the identity of the file `entries` came from

    @classmethod
    def load(cls, path: Path) -> KeyStore:
        """The store for `path`; a file that cannot be read or parsed is a ConfigError (at start-up)."""
        seen = _identity(path)  # before reading: a change made meanwhile is then seen as one
        return cls(_parse(path), path, seen)

    def authenticate(self, header: str | None) -> Principal:
        self._reload_if_changed()
        # The scheme is case-insensitive (RFC 7235 2.1): some clients and proxies send "bearer".
        scheme, _, token = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        for known, principal in self.entries.items():
            if hmac.compare_digest(known, digest):
                return principal
        raise Unauthorized("unknown API key")

    def _reload_if_changed(self) -> None:
        if self.path is None or self.clock() - self._checked < RELOAD_CHECK_S:
            return
        self._checked = self.clock()
        seen = _identity(self.path)
        if seen == self._seen:
            return
        self._seen = seen  # a refused version is not parsed again until it changes
        try:
            entries = _parse(self.path)
        except ConfigError as exc:
            log.error("the keys file changed but is refused; keys in force stay (%d): %s",
                      len(self.entries), exc.message)
            return
        self.entries = entries  # one reference swap: requests on other threads see the old or the new set
        log.warning("keys file %s reloaded; keys in force: %d", self.path, len(entries))


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _parse(path: Path) -> dict[str, Principal]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: a Windows editor's byte-order mark
    except OSError as exc:
        raise ConfigError(f"REDLINE_API_KEYS_FILE {path}: {exc.strerror}") from None
    entries: dict[str, Principal] = {}
    for n, line in enumerate(lines, start=1):
        parts, _ = _fields(line)
        if not parts:
            continue
        if len(parts) != 3 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            raise ConfigError(f"{path}:{n}: expected '<sha256 hex> <tenant> <scope>[,<scope>...]'")
        digest, tenant, scopes = parts
        if not re.fullmatch(TENANT_PATTERN, tenant):
            raise ConfigError(f"{path}:{n}: tenant {tenant!r} must match {TENANT_PATTERN}")
        wanted = frozenset(scopes.split(","))
        if not wanted <= set(SCOPES):
            raise ConfigError(f"{path}:{n}: unknown scope(s) {', '.join(sorted(wanted - set(SCOPES)))}; "
                              f"known: {', '.join(SCOPES)}")
        entries[digest] = Principal(tenant, wanted, digest[:KEY_ID_HEX])
    return entries


def _fields(line: str) -> tuple[list[str], str]:
    """A keys-file line -> its fields (`<sha256> <tenant> <scopes>`, or none) and its comment."""
    entry, _, comment = line.partition("#")
    return entry.split(), comment.strip()


def create_key(path: Path, tenant: str, scopes: list[str], note: str = "") -> str:
    """Append a new key's line to `path` and return the key (shown once, never stored). The line ends
    with a comment (the key's first characters, when it was made, `note`), so the key in someone's
    hands can be matched to its line; the hash alone says nothing to a person."""
    if not re.fullmatch(TENANT_PATTERN, tenant):
        raise ConfigError(f"tenant {tenant!r} must match {TENANT_PATTERN}")
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise ConfigError(f"scopes must be among {', '.join(SCOPES)}")
    if not note.isprintable():  # a newline would split the key's line in two
        raise ConfigError("the note must be one line of printable text")
    key = "rl_" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    comment = f"key {key[:KEY_HINT]}..., created {created}" + (f": {note}" if note else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(f"{digest} {tenant} {','.join(sorted(set(scopes)))}  # {comment}\n")
    path.chmod(0o600)
    return key


def describe_keys(path: Path) -> list[str]:
    """One line per key in force: tenant, scopes, its comment and its key id (`labeled_by`); never the hash."""
    _parse(path)  # refuse a file the API would refuse
    rows = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        parts, comment = _fields(line)
        if parts:  # a line _parse accepted: hash, tenant, scopes
            rows.append(f"{parts[1]}\t{parts[2]}\t{comment}\tid {parts[0][:KEY_ID_HEX]}")
    return rows


def revoke_key(path: Path, key: str) -> int:
    """Remove the line of `key` from `path`; returns how many lines went (a ConfigError if none).
    Written to a new file then renamed over the old one, so an API process reading it meanwhile
    sees the whole old file or the whole new one; each notices the change within RELOAD_CHECK_S."""
    digest = hashlib.sha256(key.strip().encode()).hexdigest()
    _parse(path)
    lines = path.read_text(encoding="utf-8-sig").splitlines(keepends=True)
    kept = [line for line in lines if _fields(line)[0][:1] != [digest]]
    if len(kept) == len(lines):
        raise ConfigError(f"no such key in {path} (nothing changed)")
    fresh = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fresh.write_text("".join(kept), encoding="utf-8")
    fresh.chmod(0o600)
    os.replace(fresh, path)
    return len(lines) - len(kept)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
