"""Which bucket an event's `storage_profile_ref` names: the one way every service resolves it.

Events carry only the non-secret ref. `managed` is the platform's own bucket. Any other ref is a
bring-your-own-bucket profile version that the gateway published in the JetStream KV bucket
`PROFILES_BUCKET` under that ref: the non-secret fields plus the credentials sealed with
AES-256-GCM under the master key (RAWDRIVE_STORAGE_MASTER_KEY), with the ref as associated data
so a record copied under another ref does not open. A ref is never reused: a changed profile gets
a new ref, so uploads started under the old one still resolve it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nats.errors import ConnectionClosedError, NoServersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, BucketNotFoundError, InvalidKeyError, KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from rawdrive_platform.config import CommonSettings, Secret
from rawdrive_platform.storage import (
    MANAGED_PROFILE_ID,
    Encryption,
    Storage,
    StorageProfile,
    StorageRegistry,
    StorageUnavailable,
    managed_storage_profile,
)

PROFILES_BUCKET = "rawdrive_storage_profiles"
MASTER_KEY_BYTES = 32  # AES-256
_NONCE_BYTES = 12  # GCM's standard nonce; random per seal
_NATS_DOWN = (NatsTimeoutError, ConnectionClosedError, NoServersError, asyncio.TimeoutError)


class UnknownProfile(Exception):
    """The ref names no storage profile this service can resolve."""


# Storage profile ref -> an open Storage; raises UnknownProfile.
StorageResolver = Callable[[str], Awaitable[Storage]]


def managed_only(managed: Storage) -> StorageResolver:
    """Resolves the managed bucket alone (tests, and tools that never see BYOS refs)."""

    async def storage_for(ref: str) -> Storage:
        if ref == MANAGED_PROFILE_ID:
            return managed
        raise UnknownProfile(f"storage profile {ref!r} cannot be resolved")

    return storage_for


class MasterKey:
    """The AES-256-GCM key that seals profile credentials. Never printed."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != MASTER_KEY_BYTES:
            raise ValueError(f"the storage master key must be {MASTER_KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)

    @classmethod
    def from_secret(cls, secret: Secret) -> MasterKey:
        """From RAWDRIVE_STORAGE_MASTER_KEY: 32 bytes, standard base64."""
        try:
            key = base64.b64decode(secret.reveal(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("RAWDRIVE_STORAGE_MASTER_KEY is not valid base64") from None
        return cls(key)

    @classmethod
    def generate(cls) -> str:
        """A new key as RAWDRIVE_STORAGE_MASTER_KEY expects it."""
        return base64.b64encode(AESGCM.generate_key(bit_length=8 * MASTER_KEY_BYTES)).decode()

    def seal(self, plaintext: bytes, associated: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, associated)

    def open(self, sealed: bytes, associated: bytes) -> bytes:
        """Raises InvalidTag for another key, another ref or tampered bytes."""
        return self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], associated)

    def __repr__(self) -> str:
        return "MasterKey('***')"


class _Credentials(msgspec.Struct, frozen=True):
    """What is sealed: the key id too, since only its masked form may be shown."""

    access_key_id: str
    secret_access_key: str


class ProfileRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One published profile version, as stored in the KV bucket under `ref`."""

    ref: str
    workspace_id: str
    bucket: str
    endpoint: str | None
    region: str
    key_prefix: str
    encryption: Encryption
    kms_key_id: str | None
    masked_key_id: str
    sealed_credentials: bytes
    created_at: datetime


def new_profile_ref(workspace_id: str) -> str:
    """A fresh ref for a new profile version (KV-key and subject safe)."""
    return f"byos-{workspace_id}-{uuid.uuid4().hex}"


def mask_key_id(access_key_id: str) -> str:
    """`AKIA…WXYZ` for a full-length key id; short ids show only their last two characters."""
    if len(access_key_id) >= 16:
        return f"{access_key_id[:4]}…{access_key_id[-4:]}"
    return f"…{access_key_id[-2:]}"


def seal_profile(profile: StorageProfile, workspace_id: str, key: MasterKey, now: datetime) -> ProfileRecord:
    credentials = _Credentials(profile.access_key_id, profile.secret_access_key.reveal())
    return ProfileRecord(
        ref=profile.profile_id,
        workspace_id=workspace_id,
        bucket=profile.bucket,
        endpoint=profile.endpoint,
        region=profile.region,
        key_prefix=profile.key_prefix,
        encryption=profile.encryption,
        kms_key_id=profile.kms_key_id,
        masked_key_id=mask_key_id(profile.access_key_id),
        sealed_credentials=key.seal(msgspec.json.encode(credentials), profile.profile_id.encode()),
        created_at=now,
    )


def open_profile(record: ProfileRecord, key: MasterKey) -> StorageProfile:
    """The usable profile; UnknownProfile when this key (or this ref) does not open it."""
    try:
        plaintext = key.open(record.sealed_credentials, record.ref.encode())
    except (InvalidTag, ValueError):
        raise UnknownProfile(f"storage profile {record.ref!r} does not open with this master key") from None
    credentials = msgspec.json.decode(plaintext, type=_Credentials)
    return StorageProfile(
        profile_id=record.ref,
        provider="byos",
        bucket=record.bucket,
        endpoint=record.endpoint,
        region=record.region,
        key_prefix=record.key_prefix,
        encryption=record.encryption,
        kms_key_id=record.kms_key_id,
        access_key_id=credentials.access_key_id,
        secret_access_key=Secret(credentials.secret_access_key),
    )


async def profile_bucket(js: JetStreamContext, *, replicas: int) -> KeyValue:
    """The KV bucket of published profiles, created on first use (any service may be first)."""
    try:
        return await js.key_value(PROFILES_BUCKET)
    except BucketNotFoundError:
        pass
    config = js_api.KeyValueConfig(
        bucket=PROFILES_BUCKET,
        description="RawDrive BYOS storage profiles; credentials sealed with the master key",
        history=1,  # every version has its own key; a key is written once
        storage=js_api.StorageType.FILE,
        replicas=replicas,
    )
    try:
        return await js.create_key_value(config)
    except BadRequestError:  # another service created it between our look and our create
        return await js.key_value(PROFILES_BUCKET)


class ProfileResolver:
    """Resolves refs to open Storages: `managed`, or a published profile read from KV once,
    opened with the master key, and cached (refs never change meaning). Without a master key
    only `managed` resolves."""

    def __init__(
        self, managed: Storage, storages: StorageRegistry, kv: KeyValue, master_key: MasterKey | None
    ) -> None:
        self._managed = managed
        self._storages = storages
        self._kv = kv
        self._key = master_key
        self._profiles: dict[str, StorageProfile] = {}
        self._workspaces: dict[str, str] = {}  # ref -> workspace id, from the records read

    @property
    def managed(self) -> Storage:
        return self._managed

    @property
    def can_seal(self) -> bool:
        return self._key is not None

    async def __call__(self, ref: str) -> Storage:
        if ref == MANAGED_PROFILE_ID:
            return self._managed
        profile = self._profiles.get(ref)
        if profile is None:
            profile = self._profiles[ref] = await self._load(ref)
        return await self._storages.get(profile)

    async def publish(self, profile: StorageProfile, workspace_id: str, now: datetime) -> None:
        """Store a new profile version under its (new) ref; resolvable everywhere from then on."""
        if self._key is None:
            raise UnknownProfile("no storage master key is configured (RAWDRIVE_STORAGE_MASTER_KEY)")
        record = seal_profile(profile, workspace_id, self._key, now)
        try:
            await self._kv.create(record.ref, msgspec.json.encode(record))
        except _NATS_DOWN as error:
            raise StorageUnavailable(f"publish storage profile {record.ref}: {error!r}") from error

    async def published(self) -> list[tuple[str, StorageProfile]]:
        """Every published profile this key opens, with its workspace id (for sweeps)."""
        if self._key is None:
            return []
        try:
            refs = await self._kv.keys()
        except NoKeysError:
            return []
        except _NATS_DOWN as error:
            raise StorageUnavailable(f"list storage profiles: {error!r}") from error
        found = []
        for ref in refs:
            try:
                profile = self._profiles.get(ref) or await self._load(ref)
            except UnknownProfile:
                continue  # sealed with another key, or unreadable: not ours to sweep
            self._profiles[ref] = profile
            found.append((self._workspaces[ref], profile))
        return found

    async def _load(self, ref: str) -> StorageProfile:
        if self._key is None:
            raise UnknownProfile(f"storage profile {ref!r}: no storage master key is configured")
        try:
            entry = await self._kv.get(ref)
        except (KeyNotFoundError, InvalidKeyError):
            raise UnknownProfile(f"storage profile {ref!r} was never published") from None
        except _NATS_DOWN as error:
            raise StorageUnavailable(f"read storage profile {ref}: {error!r}") from error
        try:
            record = msgspec.json.decode(entry.value or b"", type=ProfileRecord)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            raise UnknownProfile(f"storage profile {ref!r} is unreadable: {error}") from None
        if record.ref != ref:
            raise UnknownProfile(f"storage profile {ref!r} holds the record of {record.ref!r}")
        self._workspaces[ref] = record.workspace_id
        return open_profile(record, self._key)


async def profile_resolver(js: JetStreamContext, settings: CommonSettings, storages: StorageRegistry) -> ProfileResolver:
    """The resolver every service uses, from its settings (master key optional)."""
    key = MasterKey.from_secret(settings.storage_master_key) if settings.storage_master_key else None
    managed = await storages.get(managed_storage_profile(settings))
    kv = await profile_bucket(js, replicas=settings.stream_replicas)
    return ProfileResolver(managed, storages, kv, key)
