"""Keys and tokens for ``/score`` and ``/v2``: the keys file, and the commands that write it or mint a token.

    scorehost keys generate --keys_file F               both keys, new (refuses to overwrite without --force)
    scorehost keys regen --key primary|secondary --keys_file F    one key new, the other kept
    scorehost keys show --keys_file F                    the keys, as get_keys() gives them (JSON)
    scorehost token issue --ttl 3600 [--subject S]       an HS256 JWT signed with token_secret

The keys file is what ``get_keys()`` returns, as JSON: ``{"primaryKey": ..., "secondaryKey": ...}``.
It is written atomically (a temporary file in the same folder, fsync, rename), with mode 0600,
so a server watching it (``keys_file``) reads either the old keys or the new ones, never half a
file. A key is 32 random bytes from :mod:`secrets`, URL-safe base64 (43 characters).

Rotation without a failed request: ``regen --key secondary``, move the clients to the secondary
key, ``regen --key primary``; the server re-reads the file within a second (or on SIGHUP).

The token secret is read from ``SCOREHOST_TOKEN_SECRET`` (or ``--secret_file``), never from a flag:
command lines are visible to every user of the machine. No key or secret is ever logged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from server.errors import SettingsError

KEY_BYTES = 32
FILE_KEYS = {"primary": "primaryKey", "secondary": "secondaryKey"}
MAX_FILE_BYTES = 64 * 1024
MIN_TOKEN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash


@dataclass(frozen=True)
class Keys:
    """The two keys; either may be absent, not both (a file with neither is refused)."""

    primary: str | None
    secondary: str | None

    def as_json(self) -> dict[str, str | None]:
        return {"primaryKey": self.primary, "secondaryKey": self.secondary}

    def __repr__(self) -> str:  # never the keys themselves
        return f"Keys(primary={'set' if self.primary else None}, secondary={'set' if self.secondary else None})"


def generate_key() -> str:
    return secrets.token_urlsafe(KEY_BYTES)


def parse_keys(data: Any, where: str) -> Keys:
    """The keys of a parsed keys file; SettingsError (naming ``where``, never a value) if unusable."""
    if not isinstance(data, dict):
        raise SettingsError(f'{where}: expected a JSON object {{"primaryKey": ..., "secondaryKey": ...}}')
    unknown = sorted(set(data) - set(FILE_KEYS.values()))
    if unknown:
        raise SettingsError(f"{where}: unknown fields {unknown} (expected primaryKey and secondaryKey)")
    found: dict[str, str | None] = {}
    for name in FILE_KEYS.values():
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            raise SettingsError(f"{where}: {name} must be a string")
        if value is not None and (value != value.strip() or any(ord(c) < 0x21 or ord(c) > 0x7E for c in value)):
            raise SettingsError(f"{where}: {name} must be printable ASCII without spaces")
        found[name] = value or None
    keys = Keys(found["primaryKey"], found["secondaryKey"])
    if keys.primary is None and keys.secondary is None:
        raise SettingsError(f"{where}: holds no key (primaryKey and secondaryKey are both empty)")
    return keys


def read_secret_json(path: str, limit: int, label: str) -> Any:
    """A small JSON file holding secrets (keys, a JWKS), read without allocating past ``limit``.

    Raises SettingsError with one line, which never quotes the file's text (it holds secrets).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        raise SettingsError(f"{label} {path}: cannot read it: {exc.strerror or exc}") from None
    if len(raw) > limit:
        raise SettingsError(f"{label} {path}: larger than {limit} bytes")
    try:
        return json.loads(raw)
    except ValueError:
        # NOTE: not the decoder's message: it quotes the text around the error, i.e. a key.
        raise SettingsError(f"{label} {path}: not valid JSON") from None


def read_keys(path: str) -> Keys:
    """The keys in ``path``; SettingsError with one line if it cannot be used."""
    return parse_keys(read_secret_json(path, MAX_FILE_BYTES, "keys file"), f"keys file {path}")


