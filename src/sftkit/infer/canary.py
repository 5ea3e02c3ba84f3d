"""Canary release: one server, two models, a sticky share of the users on the new one.

``sft serve NEW --canary-of OLD --share 0.1``. Requests that name OLD's model id (the one clients
already use) are split by user: a user whose routing key falls in the first ``share`` of the hash
space is answered by NEW, every other user by OLD. A request that names NEW's id always goes to NEW
(to try it on purpose). The response's ``model`` field says which model answered.

The routing key, in this order: the request's ``user`` field (OpenAI's end-user id), else the
``X-User-Id`` header, else the client's address. Behind a reverse proxy every client has the proxy's
address, so send one of the first two there (``X-Forwarded-For`` is not trusted: any client can
write it).

A key's bucket is the first 8 bytes of ``sha256("sftkit-canary\\0" + key)`` read as a fraction of
2**64: the same key lands in the same bucket on every request, after a restart and on every
replica, and a larger share keeps every user a smaller share had (a bucket below 0.1 is below 0.2),
so widening a canary never moves a user back.

Both models are loaded (memory for two), and each keeps its own request batcher: a slow or failing
canary cannot stall the stable model's batches.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

HEADER = "x-user-id"
_SALT = b"sftkit-canary\x00"
STABLE, CANARY = "stable", "canary"

S = TypeVar("S")


def bucket(key: str) -> float:
    """Where ``key`` falls in [0, 1): uniform over keys, fixed for a key."""
    digest = hashlib.sha256(_SALT + key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def routing_key(user: str | None, header: str | None, address: str | None) -> tuple[str, str]:
    """``(key, where it came from)``: the ``user`` field, the ``X-User-Id`` header, else the address."""
    if user:
        return user, "user"
    if header:
        return header, "header"
    return address or "", "address"


@dataclass(frozen=True, slots=True)
class Canary:
    """The new model of a canary release: its engine, the id it is served as, the share of users."""

    engine: Any
    name: str
    share: float
    aliases: set[str] = field(default_factory=set)


class UnknownModel(LookupError):
    def __init__(self, name: str, served: list[str]) -> None:
        super().__init__(name)
        self.name, self.served = name, served


@dataclass(frozen=True, slots=True)
class Routed(Generic[S]):
    server: S
    role: str  # STABLE or CANARY
    pinned: bool  # the request named the canary itself (not split by share)


class Pool(Generic[S]):
    """The models one server answers with: a stable one and, in a canary release, a new one.
    ``names`` maps each model's accepted ids (its served name and aliases) to it."""

    def __init__(self, stable: S, stable_ids: set[str], canary: S | None = None,
                 canary_ids: set[str] | None = None, share: float = 0.0) -> None:
        self.stable, self.canary, self.share = stable, canary, share
        self.stable_ids, self.canary_ids = set(stable_ids), set(canary_ids or ())

    @property
    def servers(self) -> list[S]:
        return [self.stable] if self.canary is None else [self.stable, self.canary]

    def role(self, server: S) -> str:
        return CANARY if server is self.canary and self.canary is not None else STABLE

    def pick(self, model: str, key: str) -> Routed[S]:
        if self.canary is not None and model in self.canary_ids:
            return Routed(self.canary, CANARY, True)
        if model not in self.stable_ids:
            raise UnknownModel(model, sorted(self.stable_ids | self.canary_ids))
        if self.canary is not None and bucket(key) < self.share:
            return Routed(self.canary, CANARY, False)
        return Routed(self.stable, STABLE, False)

    def find(self, model: str) -> S:
        """The model answering to the id ``model`` (``/v1/models/{id}``)."""
        if self.canary is not None and model in self.canary_ids:
            return self.canary
        if model in self.stable_ids:
            return self.stable
        raise UnknownModel(model, sorted(self.stable_ids | self.canary_ids))
