"""Who may call ``/score`` and ``/v2``: keys and JWTs (``auth_mode``; docs/security.md).

    auth = Authenticator.from_settings(settings)   # SettingsError if the mode cannot work (exit 2)
    auth.check(authorization_header_or_None)        # returns, or raises Unauthorized (401)
    auth.watch(loop)                                # re-read keys_file / token_jwks_file when they change
    auth.reload()                                   # re-read them now (SIGHUP)

Keys: ``Authorization: Bearer <key>`` (the scheme in any case, as the platform sends it) must be
the primary or the secondary key. Both are compared, always, with :func:`hmac.compare_digest`: the
time taken says nothing about a key's content (at most whether the token has a key's length, which
is no secret: every generated key has 43 characters).

Tokens: a JWT whose ``alg`` is on the allow-list (``token_algorithms``; ``none`` never is),
signed with ``token_secret`` (HS*) or a key of the JWKS file (RS*/ES*/PS*, picked by ``kid``, and
only for the algorithms its key type allows), with ``exp`` required and ``exp``/``nbf`` checked with
``token_leeway_s`` of leeway, and ``iss``/``aud`` checked when configured. A verified token is
remembered (by digest) until it expires, so a client that reuses one pays for its signature once;
the memory is dropped whenever keys are re-read.

Files are re-read when they change (a ``stat`` per file every second, on the event loop: a
Kubernetes Secret volume's symlink swap counts as a change) and on SIGHUP. A file that cannot be
used then (half-written, bad JSON, no key) is logged and the keys in force stay: requests never
see a gap. No key, secret or token ever reaches a log line or an error message.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

import jwt

from server.errors import SettingsError, Unauthorized
from server.keys import MIN_TOKEN_SECRET_BYTES, Keys, read_keys, read_secret_json
from server.settings import Settings

logger = logging.getLogger("scorehost.auth")

POLL_S = 1.0  # how often watched files are stat()ed
MAX_JWKS_BYTES = 1024 * 1024
TOKEN_CACHE_SIZE = 4096
_BEARER = b"bearer"
_KEY_FAMILY = {"HS": "oct", "RS": "RSA", "PS": "RSA", "ES": "EC"}
_INVALID = 'Bearer error="invalid_token", error_description="{}"'

_Signature = tuple[int, int, int, int, int]
_Jwk = tuple[Any, str, str | None]  # the public key, its kty, the alg it declares


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class _Watched:
    """A file re-read when its ``stat`` changes."""

    def __init__(self, path: str, load: Callable[[], None]) -> None:
        self.path = path
        self.load = load
        self.signature = self._stat()

    def _stat(self) -> _Signature | None:
        try:
            st = os.stat(self.path)  # follows symlinks: a Secret volume's swap changes the inode
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def poll(self, force: bool = False) -> None:
        signature = self._stat()
        if signature == self.signature and not force:
            return
        self.signature = signature
        self.load()


class KeyChecker:
    """The two keys (an absent key is random bytes that nobody knows)."""

    def __init__(self, keys: Keys) -> None:
        self.pair = self._pair(keys)

    @staticmethod
    def _pair(keys: Keys) -> tuple[bytes, bytes]:
        def one(key: str | None) -> bytes:
            return key.encode() if key else secrets.token_urlsafe(32).encode()

        return one(keys.primary), one(keys.secondary)

    def replace(self, keys: Keys) -> None:
        self.pair = self._pair(keys)  # one reference swap: a request sees the old pair or the new

    def matches(self, token: bytes) -> bool:
        first, second = self.pair
        # NOTE: `|`, not `or`: both comparisons always run.
        return hmac.compare_digest(token, first) | hmac.compare_digest(token, second)


class TokenVerifier:
    """JWT verification with an allow-list of algorithms, issuer, audience, exp/nbf and leeway."""

    def __init__(
        self,
        *,
        secret: bytes | None,
        jwks: dict[str, Any] | None,
        algorithms: list[str],
        issuer: str | None,
        audience: list[str] | None,
        leeway_s: float,
    ) -> None:
        self.secret = secret
        self.algorithms = frozenset(algorithms) - {"none"}
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s
        self.jwks: dict[str, _Jwk] = {}
        self.unnamed: list[_Jwk] = []  # keys without a kid
        self.cache: dict[bytes, float] = {}  # token digest -> exp
        if jwks is not None:
            self.set_jwks(jwks, "token_jwks_file")

    def set_jwks(self, data: dict[str, Any], where: str) -> None:
        named: dict[str, _Jwk] = {}
        unnamed: list[_Jwk] = []
        items = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise SettingsError(f'{where}: expected a JWKS document {{"keys": [...]}}')
        for item in items:
            if not isinstance(item, dict) or item.get("use", "sig") != "sig":
                continue
            if item.get("kty") == "oct" or "d" in item:
                raise SettingsError(f"{where}: holds a secret or private key; a JWKS file holds public keys only")
            try:
                parsed = jwt.PyJWK(item)
            except jwt.PyJWTError as exc:
                raise SettingsError(f"{where}: a key cannot be used: {exc}") from None
            declared = item.get("alg")
            key: _Jwk = (parsed.key, parsed.key_type or "", declared if isinstance(declared, str) else None)
            kid = item.get("kid")
            if isinstance(kid, str) and kid:
                named[kid] = key
            else:
                unnamed.append(key)
        if not named and not unnamed:
            raise SettingsError(f"{where}: holds no signing key")
        self.jwks, self.unnamed = named, unnamed
        self.cache = {}

    def _key(self, header: dict[str, Any], alg: str) -> Any:
        family = _KEY_FAMILY.get(alg[:2])
        if family == "oct":
            if self.secret is None:
                raise Unauthorized("Invalid token: HMAC-signed tokens are not accepted.", challenge=_challenge("alg"))
            return self.secret
        kid = header.get("kid")
        if isinstance(kid, str) and kid in self.jwks:
            jwk = self.jwks[kid]
        elif kid is None and len(self.unnamed) + len(self.jwks) == 1:
            jwk = (self.unnamed or list(self.jwks.values()))[0]
        else:
            raise Unauthorized("Invalid token: unknown signing key.", challenge=_challenge("key"))
        key, key_type, declared = jwk
        if key_type != family or declared not in (None, alg):
            raise Unauthorized("Invalid token: algorithm does not match the key.", challenge=_challenge("alg"))
        return key

    def verify(self, token: bytes) -> None:
        digest = _digest(token)
        exp = self.cache.get(digest)
        if exp is not None:
            if time.time() < exp + self.leeway_s:
                return
            del self.cache[digest]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("Invalid token: malformed.", challenge=_challenge("malformed")) from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise Unauthorized("Invalid token: algorithm not allowed.", challenge=_challenge("alg"))
        key = self._key(header, alg)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Token expired.", challenge=_INVALID.format("The token expired")) from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("Invalid token: not valid yet (nbf).", challenge=_challenge("nbf")) from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("Invalid token: wrong audience.", challenge=_challenge("aud")) from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("Invalid token: wrong issuer.", challenge=_challenge("iss")) from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"Invalid token: no {exc.claim} claim.", challenge=_challenge("claim")) from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("Invalid token: bad signature.", challenge=_challenge("signature")) from None
        except jwt.PyJWTError:
            raise Unauthorized("Invalid token.", challenge=_challenge("token")) from None
        if len(self.cache) >= TOKEN_CACHE_SIZE:
            self.cache.clear()
        self.cache[digest] = float(claims["exp"])


def _challenge(what: str) -> str:
    text = {
        "alg": "The token's algorithm is not accepted",
        "key": "The token's signing key is unknown",
        "malformed": "The token is malformed",
        "nbf": "The token is not valid yet",
        "aud": "The token's audience is wrong",
        "iss": "The token's issuer is wrong",
        "claim": "The token lacks a required claim",
        "signature": "The token's signature does not verify",
    }.get(what, "The token is invalid")
    return _INVALID.format(text)


class Authenticator:
    """``check`` is the per-request call; everything else runs at start-up, once a second, or on SIGHUP."""

    def __init__(self, mode: str, keys: KeyChecker | None, tokens: TokenVerifier | None) -> None:
        self.mode = mode
        self.keys = keys
        self.tokens = tokens
        self.watched: list[_Watched] = []
        self.denied = 0  # 401s answered (a metrics exporter may read it)
        self.reloads = 0
        self.reload_failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        if keys is not None and tokens is not None:
            self._missing = "Missing or invalid API key or token."
        elif keys is not None:
            self._missing = "Missing or invalid API key."
        else:
            self._missing = "Missing or invalid token."

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator | None:
        """None for ``auth_mode=none``. SettingsError, one line, when the mode lacks what it needs."""
        mode = settings.auth_mode
        if mode == "none":
            return None
        keys: KeyChecker | None = None
        tokens: TokenVerifier | None = None
        keys_file = settings.keys_file
        if mode in ("key", "key_or_token"):
            if keys_file:
                loaded = read_keys(keys_file)
            elif settings.primary_key or settings.secondary_key:
                p, s = settings.primary_key, settings.secondary_key
                loaded = Keys(p.get_secret_value() if p else None, s.get_secret_value() if s else None)
            else:
                raise SettingsError(
                    f"auth_mode={mode} needs keys: set SCOREHOST_PRIMARY_KEY (and SCOREHOST_SECONDARY_KEY) or "
                    "SCOREHOST_KEYS_FILE (`scorehost keys generate` writes one), or SCOREHOST_AUTH_MODE=none"
                )
            keys = KeyChecker(loaded)
        jwks_file = settings.token_jwks_file
        if mode in ("token", "key_or_token"):
            secret = settings.token_secret.get_secret_value().encode() if settings.token_secret else None
            if secret is None and not jwks_file:
                raise SettingsError(f"auth_mode={mode} needs SCOREHOST_TOKEN_SECRET or SCOREHOST_TOKEN_JWKS_FILE")
            if secret is not None and len(secret) < MIN_TOKEN_SECRET_BYTES:
                raise SettingsError(f"token_secret must be at least {MIN_TOKEN_SECRET_BYTES} bytes long")
            audience = [a.strip() for a in (settings.token_audience or "").split(",") if a.strip()] or None
            tokens = TokenVerifier(
                secret=secret,
                jwks=_read_jwks(jwks_file) if jwks_file else None,
                algorithms=settings.token_algorithms,
                issuer=settings.token_issuer,
                audience=audience,
                leeway_s=settings.token_leeway_s,
            )
        auth = cls(mode, keys, tokens)
        if keys is not None and keys_file:
            auth.watched.append(_Watched(keys_file, auth._reload_keys(keys_file)))
        if tokens is not None and jwks_file:
            auth.watched.append(_Watched(jwks_file, auth._reload_jwks(jwks_file)))
        return auth

    # --- per request ---------------------------------------------------------------------------
    def check(self, header: bytes | None) -> None:
        """Return if ``header`` (the raw Authorization value) admits the request; else Unauthorized."""
        if header is None:
            self.denied += 1
            raise Unauthorized(self._missing)
        # RFC 7235: the scheme is case-insensitive, then one or more spaces.
        scheme, _, token = header.partition(b" ")
        token = token.lstrip(b" ")
        bearer = scheme.lower() == _BEARER
        keys = self.keys
        if keys is not None:  # the hot path: inlined KeyChecker.matches, both keys always compared
            first, second = keys.pair
            if (hmac.compare_digest(token, first) | hmac.compare_digest(token, second)) and bearer:
                return
        tokens = self.tokens
        if tokens is not None and bearer and token.count(b".") == 2:
            try:
                tokens.verify(token)
            except Unauthorized:
                self.denied += 1
                raise
            return
        self.denied += 1
        raise Unauthorized(self._missing)

    # --- files ---------------------------------------------------------------------------------
    def _reload_keys(self, path: str) -> Callable[[], None]:
        def load() -> None:
            assert self.keys is not None
            try:
                keys = read_keys(path)
            except SettingsError as exc:
                self.reload_failures += 1
                logger.warning("%s; the keys in force stay", exc)
                return
            self.keys.replace(keys)
            if self.tokens is not None:
                self.tokens.cache = {}
            self.reloads += 1
            logger.info("Keys re-read from %s (%r)", path, keys)

        return load

    def _reload_jwks(self, path: str) -> Callable[[], None]:
        def load() -> None:
            assert self.tokens is not None
            try:
                self.tokens.set_jwks(_read_jwks(path), f"token_jwks_file {path}")
            except SettingsError as exc:
                self.reload_failures += 1
                logger.warning("%s; the keys in force stay", exc)
                return
            self.reloads += 1
            logger.info("JWKS re-read from %s", path)

        return load

    def reload(self) -> None:
        """Re-read every watched file now (SIGHUP)."""
        for watched in self.watched:
            watched.poll(force=True)
        if self.tokens is not None:
            self.tokens.cache = {}

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Poll the watched files once a second on ``loop`` (nothing to do without files)."""
        if not self.watched or self._loop is loop:
            return
        self._loop = loop
        loop.call_later(POLL_S, self._poll)

    def _poll(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            for watched in self.watched:
                watched.poll()
        except Exception:  # a bug of ours must not stop the watching
            logger.exception("Watching the key files failed")
        finally:
            loop.call_later(POLL_S, self._poll)


def _read_jwks(path: str) -> dict[str, Any]:
    data = read_secret_json(path, MAX_JWKS_BYTES, "token_jwks_file")
    if not isinstance(data, dict):
        raise SettingsError(f'token_jwks_file {path}: expected a JWKS document {{"keys": [...]}}')
    return data