def write_keys(path: str, keys: Keys) -> None:
    """Replace ``path`` with ``keys`` atomically, mode 0600."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".keys-", suffix=".tmp", dir=folder)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(keys.as_json(), indent=2).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself, on disk
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# --- tokens ---------------------------------------------------------------------------------------
def issue_token(
    secret: str,
    ttl_s: float,
    *,
    subject: str | None = None,
    issuer: str | None = None,
    audience: str | None = None,
    now: float | None = None,
) -> tuple[str, datetime, datetime]:
    """An HS256 JWT valid for ``ttl_s``: (token, refresh_by, expires_on). ``refresh_by`` is half-way
    through its life: ask for a new token after it (Azure ML's ``get_token()`` gives the same pair)."""
    import jwt

    if len(secret.encode()) < MIN_TOKEN_SECRET_BYTES:
        raise SettingsError(f"token_secret must be at least {MIN_TOKEN_SECRET_BYTES} bytes long")
    if ttl_s <= 0:
        raise SettingsError("--ttl must be > 0")
    issued = int(time.time() if now is None else now)
    expires = issued + max(1, round(ttl_s))
    claims: dict[str, Any] = {"iat": issued, "nbf": issued, "exp": expires, "jti": secrets.token_urlsafe(12)}
    if subject:
        claims["sub"] = subject
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience.split(",")[0].strip()
    token = jwt.encode(claims, secret, algorithm="HS256")
    refresh_by = issued + (expires - issued) // 2
    return token, datetime.fromtimestamp(refresh_by, UTC), datetime.fromtimestamp(expires, UTC)


# --- commands -------------------------------------------------------------------------------------
def _keys_file_arg(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    default = env.get("SCOREHOST_KEYS_FILE")
    parser.add_argument(
        "--keys_file", "--keys-file", dest="keys_file", default=default, required=default is None,
        help="the JSON keys file (default: SCOREHOST_KEYS_FILE)",
    )  # fmt: skip


def keys_main(argv: list[str], env: Mapping[str, str] | None = None) -> int:
    """``scorehost keys generate|regen|show``."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="scorehost keys", description="Write or show the keys file of key auth.")
    sub = parser.add_subparsers(dest="action", required=True)
    gen = sub.add_parser("generate", help="write a keys file with two new keys")
    _keys_file_arg(gen, env)
    gen.add_argument("--force", action="store_true", help="replace an existing file")
    regen = sub.add_parser("regen", help="replace one key, keep the other")
    _keys_file_arg(regen, env)
    regen.add_argument("--key", choices=tuple(FILE_KEYS), required=True)
    show = sub.add_parser("show", help="print the keys as JSON (get_keys())")
    _keys_file_arg(show, env)
    args = parser.parse_args(argv)
    path: str = args.keys_file
    try:
        if args.action == "generate":
            if os.path.exists(path) and not args.force:
                raise SettingsError(f"keys file {path} exists: use `regen`, or --force to replace both keys")
            write_keys(path, Keys(generate_key(), generate_key()))
            print(f"wrote {path} (mode 0600): new primary and secondary keys", file=sys.stderr)
        elif args.action == "regen":
            old = read_keys(path)
            new = Keys(generate_key(), old.secondary) if args.key == "primary" else Keys(old.primary, generate_key())
            write_keys(path, new)
            print(f"wrote {path} (mode 0600): new {args.key} key, the other kept", file=sys.stderr)
        else:
            print(json.dumps(read_keys(path).as_json()))
    except SettingsError as exc:
        print(f"scorehost keys: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"scorehost keys: {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def token_main(argv: list[str], env: Mapping[str, str] | None = None) -> int:
    """``scorehost token issue``: an HS256 token signed with the token secret, printed as JSON
    ``{"token": ..., "refresh_by": ..., "expires_on": ...}`` (times in ISO 8601, UTC)."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="scorehost token", description="Mint a JWT for token auth (HS256).")
    sub = parser.add_subparsers(dest="action", required=True)
    issue = sub.add_parser("issue", help="print a new token and the time to refresh it by")
    issue.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds (default 3600)")
    issue.add_argument("--subject", help="the sub claim")
    issue.add_argument("--secret_file", "--secret-file", dest="secret_file",
                       help="file holding the secret (default: SCOREHOST_TOKEN_SECRET)")  # fmt: skip
    issue.add_argument("--issuer", default=env.get("SCOREHOST_TOKEN_ISSUER"), help="default SCOREHOST_TOKEN_ISSUER")
    issue.add_argument(
        "--audience", default=env.get("SCOREHOST_TOKEN_AUDIENCE"), help="default SCOREHOST_TOKEN_AUDIENCE"
    )
    args = parser.parse_args(argv)
    try:
        if args.secret_file:
            try:
                with open(args.secret_file, encoding="utf-8") as f:
                    secret = f.read().strip()
            except OSError as exc:
                raise SettingsError(f"{args.secret_file}: {exc.strerror or exc}") from None
        else:
            secret = env.get("SCOREHOST_TOKEN_SECRET", "")
        if not secret:
            raise SettingsError("no token secret: set SCOREHOST_TOKEN_SECRET or pass --secret_file")
        token, refresh_by, expires = issue_token(
            secret, args.ttl, subject=args.subject, issuer=args.issuer, audience=args.audience
        )
    except SettingsError as exc:
        print(f"scorehost token: {exc}", file=sys.stderr)
        return 2
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    print(json.dumps({"token": token, "refresh_by": refresh_by.strftime(stamp), "expires_on": expires.strftime(stamp)}))
    return 0
