"""The authentication and TLS part of the settings (docs/security.md): a base class of
:class:`server.settings.Settings`, kept in a module of its own. The same rules as every setting:
``SCOREHOST_`` + the name in upper case, every field documented, the object frozen and free of I/O.
Secrets (``primary_key``, ``secondary_key``, ``api_key``, ``token_secret``) are SecretStr and in
``server.settings.SECRET_FIELDS``: never logged, never sent to workers.

Read by :mod:`server.http.auth` (keys and tokens) and :mod:`server.http.tls` (certificates).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode

# JWT algorithms that token_algorithms may list ("none" is never one of them).
JWT_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")


def _env(name: str) -> AliasChoices:
    """``SCOREHOST_<NAME>`` (as :func:`server.settings._env`; these settings have no Azure ML name)."""
    return AliasChoices("SCOREHOST_" + name.upper())


class SecuritySettings(BaseSettings):
    """Who may call ``/score`` and ``/v2``, and TLS. Its own model_config is Settings'."""

    auth_mode: Literal["none", "key", "token", "key_or_token"] = Field("none", validation_alias=_env("auth_mode"))
    """What ``/score`` and ``/v2`` require in ``Authorization: Bearer ...``: nothing, one of the keys, a
    JWT, or either. Probes, ``/metrics`` and the health port never need one. Unset, it follows from the
    credentials given: keys (or ``api_key``) mean ``key``, a token secret or JWKS file ``token``, both
    ``key_or_token``; none given, ``none`` (the CLI binds 127.0.0.1). The images set ``key``."""

    api_key: SecretStr | None = Field(None, validation_alias=_env("api_key"))
    """Older name of ``primary_key`` (and, with ``auth_mode`` unset, ``auth_mode=key``)."""

    primary_key: SecretStr | None = Field(None, validation_alias=_env("primary_key"))
    """Key auth: a key that ``Authorization: Bearer <key>`` must match (this or the secondary one)."""

    secondary_key: SecretStr | None = Field(None, validation_alias=_env("secondary_key"))
    """Key auth: the second valid key, so that keys can be rotated one at a time."""

    keys_file: str | None = Field(None, validation_alias=_env("keys_file"))
    """Key auth: a JSON file ``{"primaryKey": ..., "secondaryKey": ...}`` instead of the two settings;
    re-read when it changes (checked every second) and on SIGHUP, without a restart. ``scorehost keys``
    writes one."""

    token_secret: SecretStr | None = Field(None, validation_alias=_env("token_secret"))
    """Token auth: the HS256 secret that signs JWTs (``scorehost token issue`` mints them)."""

    token_jwks_file: str | None = Field(None, validation_alias=_env("token_jwks_file"))
    """Token auth: a JWKS file (``{"keys": [...]}``) of the RS256/ES256 public keys; re-read when it
    changes and on SIGHUP."""

    token_issuer: str | None = Field(None, validation_alias=_env("token_issuer"))
    """Token auth: the ``iss`` every token must carry (unset: not checked)."""

    token_audience: str | None = Field(None, validation_alias=_env("token_audience"))
    """Token auth: the ``aud`` a token must carry (comma-separated: any of them; unset: a token with an
    ``aud`` claim is refused)."""

    token_leeway_s: float = Field(10.0, ge=0, le=300, validation_alias=_env("token_leeway_s"))
    """Token auth: clock skew allowed when ``exp`` and ``nbf`` are checked."""

    token_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["HS256", "RS256", "ES256"], validation_alias=_env("token_algorithms")
    )
    """Token auth: the JWT algorithms accepted (comma-separated allow-list); ``none`` never is. HS*
    tokens are checked with ``token_secret``, RS*/ES*/PS* ones with the JWKS file."""

    ssl_certfile: str | None = Field(None, validation_alias=_env("ssl_certfile"))
    """TLS: the server's certificate chain (PEM). Set, the main port speaks HTTPS only. Re-read on SIGHUP and
    when it changes."""

    ssl_keyfile: str | None = Field(None, validation_alias=_env("ssl_keyfile"))
    """TLS: the certificate's private key (PEM); default: in ``ssl_certfile``."""

    ssl_ca_certs: str | None = Field(None, validation_alias=_env("ssl_ca_certs"))
    """TLS: CA certificates (PEM) that client certificates must chain to. Set, every client must present
    one (mutual TLS)."""

    ssl_health_port: bool = Field(False, validation_alias=_env("ssl_health_port"))
    """TLS: also use TLS on the health port (``separate_health_endpoint``); off, it stays plain HTTP so
    that probes need no certificate."""

    # --- validation ----------------------------------------------------------
    @field_validator("token_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: object) -> object:
        if isinstance(value, str):
            value = [a.strip() for a in value.split(",") if a.strip()]
        return value

    @field_validator("token_algorithms")
    @classmethod
    def _check_algorithms(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a not in JWT_ALGORITHMS]
        if bad or not value:
            raise ValueError(f"must be a non-empty comma-separated list of {', '.join(JWT_ALGORITHMS)} (not {bad})")
        return value

    @model_validator(mode="after")
    def _auth(self) -> SecuritySettings:
        # NOTE: derived values on a frozen object, as in _worker_timeout. A worker gets auth_mode
        # explicitly (and no secrets), so it never infers anything.
        if self.api_key is not None:
            if self.primary_key is None:
                object.__setattr__(self, "primary_key", self.api_key)
            elif self.primary_key.get_secret_value() != self.api_key.get_secret_value():
                raise ValueError("api_key is the older name of primary_key: set one of them")
        if (self.primary_key or self.secondary_key) and self.keys_file:
            raise ValueError("set primary_key/secondary_key or keys_file, not both")
        if "auth_mode" not in self.model_fields_set:
            keys = bool(self.primary_key or self.secondary_key or self.keys_file)
            tokens = bool(self.token_secret or self.token_jwks_file)
            mode = "key_or_token" if keys and tokens else "key" if keys else "token" if tokens else "none"
            object.__setattr__(self, "auth_mode", mode)
        if bool(self.ssl_keyfile or self.ssl_ca_certs) and not self.ssl_certfile:
            raise ValueError("ssl_keyfile and ssl_ca_certs need ssl_certfile")
        return self
