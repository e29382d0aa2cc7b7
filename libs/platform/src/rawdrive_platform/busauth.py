"""Who may do what on the bus: THE table of NATS identities and what each may publish and read.

NATS refuses anonymous clients. Each service connects as its own user (RAWDRIVE_NATS_USER,
RAWDRIVE_NATS_PASSWORD) and may publish only the events it owns (each event type names its
publisher in rawdrive_contracts), read only its own durable consumers, and touch the
storage-profile KV bucket only as far as it needs to. The provisioning identity creates streams,
consumers and the KV bucket (and an operator uses it for dead letters). `IDENTITIES` is the one
place the rest is written down; everything else renders it:

- `server_config` — the nats-server configuration the dev stack and the test fixtures run;
- `helm_authorization` — `config.merge.authorization` of deploy/k8s/nats/values.yaml, with each
  password read from a Secret by the server (`make deploy-check` fails when the two disagree);
- the Deployments' RAWDRIVE_NATS_USER names the row their service connects as.

A service that publishes outside its row gets a permissions violation, its publish is never
acknowledged (PublishFailed), and a test fails.
"""

from __future__ import annotations

import json
import re
import secrets
import urllib.parse
from collections.abc import Mapping
from typing import Literal

import msgspec

from rawdrive_contracts import ASSETS_STREAM, EVENT_TYPES, UPLOADS_STREAM, EventSpec, subject_filter
from rawdrive_contracts.subjects import SUBJECT_ROOT

# Literal rather than imported: profiles.py and bus.py own these names, and test_busauth checks
# they still agree (importing them here would pull the storage stack into the deploy check).
PROFILES_BUCKET = "rawdrive_storage_profiles"
PROFILES_KV_STREAM = f"KV_{PROFILES_BUCKET}"
DEADLETTER_STREAM = "RAWDRIVE_DEADLETTER"
JS_API = "$JS.API"

# none: no access. read: fetch a profile by its ref (verifier, processor: they open the bucket an
# event names). prune: read and enumerate every ref, and delete a version's record through the
# bucket stream's purge API, never write one (the janitor: sweeps, retired versions).
# write: read and publish new profile versions, and mark replaced ones retired (the gateway).
ProfileAccess = Literal["none", "read", "prune", "write"]


class Durable(msgspec.Struct, frozen=True):
    """A durable pull consumer an identity creates and reads."""

    stream: str
    name: str


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    user: str
    consumes: tuple[Durable, ...] = ()
    profiles: ProfileAccess = "none"
    # Streams it reads through ephemeral, unacknowledged push consumers it names: a live view.
    follows: tuple[str, ...] = ()
    # Streams, consumers, the KV bucket, dead-letter list/replay/drop: the provisioning Job and
    # an operator, never a running service.
    provisions: bool = False

    @property
    def publishes(self) -> tuple[EventSpec, ...]:
        """The event types whose declared publisher (rawdrive_contracts) is this identity."""
        return tuple(spec for event_type, spec in EVENT_TYPES.items() if event_type.publisher == self.user)


PROVISION = "provision"
IDENTITIES: tuple[Identity, ...] = (
    Identity(
        user="upload-gateway",
        consumes=(
            Durable(UPLOADS_STREAM.name, "upload-gateway-verdicts"),
            Durable(ASSETS_STREAM.name, "upload-gateway-catalogue"),
        ),
        profiles="write",
        follows=(ASSETS_STREAM.name,),  # the upload console's live feed of a workspace's assets
    ),
    Identity(
        user="commit-verifier",
        consumes=(Durable(UPLOADS_STREAM.name, "commit-verifier"),),
        profiles="read",
    ),
    Identity(
        user="media-processor",
        consumes=(Durable(UPLOADS_STREAM.name, "media-processor"),),
        # Reads and writes BYOS buckets, so it opens the profile an upload names; never writes one.
        profiles="read",
    ),
    Identity(
        user="janitor",
        consumes=(
            Durable(UPLOADS_STREAM.name, "janitor-uploads"),
            Durable(ASSETS_STREAM.name, "janitor-assets"),
        ),
        profiles="prune",
    ),
    Identity(user=PROVISION, provisions=True),
)
USERS: tuple[str, ...] = tuple(identity.user for identity in IDENTITIES)


class Permissions(msgspec.Struct, frozen=True):
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    # Refused although `publish` allows it (the server's deny wins): what following a stream would
    # otherwise let it do to the table's durables on that stream.
    publish_deny: tuple[str, ...] = ()


def identity(user: str) -> Identity:
    for found in IDENTITIES:
        if found.user == user:
            return found
    raise LookupError(f"no NATS identity {user!r}; known: {', '.join(USERS)}")


