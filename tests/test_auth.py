"""Key and token auth (server.http.auth, server.keys): settings, the checks, the keys file and its
commands, and real servers: keys rotated under load with no failed request, expired, wrong-audience
and alg=none tokens, SIGHUP."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import plain_http
import pytest
from conftest import SCRIPTS, ServerHandle, launch
from security_util import ec_key, pem, public_jwk, public_pem, rsa_key, write_json_atomically

from server import keys as keys_mod
from server.cli import main as cli_main
from server.errors import SettingsError, Unauthorized
from server.http.auth import Authenticator
from server.settings import SECRET_FIELDS, Settings
from server.workers.supervision import worker_settings_json

SECRET = "t0ken-secret-that-is-long-enough-for-hs256-and-even-for-hs512!!!"
AUD = "scorehost-tests"
ISS = "https://issuer.example"


def bearer(value: str) -> bytes:
    return f"Bearer {value}".encode()


def hs_token(claims: dict[str, Any] | None = None, *, secret: str = SECRET, **headers: Any) -> str:
    now = int(time.time())
    body = {"exp": now + 300, "iat": now, "aud": AUD, "iss": ISS, **(claims or {})}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, secret, algorithm="HS256", headers=headers or None)


def unsigned_token(claims: dict[str, Any]) -> str:
    """An alg=none token, built by hand (PyJWT will not verify one, and neither may we)."""
    import base64

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


def denied(auth: Authenticator, header: bytes | None) -> str:
    with pytest.raises(Unauthorized) as info:
        auth.check(header)
    assert info.value.status_code == 401 and info.value.headers["WWW-Authenticate"].startswith("Bearer")
    return info.value.message


# --- settings ------------------------------------------------------------------------------------
def test_auth_mode_follows_the_credentials_and_api_key_is_primary_key() -> None:
    assert Settings().auth_mode == "none"
    legacy = Settings(api_key="k1")
    assert legacy.auth_mode == "key" and legacy.primary_key is not None
    assert legacy.primary_key.get_secret_value() == "k1"
    assert Settings(secondary_key="k2").auth_mode == "key"
    assert Settings(token_secret=SECRET).auth_mode == "token"
    assert Settings(keys_file="k.json", token_jwks_file="j.json").auth_mode == "key_or_token"
    assert Settings(auth_mode="none", primary_key="k").auth_mode == "none"
    with pytest.raises(ValueError, match="older name of primary_key"):
        Settings(api_key="a", primary_key="b")
    with pytest.raises(ValueError, match="not both"):
        Settings(primary_key="a", keys_file="k.json")
    with pytest.raises(ValueError, match="token_algorithms"):
        Settings(token_algorithms="HS256,none")
    assert Settings(token_algorithms=" ES256 , RS256").token_algorithms == ["ES256", "RS256"]


def test_env_names_and_secrets_stay_in_the_http_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "SCOREHOST_AUTH_MODE": "key_or_token", "SCOREHOST_PRIMARY_KEY": "pk-value",
        "SCOREHOST_SECONDARY_KEY": "sk-value", "SCOREHOST_TOKEN_SECRET": SECRET, "SCOREHOST_TOKEN_ISSUER": ISS,
        "SCOREHOST_TOKEN_AUDIENCE": AUD,
        "SCOREHOST_TOKEN_LEEWAY_S": "3", "SCOREHOST_SSL_CERTFILE": "c.pem", "SCOREHOST_SSL_KEYFILE": "k.pem",
        "SCOREHOST_SSL_CA_CERTS": "ca.pem",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    s = Settings()
    assert (s.auth_mode, s.token_issuer, s.token_audience, s.token_leeway_s) == ("key_or_token", ISS, AUD, 3.0)
    assert (s.ssl_certfile, s.ssl_keyfile, s.ssl_ca_certs) == ("c.pem", "k.pem", "ca.pem")
    assert {"primary_key", "secondary_key", "token_secret", "api_key"} <= SECRET_FIELDS
    dumped = worker_settings_json(s)
    for secret in ("pk-value", "sk-value", SECRET):
        assert secret not in dumped and secret not in repr(s)
    # A worker rebuilds the settings from the dump: same mode, no secrets, no error.
    for name in ("SCOREHOST_PRIMARY_KEY", "SCOREHOST_SECONDARY_KEY", "SCOREHOST_TOKEN_SECRET"):
        monkeypatch.delenv(name)
    assert Settings.model_validate_json(dumped).auth_mode == "key_or_token"


def test_a_mode_without_its_credentials_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="needs keys"):
        Authenticator.from_settings(Settings(auth_mode="key"))
    with pytest.raises(SettingsError, match="TOKEN_SECRET"):
        Authenticator.from_settings(Settings(auth_mode="token"))
    with pytest.raises(SettingsError, match="at least 32 bytes"):
        Authenticator.from_settings(Settings(token_secret="short"))
    with pytest.raises(SettingsError, match="cannot read"):
        Authenticator.from_settings(Settings(keys_file=str(tmp_path / "missing.json")))
    bad = tmp_path / "bad.json"
    bad.write_text('{"primaryKey": "half-written', encoding="utf-8")
    with pytest.raises(SettingsError) as info:
        Authenticator.from_settings(Settings(keys_file=str(bad)))
    assert "half-written" not in str(info.value)  # never a key in a message
    assert Authenticator.from_settings(Settings()) is None


# --- keys ----------------------------------------------------------------------------------------
def test_either_key_works_and_the_scheme_is_case_insensitive() -> None:
    auth = Authenticator.from_settings(Settings(primary_key="first-key", secondary_key="second-key"))
    assert auth is not None
    for header in (b"Bearer first-key", b"bearer second-key", b"BEARER  first-key"):
        auth.check(header)
    assert denied(auth, None) == "Missing or invalid API key."
    for header in (b"Bearer first-ke", b"Bearer first-key2", b"Basic first-key", b"first-key", b"Bearer ", b""):
        assert "first-key" not in denied(auth, header)
    assert auth.denied == 7
    # A key-only server does not take tokens, even good ones.
    denied(auth, bearer(hs_token()))


def test_one_key_only_leaves_no_empty_key_that_matches() -> None:
    auth = Authenticator.from_settings(Settings(primary_key="only"))
    assert auth is not None
    auth.check(b"Bearer only")
    denied(auth, b"Bearer ")


def test_keys_file_is_reread_on_change_and_a_bad_file_keeps_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    keys_mod.write_keys(str(path), keys_mod.Keys("p1", "s1"))
    auth = Authenticator.from_settings(Settings(keys_file=str(path)))
    assert auth is not None and auth.mode == "key"
    auth.check(b"Bearer s1")
    keys_mod.write_keys(str(path), keys_mod.Keys("p1", "s2"))
    auth.watched[0].poll()
    auth.check(b"Bearer s2")
    denied(auth, b"Bearer s1")
    path.write_text("{not json", encoding="utf-8")
    auth.watched[0].poll()
    auth.check(b"Bearer p1")  # the keys in force stay
    assert auth.reload_failures == 1
    path.write_text(json.dumps({"primaryKey": "", "secondaryKey": None}), encoding="utf-8")
    auth.reload()
    auth.check(b"Bearer s2")
    assert auth.reload_failures == 2 and auth.reloads == 1


# --- tokens --------------------------------------------------------------------------------------
def token_auth(**overrides: Any) -> Authenticator:
    values: dict[str, Any] = {"token_secret": SECRET, "token_issuer": ISS, "token_audience": AUD, **overrides}
    auth = Authenticator.from_settings(Settings(**values))
    assert auth is not None
    return auth


def test_hs256_tokens_exp_nbf_aud_iss_and_leeway() -> None:
    auth = token_auth(token_leeway_s=5)
    auth.check(bearer(hs_token()))
    auth.check(bearer(hs_token({"exp": int(time.time()) - 2})))  # within the leeway
    expired = denied(auth, bearer(hs_token({"exp": int(time.time()) - 60})))
    assert "expired" in expired.lower()
    assert "audience" in denied(auth, bearer(hs_token({"aud": "someone-else"})))
    assert "issuer" in denied(auth, bearer(hs_token({"iss": "https://evil.example"})))
    assert "nbf" in denied(auth, bearer(hs_token({"nbf": int(time.time()) + 60})))
    assert "signature" in denied(
        auth, bearer(hs_token(secret="another-secret-that-is-long-enough-too!!-and-some-more-for-hs512!"))
    )
    no_exp = jwt.encode({"aud": AUD, "iss": ISS}, SECRET, algorithm="HS256")
    assert "exp" in denied(auth, bearer(no_exp))
    assert "malformed" in denied(auth, b"Bearer a.b.c")
    assert denied(auth, None) == "Missing or invalid token."


def test_alg_none_and_algorithms_off_the_list_are_refused() -> None:
    auth = token_auth()
    claims = {"exp": int(time.time()) + 300, "aud": AUD, "iss": ISS}
    with pytest.raises(Unauthorized) as info:
        auth.check(bearer(unsigned_token(claims)))
    assert "algorithm" in info.value.message and 'error="invalid_token"' in info.value.headers["WWW-Authenticate"]
    hs512 = jwt.encode(claims, SECRET, algorithm="HS512")
    assert "algorithm" in denied(auth, bearer(hs512))  # not on the default allow-list
    token_auth(token_algorithms="HS512").check(bearer(hs512))


def test_rs256_and_es256_from_jwks_and_no_algorithm_confusion(tmp_path: Path) -> None:
    rsa, ec = rsa_key(), ec_key()
    jwks = tmp_path / "jwks.json"
    write_json_atomically(jwks, {"keys": [public_jwk(rsa, "r1", "RS256"), public_jwk(ec, "e1")]})
    auth = Authenticator.from_settings(Settings(token_jwks_file=str(jwks), token_audience=AUD))
    assert auth is not None and auth.mode == "token"
    claims = {"exp": int(time.time()) + 300, "aud": AUD}
    auth.check(bearer(jwt.encode(claims, pem(rsa), algorithm="RS256", headers={"kid": "r1"})))
    auth.check(bearer(jwt.encode(claims, pem(ec), algorithm="ES256", headers={"kid": "e1"})))
    assert "unknown signing key" in denied(auth, bearer(jwt.encode(claims, pem(ec), "ES256", headers={"kid": "x"})))
    # The RSA key's declared alg is RS256; an EC token claiming the RSA key is refused.
    assert "does not match" in denied(auth, bearer(jwt.encode(claims, pem(ec), "ES256", headers={"kid": "r1"})))
    # HS256 signed with the public key (the classic confusion): no secret, so no HMAC at all.
    forged = jwt.api_jws.PyJWS().encode(
        json.dumps(claims).encode(), b"x" * 32, algorithm="HS256", headers={"kid": "r1"}
    )  # fmt: skip
    assert "HMAC" in denied(auth, bearer(forged))
    assert public_pem(rsa)  # (the public key is public; nothing above used it as a secret)
    # A rotated JWKS is picked up; tokens verified before are forgotten.
    rsa2 = rsa_key()
    write_json_atomically(jwks, {"keys": [public_jwk(rsa2, "r2", "RS256")]})
    auth.watched[0].poll(force=True)
    auth.check(bearer(jwt.encode(claims, pem(rsa2), algorithm="RS256", headers={"kid": "r2"})))
    denied(auth, bearer(jwt.encode(claims, pem(rsa), algorithm="RS256", headers={"kid": "r1"})))


def test_a_jwks_with_private_keys_is_refused(tmp_path: Path) -> None:
    from jwt.algorithms import RSAAlgorithm

    jwks = tmp_path / "jwks.json"
    write_json_atomically(jwks, {"keys": [json.loads(RSAAlgorithm.to_jwk(rsa_key()))]})
    with pytest.raises(SettingsError, match="public keys only"):
        Authenticator.from_settings(Settings(token_jwks_file=str(jwks)))


def test_key_or_token_takes_either() -> None:
    auth = Authenticator.from_settings(Settings(primary_key="pk", token_secret=SECRET, token_audience=AUD))
    assert auth is not None and auth.mode == "key_or_token"
    auth.check(b"Bearer pk")
    auth.check(bearer(hs_token({"iss": None})))
    assert denied(auth, b"Bearer nope") == "Missing or invalid API key or token."


# --- commands ------------------------------------------------------------------------------------
def test_keys_generate_regen_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.json"
    assert cli_main(["keys", "generate", "--keys_file", str(path)]) == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    first = keys_mod.read_keys(str(path))
    assert first.primary and first.secondary and len(first.primary) >= 43 and first.primary != first.secondary
    assert cli_main(["keys", "generate", "--keys_file", str(path)]) == 2  # no silent overwrite
    assert cli_main(["keys", "regen", "--key", "secondary", "--keys_file", str(path)]) == 0
    second = keys_mod.read_keys(str(path))
    assert second.primary == first.primary and second.secondary != first.secondary
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]  # no temporary file left
    capsys.readouterr()
    assert cli_main(["keys", "show", "--keys_file", str(path)]) == 0
    assert json.loads(capsys.readouterr().out) == {"primaryKey": second.primary, "secondaryKey": second.secondary}
    assert "Keys(primary=set" in repr(second) and second.primary not in repr(second)


def test_token_issue_prints_a_token_and_refresh_by(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCOREHOST_TOKEN_SECRET", SECRET)
    monkeypatch.setenv("SCOREHOST_TOKEN_AUDIENCE", AUD)
    assert cli_main(["token", "issue", "--ttl", "600", "--subject", "alice"]) == 0
    out = json.loads(capsys.readouterr().out)
    claims = jwt.decode(out["token"], SECRET, algorithms=["HS256"], audience=AUD)
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 600
    assert out["refresh_by"] < out["expires_on"] and out["refresh_by"].endswith("Z")
    token_auth(token_issuer=None).check(bearer(out["token"]))
    monkeypatch.setenv("SCOREHOST_TOKEN_SECRET", "short")
    assert cli_main(["token", "issue"]) == 2


# --- real servers --------------------------------------------------------------------------------
@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[ServerHandle, Path]]:
    path = tmp_path / "keys.json"
    keys_mod.write_keys(str(path), keys_mod.Keys("primary-0", "secondary-0"))
    handle = launch(
        None,
        {"AZUREML_ENTRY_SCRIPT": str(SCRIPTS / "echo.py"), "SCOREHOST_KEYS_FILE": str(path), "SCOREHOST_WORKERS": "2",
         "SCOREHOST_MAX_CONCURRENT_REQUESTS": "4"},
    )  # fmt: skip
    try:
        handle.wait_ready()
        yield handle, path
    finally:
        handle.stop()


def _accepted(url: str, key: str, timeout: float = 5.0) -> float:
    """Seconds until ``key`` is accepted."""
    started = time.monotonic()
    with plain_http.client(timeout=5) as c:
        while time.monotonic() - started < timeout:
            if c.post(url + "/score", content=b"1", headers={"Authorization": f"Bearer {key}"}).status_code == 200:
                return time.monotonic() - started
            time.sleep(0.02)
    raise AssertionError(f"new key not accepted within {timeout} s")


@pytest.mark.slow
def test_401_contract_probes_and_v2_on_a_real_server(keyed: tuple[ServerHandle, Path]) -> None:
    server, _ = keyed
    with server.client() as c:
        r = c.post("/score", content=b"1")
        assert r.status_code == 401 and r.json() == {"message": "Missing or invalid API key."}
        assert r.headers["www-authenticate"] == "Bearer" and r.headers["content-type"] == "application/json"
        r = c.get("/v2/models", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"] == r.json()["message"]
        for probe in ("/", "/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"):
            assert c.get(probe).status_code == 200, probe
        assert c.get("/metrics").status_code != 401  # /metrics needs no key either
        assert c.get("/swagger.json").status_code == 200
        assert c.post("/score", content=b"1", headers={"Authorization": "bEaReR primary-0"}).status_code == 200
    assert "Authentication: auth_mode=key" in server.log


@pytest.mark.slow
def test_keys_rotate_under_load_with_no_failed_request(keyed: tuple[ServerHandle, Path]) -> None:
    server, path = keyed
    current = ["primary-0"]
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        with plain_http.client(base_url=server.url, timeout=10) as c:
            while not stop.is_set():
                try:
                    r = c.post("/score", content=b'{"a": 1}', headers={"Authorization": f"Bearer {current[0]}"})
                    with lock:
                        statuses[r.status_code] += 1
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        # 1. New secondary (the file is watched); clients move to it; 2. new primary.
        assert cli_main(["keys", "regen", "--key", "secondary", "--keys_file", str(path)]) == 0
        secondary = keys_mod.read_keys(str(path)).secondary
        assert secondary is not None
        assert _accepted(server.url, secondary) < 3.0
        current[0] = secondary
        time.sleep(0.3)
        assert cli_main(["keys", "regen", "--key", "primary", "--keys_file", str(path)]) == 0
        primary = keys_mod.read_keys(str(path)).primary
        assert primary is not None
        _accepted(server.url, primary)
        current[0] = primary
        # 3. SIGHUP re-reads at once, without waiting for the watcher.
        keys_mod.write_keys(str(path), keys_mod.Keys(primary, "secondary-sighup"))
        server.proc.send_signal(signal.SIGHUP)
        assert _accepted(server.url, "secondary-sighup") < 2.0
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors[:3]
    assert set(statuses) == {200} and statuses[200] > 200, statuses
    with server.client() as c:  # the old keys are gone
        assert c.post("/score", content=b"1", headers={"Authorization": "Bearer primary-0"}).status_code == 401
    assert server.proc.poll() is None
    for secret in ("primary-0", "secondary-0", primary, secondary, "secondary-sighup"):
        assert secret not in server.log
    assert "Keys re-read from" in server.log and "Received SIGHUP" in server.log


@pytest.mark.slow
def test_tokens_on_a_real_server(start_server: Any) -> None:
    server = start_server(
        "echo.py", SCOREHOST_TOKEN_SECRET=SECRET, SCOREHOST_TOKEN_AUDIENCE=AUD, SCOREHOST_TOKEN_ISSUER=ISS
    )
    with server.client() as c:

        def call(token: str) -> httpx.Response:
            return c.post("/score", content=b"1", headers={"Authorization": f"Bearer {token}"})

        assert call(hs_token()).status_code == 200
        expired = call(hs_token({"exp": int(time.time()) - 120}))
        assert expired.status_code == 401 and "expired" in expired.json()["message"].lower()
        assert expired.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
        wrong_aud = call(hs_token({"aud": "not-us"}))
        assert wrong_aud.status_code == 401 and "audience" in wrong_aud.json()["message"]
        none = call(unsigned_token({"exp": int(time.time()) + 300, "aud": AUD, "iss": ISS}))
        assert none.status_code == 401 and "algorithm" in none.json()["message"]
        assert c.post("/score", content=b"1").status_code == 401
        assert c.get("/health/ready").status_code == 200
    assert SECRET not in server.log and "Authentication: auth_mode=token" in server.log


@pytest.mark.slow
def test_the_key_never_reaches_the_script(start_server: Any) -> None:
    server = start_server("auth_headers.py", SCOREHOST_PRIMARY_KEY="never-in-the-worker")
    with server.client() as c:
        r = c.post("/score", json={"data": 1},
                   headers={"Authorization": "Bearer never-in-the-worker", "X-Other": "seen"})  # fmt: skip
    assert r.status_code == 200, r.text
    seen = r.json()
    assert "x-other" in seen["headers"] and "authorization" not in seen["headers"]
    assert not any("never-in-the-worker" in v for v in seen["values"])


@pytest.mark.slow
def test_a_mode_without_credentials_exits_2_with_one_line() -> None:
    handle = launch(None, {"AZUREML_ENTRY_SCRIPT": str(SCRIPTS / "echo.py"), "SCOREHOST_AUTH_MODE": "key"},
                    wait_listening=False)  # fmt: skip
    assert handle.wait_exit(30) == 2
    assert "auth_mode=key needs keys" in handle.log
