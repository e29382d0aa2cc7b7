"""Profile sealing and the SSE wiring of Storage: pure, no servers."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import msgspec
import pytest

from rawdrive_platform.config import Secret
from rawdrive_platform.profiles import (
    MasterKey,
    UnknownProfile,
    mask_key_id,
    master_key,
    new_profile_ref,
    open_profile,
    reseal_record,
    seal_profile,
)
from rawdrive_platform.storage import Storage, StorageProfile, encryption_headers, encryption_params

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def byos(**overrides: object) -> StorageProfile:
    fields = {
        "profile_id": new_profile_ref("ws1"),
        "provider": "byos",
        "bucket": "customer-bucket",
        "endpoint": "https://s3.eu-west-1.amazonaws.com",
        "region": "eu-west-1",
        "key_prefix": "rawdrive/ws1/",
        "access_key_id": "AKIAABCDEFGHIJKLWXYZ",
        "secret_access_key": Secret("very-secret-value"),
    } | overrides
    return StorageProfile(**fields)  # type: ignore[arg-type]


def test_a_sealed_profile_opens_with_its_key_to_the_same_profile_and_hides_the_credentials():
    key = MasterKey(b"k" * 32)
    profile = byos(encryption="sse_kms", kms_key_id="alias/x")
    record = seal_profile(profile, "ws1", key, NOW)
    stored = msgspec.json.encode(record)
    assert b"very-secret-value" not in stored and b"AKIAABCDEFGHIJKLWXYZ" not in stored
    assert record.masked_key_id == "AKIA…WXYZ"
    assert open_profile(msgspec.json.decode(stored, type=type(record)), key) == profile


def test_another_master_key_or_a_record_moved_to_another_ref_does_not_open():
    record = seal_profile(byos(), "ws1", MasterKey(b"k" * 32), NOW)
    with pytest.raises(UnknownProfile):
        open_profile(record, MasterKey(b"j" * 32))
    with pytest.raises(UnknownProfile):
        open_profile(msgspec.structs.replace(record, ref=new_profile_ref("ws1")), MasterKey(b"k" * 32))


@pytest.mark.parametrize("value", ["", "not base64!", "c2hvcnQ="])
def test_a_master_key_that_is_not_32_bytes_of_base64_is_refused_without_echoing_it(value):
    with pytest.raises(ValueError) as caught:
        MasterKey.from_secret(Secret(value))
    assert value not in str(caught.value) or value == ""


def test_a_generated_master_key_is_accepted_and_never_printed():
    key = MasterKey.from_secret(Secret(MasterKey.generate()))
    assert repr(key) == "MasterKey('***')"


# -- master key rotation -------------------------------------------------------------------------

OLD, NEW, OTHER = b"o" * 32, b"n" * 32, b"x" * 32


def test_during_a_rotation_old_records_open_and_new_ones_are_sealed_under_the_new_key_only():
    profile = byos()
    old_record = seal_profile(profile, "ws1", MasterKey(OLD), NOW)
    rotating = MasterKey(NEW, previous=[OTHER, OLD])
    assert open_profile(old_record, rotating) == profile
    new_record = seal_profile(profile, "ws1", rotating, NOW)
    assert open_profile(new_record, MasterKey(NEW)) == profile
    with pytest.raises(UnknownProfile):
        open_profile(new_record, MasterKey(OLD))


def test_reseal_moves_a_record_to_the_current_key_leaves_current_ones_and_refuses_strangers():
    profile = byos()
    rotating = MasterKey(NEW, previous=[OLD])
    resealed = reseal_record(seal_profile(profile, "ws1", MasterKey(OLD), NOW), rotating)
    assert resealed is not None
    assert open_profile(resealed, MasterKey(NEW)) == profile  # the old key is no longer needed
    assert resealed.ref == profile.profile_id and resealed.masked_key_id == "AKIA…WXYZ"
    assert reseal_record(resealed, rotating) is None
    with pytest.raises(UnknownProfile):
        reseal_record(seal_profile(profile, "ws1", MasterKey(OTHER), NOW), rotating)


def test_previous_keys_are_read_comma_separated_and_a_bad_one_is_named_never_echoed():
    new, old, other = (MasterKey.generate() for _ in range(3))
    key = master_key(Secret(new), Secret(f" {old}, {other} ,"))
    assert key is not None
    record = seal_profile(byos(), "ws1", MasterKey.from_secret(Secret(other)), NOW)
    assert open_profile(record, key).bucket == "customer-bucket"
    with pytest.raises(ValueError, match="RAWDRIVE_STORAGE_PREVIOUS_MASTER_KEYS") as caught:
        master_key(Secret(new), Secret(f"{old},c2hvcnQ="))
    assert old not in str(caught.value) and "c2hvcnQ=" not in str(caught.value)
    with pytest.raises(ValueError, match="needs RAWDRIVE_STORAGE_MASTER_KEY"):
        master_key(None, Secret(old))
    assert master_key(None, None) is None


def test_short_key_ids_are_masked_to_their_last_two_characters():
    assert mask_key_id("short123") == "…23"


# -- SSE parameters reach every write and every presigned single PUT ----------------------------


class RecordingClient:
    """Captures the keyword arguments Storage hands the SDK (the wiring under test)."""

    def __init__(self) -> None:
        self.calls: dict[str, dict] = {}

    async def create_multipart_upload(self, **kwargs):
        self.calls["create_multipart_upload"] = kwargs
        return {"UploadId": "u1"}

    async def put_object(self, **kwargs):
        self.calls["put_object"] = kwargs
        return {"ETag": '"e"'}


@pytest.mark.parametrize(
    ("encryption", "kms_key_id", "params"),
    [
        ("none", None, {}),
        ("sse_s3", None, {"ServerSideEncryption": "AES256"}),
        ("sse_kms", "alias/k", {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/k"}),
    ],
)
async def test_multipart_creation_and_single_puts_carry_the_profiles_sse_parameters(encryption, kms_key_id, params):
    client = RecordingClient()
    storage = Storage(byos(encryption=encryption, kms_key_id=kms_key_id), client, contextlib.AsyncExitStack())
    await storage.create_multipart("k", "image/jpeg")
    await storage.put("k2", b"x", "text/plain")
    for call in ("create_multipart_upload", "put_object"):
        assert {k: v for k, v in client.calls[call].items() if k.startswith(("ServerSide", "SSE"))} == params


async def test_a_presigned_put_signs_and_returns_the_sse_headers_the_client_must_send():
    profile = byos(encryption="sse_kms", kms_key_id="alias/k")
    storage = await Storage.open(profile)
    try:
        presigned = await storage.presign_put("rawdrive/ws1/x.jpg", "image/jpeg", 60)
        part = await storage.presign_upload_part("rawdrive/ws1/x.jpg", "u1", 1, 60)
    finally:
        await storage.close()
    assert presigned.headers == {"Content-Type": "image/jpeg"} | encryption_headers(profile)
    signed = parse_qs(urlsplit(presigned.url).query)["X-Amz-SignedHeaders"][0].split(";")
    assert {"x-amz-server-side-encryption", "x-amz-server-side-encryption-aws-kms-key-id"} <= set(signed)
    # S3 fixes SSE-S3/KMS at CreateMultipartUpload and refuses the header on UploadPart.
    assert part.headers == {} and encryption_params(profile)
