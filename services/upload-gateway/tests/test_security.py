"""Small hardening items of issue 20: names that read otherwise than they are, and JWT checks."""

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from rawdrive_devkit.testkit import serving
from rawdrive_platform.config import Secret
from rawdrive_platform.storage import content_disposition
from upload_gateway.app import token_verifier
from upload_gateway.auth import UPLOAD_AUDIENCE, TokenVerifier, UploadGrant, derived_upload_secret
from upload_gateway.errors import Unauthorized
from upload_gateway.settings import Settings
from upload_gateway.uploads.names import display_name

SECRET = "security-test-secret-" + "x" * 16


@pytest.mark.parametrize("hidden", ["\u202e", "\u202d", "\u2066", "\u200b", "\u200d", "\ufeff", "\u00ad"])
def test_format_characters_never_reach_a_display_name_or_the_download_header(hidden):
    name = display_name(f"invoice{hidden}gpj.exe")
    assert name == "invoicegpj.exe"
    assert hidden not in content_disposition(f"invoice{hidden}gpj.exe")
    assert "%E2%80%AE" not in content_disposition("invoice\u202egpj.exe")


def test_a_name_of_nothing_but_format_characters_is_refused():
    with pytest.raises(Exception, match="no printable characters"):
        display_name("\u202e\u200b")


@pytest.mark.parametrize("short", ["", "s" * 31, "é" * 15])
def test_secrets_shorter_than_32_bytes_are_refused(short):
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenVerifier(upload_secret=SECRET, hs256_secret=short)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenVerifier(upload_secret=short, hs256_secret=SECRET)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenVerifier(upload_secret=SECRET, hs256_secret=SECRET, previous_upload_secrets=[short])


def settings(**overrides: object) -> Settings:
    fields: dict[str, object] = dict(
        database_url="postgresql://x/y", s3_bucket="b", s3_access_key_id="a", s3_secret_access_key=Secret("s"),
        jwt_secret=Secret(SECRET),
    )
    return Settings(**(fields | overrides))  # type: ignore[arg-type]


def test_upload_tokens_have_a_secret_of_their_own_by_default():
    grant = UploadGrant(upload_id="u1", workspace_id="ws1", sub="alice")
    token = token_verifier(settings()).mint_upload_token(grant, _in(600))
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, SECRET, algorithms=["HS256"], audience=UPLOAD_AUDIENCE)
    jwt.decode(token, derived_upload_secret(SECRET), algorithms=["HS256"], audience=UPLOAD_AUDIENCE)


def test_a_jwks_url_needs_an_issuer_and_an_audience():
    base = dict(jwt_secret=None, jwt_jwks_url="http://127.0.0.1:9/jwks", upload_token_secret=Secret(SECRET))
    for missing in ({"jwt_audience": "rawdrive"}, {"jwt_issuer": "https://id.example"}):
        with pytest.raises(ValueError, match="issuer and the audience"):
            token_verifier(settings(**base, **missing))


@pytest.fixture
async def jwks() -> AsyncIterator[tuple[str, rsa.RSAPrivateKey]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"kid": "k1", "use": "sig"}

    async def keys(_: web.Request) -> web.Response:
        return web.json_response({"keys": [public]})

    app = web.Application()
    app.router.add_get("/jwks", keys)
    async with serving(app) as port:
        yield f"http://127.0.0.1:{port}/jwks", key


async def test_in_jwks_mode_a_token_of_another_issuer_or_audience_is_refused(jwks):
    url, key = jwks
    verifier = token_verifier(settings(
        jwt_secret=None, jwt_jwks_url=url, jwt_issuer="https://id.example", jwt_audience="rawdrive",
        upload_token_secret=Secret(SECRET),
    ))

    def token(**claims: object) -> str:
        body = {"sub": "alice", "exp": int(time.time()) + 600, "workspaces": {"ws1": "admin"},
                "iss": "https://id.example", "aud": "rawdrive"} | claims
        body = {k: v for k, v in body.items() if v is not None}
        return "Bearer " + jwt.encode(body, key, algorithm="RS256", headers={"kid": "k1"})

    assert (await verifier.principal(token())).sub == "alice"
    for wrong in ({"iss": "https://other-tenant.example"}, {"iss": None}, {"aud": "another-app"}):
        with pytest.raises(Unauthorized):
            await verifier.principal(token(**wrong))


def _in(seconds: int) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)