def inbox_prefix(user: str) -> str:
    """Each identity's replies (JetStream API answers, pulled messages) arrive under its own
    prefix, so no client can subscribe to another's."""
    return f"_INBOX_{user}"


def _consumer_subjects(durable: Durable) -> list[str]:
    s, d = durable.stream, durable.name
    return [
        # nats-py creates a durable by the legacy subject; newer clients by name (+ filter).
        f"{JS_API}.CONSUMER.DURABLE.CREATE.{s}.{d}",
        f"{JS_API}.CONSUMER.CREATE.{s}.{d}",
        f"{JS_API}.CONSUMER.CREATE.{s}.{d}.>",
        f"{JS_API}.CONSUMER.INFO.{s}.{d}",
        f"{JS_API}.CONSUMER.MSG.NEXT.{s}.{d}",
        f"$JS.ACK.{s}.{d}.>",  # ack, nak, in-progress, term
    ]


def _named_consumer_subjects(stream: str) -> list[str]:
    """A follower's ephemeral push consumers of `stream`, each created under a name the follower
    chooses (`CONSUMER.CREATE.<stream>.<name>`, with a filter token or not), deleted when done, flow
    control answered. Never the unnamed `CONSUMER.CREATE.<stream>`: its body may name any consumer,
    and the server redefines that one, which no subject deny can see."""
    return [
        f"{JS_API}.CONSUMER.CREATE.{stream}.*",
        f"{JS_API}.CONSUMER.CREATE.{stream}.*.>",
        f"{JS_API}.CONSUMER.DELETE.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


def _ordered_consumer_subjects(stream: str) -> list[str]:
    # nats-py's ordered consumer (the janitor's keys() over the bucket): created without a name
    # (the unnamed subject, so only on a stream where no durable lives), recreated (and the old one
    # deleted) on a gap, flow control answered.
    return [
        f"{JS_API}.CONSUMER.CREATE.{stream}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.>",
        f"{JS_API}.CONSUMER.INFO.{stream}.>",
        f"{JS_API}.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _durable_guard_subjects(who: Identity, stream: str) -> list[str]:
    """What an identity following `stream` may not do to the durables the table names on it.
    Its consumers' names are its own choice, so the allow covers every consumer name of the
    stream; without this a compromised follower could delete or redefine another service's durable
    (the janitor's, silently stopping purges) or its own. It still creates (and updates) its own
    at start (_consumer_subjects), never deletes one: that is the provisioning identity's."""
    found = []
    for owner in IDENTITIES:
        for durable in owner.consumes:
            if durable.stream != stream:
                continue
            s, d = durable.stream, durable.name
            if durable not in who.consumes:
                found += [
                    f"{JS_API}.CONSUMER.CREATE.{s}.{d}",
                    f"{JS_API}.CONSUMER.CREATE.{s}.{d}.>",
                    f"{JS_API}.CONSUMER.DURABLE.CREATE.{s}.{d}",
                ]
            found.append(f"{JS_API}.CONSUMER.DELETE.{s}.{d}")
    return found


def _profile_subjects(access: ProfileAccess) -> list[str]:
    if access == "none":
        return []
    found = [
        f"{JS_API}.STREAM.INFO.{PROFILES_KV_STREAM}",
        f"{JS_API}.DIRECT.GET.{PROFILES_KV_STREAM}.$KV.{PROFILES_BUCKET}.>",
        f"{JS_API}.STREAM.MSG.GET.{PROFILES_KV_STREAM}",
    ]
    if access == "prune":
        # keys() runs nats-py's ordered consumer over the bucket's stream, where no durable lives.
        found += _ordered_consumer_subjects(PROFILES_KV_STREAM)
        found.append(f"{JS_API}.STREAM.PURGE.{PROFILES_KV_STREAM}")
    if access == "write":
        found.append(f"$KV.{PROFILES_BUCKET}.>")
    return found


def permissions(who: Identity) -> Permissions:
    """What `who` may publish and subscribe to; everything else the server refuses."""
    subscribe = (f"{inbox_prefix(who.user)}.>",)
    if who.provisions:
        return Permissions(
            publish=(
                f"{JS_API}.>",
                f"$KV.{PROFILES_BUCKET}.>",  # re-sealing profiles
                # Flow control of its ordered consumers: re-sealing's KV watch, `rawdrive events`.
                "$JS.FC.>",
                f"{SUBJECT_ROOT}.>",  # replaying a dead letter republishes the original
            ),
            subscribe=subscribe,
        )
    publish = [subject_filter(spec) for spec in who.publishes]
    for durable in who.consumes:
        publish += _consumer_subjects(durable)
    if who.consumes:
        # The dead-letter gauge of each consumer is read from the stream's per-subject counts.
        publish.append(f"{JS_API}.STREAM.INFO.{DEADLETTER_STREAM}")
    deny = []
    for stream in who.follows:
        publish += _named_consumer_subjects(stream)
        deny += _durable_guard_subjects(who, stream)
    publish += _profile_subjects(who.profiles)
    return Permissions(
        publish=tuple(dict.fromkeys(publish)), subscribe=subscribe, publish_deny=tuple(dict.fromkeys(deny))
    )


# ---------------------------------------------------------------------------------------------
# Renderings


def authorization(passwords: Mapping[str, str], *, superuser: tuple[str, str] | None = None) -> dict:
    """nats-server's `authorization` block: every identity with its password and permissions.
    `superuser` (user, password) may do anything: test fixtures only, to stand up and inspect."""
    missing = [user for user in USERS if user not in passwords]
    if missing:
        raise ValueError(f"no password for NATS users: {', '.join(missing)}")
    users: list[dict] = []
    for who in IDENTITIES:
        allowed = permissions(who)
        publish: dict[str, list[str]] = {"allow": list(allowed.publish)}
        if allowed.publish_deny:
            publish["deny"] = list(allowed.publish_deny)
        users.append({
            "user": who.user,
            "password": passwords[who.user],
            "permissions": {"publish": publish, "subscribe": {"allow": list(allowed.subscribe)}},
        })
    if superuser is not None:
        users.append({"user": superuser[0], "password": superuser[1]})
    return {"users": users}


def server_config(passwords: Mapping[str, str], *, superuser: tuple[str, str] | None = None) -> str:
    """A nats-server configuration file (JSON is valid NATS configuration; every string is quoted,
    so `$JS...` subjects are not read as variables). Ports and JetStream come from the command line."""
    return "authorization: " + json.dumps(authorization(passwords, superuser=superuser), indent=2) + "\n"


def password_variable(user: str) -> str:
    """The nats-server container's environment variable holding `user`'s password (Helm values)."""
    return "NATS_PASSWORD_" + re.sub(r"[^A-Z0-9]", "_", user.upper())


def helm_authorization() -> dict:
    """`config.merge.authorization` for the official NATS chart: the same users and permissions,
    each password `<< $NATS_PASSWORD_<USER> >>` (the chart emits it unquoted, so the server reads
    the variable, which `container.env` takes from a Secret)."""
    block = authorization({user: f"<< ${password_variable(user)} >>" for user in USERS})
    return block


class BusUsers(msgspec.Struct, frozen=True):
    """The passwords of every identity on one NATS server (dev stack, test fixtures), and an
    optional superuser (user, password) for test set-up and inspection only."""

    passwords: dict[str, str]
    superuser: tuple[str, str] | None = None

    @classmethod
    def generate(cls, *, superuser: bool = False) -> BusUsers:
        return cls(
            passwords={user: secrets.token_hex(24) for user in USERS},
            superuser=("superuser", secrets.token_hex(24)) if superuser else None,
        )

    def env(self, user: str) -> dict[str, str]:
        """The RAWDRIVE_* variables that make a process connect as `user`."""
        return {"RAWDRIVE_NATS_USER": user, "RAWDRIVE_NATS_PASSWORD": self.passwords[user]}

    def url(self, base_url: str, user: str) -> str:
        """`base_url` carrying `user`'s credentials (nats://user:password@host:port); a cluster's
        comma-separated URLs each carry them."""
        password = self.superuser[1] if self.superuser and user == self.superuser[0] else self.passwords[user]
        credentials = f"{urllib.parse.quote(user)}:{urllib.parse.quote(password)}@"
        with_credentials = []
        for url in base_url.split(","):
            parts = urllib.parse.urlsplit(url.strip())
            with_credentials.append(parts._replace(netloc=credentials + parts.netloc.rpartition("@")[2]).geturl())
        return ",".join(with_credentials)

    def config(self) -> str:
        return server_config(self.passwords, superuser=self.superuser)


def helm_values() -> dict:
    """The part of deploy/k8s/nats/values.yaml this table decides: the users and permissions, and
    the server container's password variables, each from the Secret `rawdrive-nats-users` in the
    NATS namespace (one key per user, the same passwords as `rawdrive-nats` in RawDrive's)."""
    return {
        "config": {"merge": {"authorization": helm_authorization()}},
        "container": {"env": {
            password_variable(user): {"valueFrom": {"secretKeyRef": {"name": "rawdrive-nats-users", "key": user}}}
            for user in USERS
        }},
    }


def main() -> None:
    """`python -m rawdrive_platform.busauth`: print `helm_values()` as YAML, to paste into
    deploy/k8s/nats/values.yaml after changing the table."""
    import yaml

    print(yaml.safe_dump(helm_values(), sort_keys=False, width=200), end="")


if __name__ == "__main__":
    main()
