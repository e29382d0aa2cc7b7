"""Which bucket an event's `storage_profile_ref` names: the one way every service resolves it.

Events carry only the non-secret ref. `managed` is the platform's own bucket. Any other ref is a
bring-your-own-bucket profile version that the gateway published in the JetStream KV bucket
`PROFILES_BUCKET` under that ref: the non-secret fields plus the credentials sealed with
AES-256-GCM under the master key (RAWDRIVE_STORAGE_MASTER_KEY), with the ref as associated data
so a record copied under another ref does not open. A ref is never reused: a changed profile gets
a new ref, so uploads started under the old one still resolve it.

Retirement: when a workspace's profile is replaced or removed, the gateway marks the version it
superseded retired (`retired_at`, outside the sealed part). The janitor deletes a retired
version's record once no open session and no asset (live or soft-deleted) names it any more
(`ProfileVersions`); the current version is never retired, so it never goes.

Rotating the master key (deploy/k8s/README.md has the steps): keys in
RAWDRIVE_STORAGE_PREVIOUS_MASTER_KEYS open but never seal, so every service can open records
sealed under the old key and the new one while the change rolls out; `reseal_profiles`
(`python -m rawdrive_platform.provision --reseal-profiles`) then seals every record under the
current key, and the old key can go. Re-sealing rewrites a record's ciphertext only; its ref and
what it resolves to stay the same.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nats.errors import ConnectionClosedError, NoServersError
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    InvalidKeyError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)
from nats.js.kv import KeyValue

from rawdrive_platform.config import CommonSettings, Secret
from rawdrive_platform.storage import (
    MANAGED_PROFILE_ID,
    Encryption,
    EndpointPolicy,
    Storage,
    StorageProfile,
    StorageRegistry,
    StorageUnavailable,
    endpoint_policy,
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
    """The AES-256-GCM keys that seal profile credentials: the current key seals and opens;
    the others, kept while a rotation is under way, only open. Never printed."""

    __slots__ = ("_current", "_previous")

    def __init__(self, key: bytes, previous: Sequence[bytes] = ()) -> None:
        if any(len(k) != MASTER_KEY_BYTES for k in (key, *previous)):
            raise ValueError(f"a storage master key must be {MASTER_KEY_BYTES} bytes")
        self._current = AESGCM(key)
        self._previous = tuple(AESGCM(k) for k in previous)

    @classmethod
    def from_secret(cls, secret: Secret, previous: Secret | None = None) -> MasterKey:
        """From RAWDRIVE_STORAGE_MASTER_KEY (32 bytes, standard base64) and, during a rotation,
        RAWDRIVE_STORAGE_PREVIOUS_MASTER_KEYS (keys of the same form, comma-separated)."""
        olds = [text for text in previous.reveal().split(",") if text.strip()] if previous else []
        return cls(
            _decode_key(secret.reveal(), "RAWDRIVE_STORAGE_MASTER_KEY"),
            [_decode_key(text, "RAWDRIVE_STORAGE_PREVIOUS_MASTER_KEYS") for text in olds],
        )

    @classmethod
    def generate(cls) -> str:
        """A new key as RAWDRIVE_STORAGE_MASTER_KEY expects it."""
        return base64.b64encode(AESGCM.generate_key(bit_length=8 * MASTER_KEY_BYTES)).decode()

    def seal(self, plaintext: bytes, associated: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._current.encrypt(nonce, plaintext, associated)

    def open(self, sealed: bytes, associated: bytes) -> bytes:
        """Raises InvalidTag when no key opens it (another key, another ref, tampered bytes)."""
        for aead in (self._current, *self._previous):
            try:
                return aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], associated)
            except InvalidTag:
                continue
        raise InvalidTag

    def reseal(self, sealed: bytes, associated: bytes) -> bytes | None:
        """`sealed` sealed anew under the current key; None if it already is. Raises InvalidTag
        when no key opens it."""
        try:
            self._current.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], associated)
            return None
        except InvalidTag:
            return self.seal(self.open(sealed, associated), associated)

    def __repr__(self) -> str:
        return "MasterKey('***')"


def _decode_key(text: str, variable: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{variable} is not valid base64") from None
    if len(key) != MASTER_KEY_BYTES:
        raise ValueError(f"{variable}: a key must be {MASTER_KEY_BYTES} bytes, not {len(key)}")
    return key


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
    # Set once the workspace's profile moved on from this version; never cleared.
    retired_at: datetime | None = None


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


def open_profile(record: ProfileRecord, key: MasterKey, policy: EndpointPolicy = EndpointPolicy()) -> StorageProfile:
    """The usable profile, its endpoint held to `policy`; UnknownProfile when this key (or this
    ref) does not open it."""
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
        endpoint_policy=policy,
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
        history=1,  # every version has its own key: written once, and rewritten only to reseal
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
        self,
        managed: Storage,
        storages: StorageRegistry,
        kv: KeyValue,
        master_key: MasterKey | None,
        policy: EndpointPolicy = EndpointPolicy(),
    ) -> None:
        self._managed = managed
        self.endpoint_policy = policy
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

    async def retire(self, ref: str, now: datetime) -> bool:
        """Mark the version under `ref` retired (the workspace no longer uses it); whether this
        call did. Needs no master key: `retired_at` is not sealed."""
        return await retire_profile(self._kv, ref, now)

    async def published(self) -> list[tuple[str, StorageProfile]]:
        """Every published profile this key opens, with its workspace id (for sweeps)."""
        if self._key is None:
            return []
        found = []
        for ref in await _published_refs(self._kv):
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
        record, _ = await _read_record(self._kv, ref)
        self._workspaces[ref] = record.workspace_id
        return open_profile(record, self._key, self.endpoint_policy)


async def _published_refs(kv: KeyValue, attempts: int = 5) -> list[str]:
    """Every published ref. nats-py's `keys()` now and then ends before the first key arrives
    and lists nothing (here: 3 listings of 300); when the bucket holds messages, an empty
    listing is asked again. (Only the empty case: the early end comes before any key or not at
    all. A bucket of nothing but delete markers stays empty after the last attempt.)"""
    refs: list[str] = []
    try:
        for _ in range(attempts):
            try:
                refs = await kv.keys()
            except NoKeysError:
                refs = []
            if refs or (await kv.status()).values == 0:
                return refs
    except _NATS_DOWN as error:
        raise StorageUnavailable(f"list storage profiles: {error!r}") from error
    return refs


async def _read_record(kv: KeyValue, ref: str) -> tuple[ProfileRecord, int]:
    """The record published under `ref` and its KV revision; UnknownProfile if there is none
    or it is unreadable."""
    try:
        entry = await kv.get(ref)
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
    return record, entry.revision or 0


async def retire_profile(kv: KeyValue, ref: str, now: datetime, attempts: int = 3) -> bool:
    """Set `retired_at` on the record under `ref`; False when it already was, or when there is
    no readable record to retire. Written only over the revision read, as resealing is."""
    for _ in range(attempts):
        try:
            record, revision = await _read_record(kv, ref)
        except UnknownProfile:
            return False
        if record.retired_at is not None:
            return False
        try:
            await kv.update(ref, msgspec.json.encode(msgspec.structs.replace(record, retired_at=now)), last=revision)
            return True
        except KeyWrongLastSequenceError:
            continue  # resealed since we read it: look again
        except _NATS_DOWN as error:
            raise StorageUnavailable(f"retire storage profile {ref}: {error!r}") from error
    raise StorageUnavailable(f"storage profile {ref} changed {attempts} times while being retired")


class ProfileVersion(msgspec.Struct, frozen=True, kw_only=True):
    """A published version as the janitor weighs it: no credentials, no master key needed."""

    ref: str
    workspace_id: str
    retired_at: datetime | None
    revision: int  # the KV revision read; a deletion takes this one and nothing written later


class ProfileVersions:
    """The janitor's view of the bucket's records: list them unopened, and delete a version's
    record. Deletion goes through the stream's purge API, filtered to the version's key and
    bounded by the revision read, so the janitor can remove records but never write one (its
    NATS row has no `$KV.` publish) and a record rewritten since it was read stays."""

    def __init__(self, js: JetStreamContext, kv: KeyValue) -> None:
        self._js = js
        self._kv = kv

    async def listing(self) -> list[ProfileVersion]:
        versions = []
        for ref in await _published_refs(self._kv):
            try:
                record, revision = await _read_record(self._kv, ref)
            except UnknownProfile:
                continue  # gone since listed, or unreadable: nothing to decide on
            versions.append(
                ProfileVersion(ref=ref, workspace_id=record.workspace_id, retired_at=record.retired_at, revision=revision)
            )
        return versions

    async def delete(self, version: ProfileVersion) -> None:
        """Remove the record (and its history) from the bucket; idempotent."""
        try:
            await self._js.purge_stream(
                f"KV_{PROFILES_BUCKET}", subject=f"$KV.{PROFILES_BUCKET}.{version.ref}", seq=version.revision + 1
            )
        except (*_NATS_DOWN, NatsError) as error:
            raise StorageUnavailable(f"delete storage profile {version.ref}: {error!r}") from error


def reseal_record(record: ProfileRecord, key: MasterKey) -> ProfileRecord | None:
    """The record with its credentials sealed under the current key; None if they already are.
    UnknownProfile when none of the keys opens it."""
    try:
        sealed = key.reseal(record.sealed_credentials, record.ref.encode())
    except (InvalidTag, ValueError):
        raise UnknownProfile(f"storage profile {record.ref!r} does not open with any configured master key") from None
    return None if sealed is None else msgspec.structs.replace(record, sealed_credentials=sealed)


class ResealReport(msgspec.Struct):
    resealed: list[str] = msgspec.field(default_factory=list)  # refs now under the current key
    current: int = 0  # records that already were
    unopened: list[str] = msgspec.field(default_factory=list)  # refs no configured key opens


async def reseal_profiles(kv: KeyValue, key: MasterKey) -> ResealReport:
    """Seal every published profile under the current master key, so previous keys can go.

    Safe beside running services and safe to repeat: a record is replaced only if nobody wrote
    it since it was read, and it resolves to the same profile after. `unopened` lists records
    no configured key opens: drop no key while it is not empty.
    """
    report = ResealReport()
    for ref in await _published_refs(kv):
        try:
            rewritten = await _reseal_one(kv, key, ref)
        except UnknownProfile:
            report.unopened.append(ref)
            continue
        if rewritten:
            report.resealed.append(ref)
        else:
            report.current += 1
    return report


async def _reseal_one(kv: KeyValue, key: MasterKey, ref: str, attempts: int = 3) -> bool:
    """Whether the record under `ref` had to be rewritten to be under the current key."""
    for _ in range(attempts):
        record, revision = await _read_record(kv, ref)
        resealed = reseal_record(record, key)
        if resealed is None:
            return False
        try:
            await kv.update(ref, msgspec.json.encode(resealed), last=revision)
            return True
        except KeyWrongLastSequenceError:
            continue  # written since we read it (another reseal): look again
        except _NATS_DOWN as error:
            raise StorageUnavailable(f"reseal storage profile {ref}: {error!r}") from error
    raise StorageUnavailable(f"storage profile {ref} changed {attempts} times while being resealed")


def master_key(current: Secret | None, previous: Secret | None) -> MasterKey | None:
    """RAWDRIVE_STORAGE_MASTER_KEY with any RAWDRIVE_STORAGE_PREVIOUS_MASTER_KEYS; None when
    neither is set. ValueError (naming the variable, never the value) when they are malformed."""
    if current is None:
        if previous is not None:
            raise ValueError("RAWDRIVE_STORAGE_PREVIOUS_MASTER_KEYS needs RAWDRIVE_STORAGE_MASTER_KEY")
        return None
    return MasterKey.from_secret(current, previous)


async def profile_resolver(js: JetStreamContext, settings: CommonSettings, storages: StorageRegistry) -> ProfileResolver:
    """The resolver every service uses, from its settings (master key optional)."""
    key = master_key(settings.storage_master_key, settings.storage_previous_master_keys)
    managed = await storages.get(managed_storage_profile(settings))
    kv = await profile_bucket(js, replicas=settings.stream_replicas)
    return ProfileResolver(managed, storages, kv, key, endpoint_policy(settings))
