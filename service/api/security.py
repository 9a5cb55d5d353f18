"""Who may call the API, and who owns what (README "Security").

- No authentication configured (allowed on loopback only): every caller is the same local
  user; sessions have no owner ("").
- ``--token-file``: kube-apiserver's static token file, ``token,user,uid[,"g1,g2"]``.
- ``--auth kubernetes``: a bearer token is checked with a TokenReview against the cluster
  podgate serves; creating a session needs ``get pods`` and ``create pods/portforward`` in
  its namespace, checked with SubjectAccessReviews as the caller.

A caller sees, reads and deletes only the sessions it owns, except members of the group
``podgate:admin``, who see all. Answers are cached for a few seconds, so that a page that
polls does not cost the API server a review per request.
"""

from __future__ import annotations

import csv
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.upstream import Cluster, UpstreamError

__all__ = [
    "ADMIN_GROUP",
    "ANONYMOUS",
    "Authenticator",
    "Caller",
    "KubernetesReviews",
    "TokenFile",
    "TokenFileError",
]

log = logging.getLogger("podgate.api")

ADMIN_GROUP = "podgate:admin"
#: How long a TokenReview or SubjectAccessReview answer is reused.
REVIEW_TTL = 10.0
#: Answers kept at most (the least recently used go first).
REVIEW_CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated user (or, without authentication, the one local user)."""

    user: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    #: Sees every session: no authentication is configured, or a member of podgate:admin.
    sees_all: bool = False
    #: Authenticated by the cluster (TokenReview): what it may create the cluster says.
    from_cluster: bool = False

    @property
    def owner(self) -> str:
        """What sessions it creates record as their owner."""
        return self.user

    def may_see(self, owner: str) -> bool:
        return self.sees_all or owner == self.user


#: The caller when no authentication is configured.
ANONYMOUS = Caller(user="", sees_all=True)


def _caller(user: str, uid: str, groups: tuple[str, ...], *, from_cluster: bool = False) -> Caller:
    return Caller(user, uid, groups, sees_all=ADMIN_GROUP in groups, from_cluster=from_cluster)


class TokenFileError(ValueError):
    """A token file that cannot be used; the message names the line."""


class TokenFile:
    """kube-apiserver's ``--token-auth-file`` format: ``token,user,uid[,"g1,g2,…"]``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._callers: dict[bytes, Caller] = {}
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenFileError(f"cannot read the token file {path}: {exc.strerror}") from None
        for number, row in enumerate(csv.reader(text.splitlines()), start=1):
            if not row or not "".join(row).strip() or row[0].startswith("#"):
                continue
            # A user that is blank once stripped would own what nobody owns ("", the
            # sessions of podgate without authentication).
            if len(row) < 3 or not row[0].strip() or not row[1].strip():
                raise TokenFileError(f'{path}:{number}: expected token,user,uid[,"group1,group2"]')
            groups = (
                tuple(g.strip() for g in row[3].split(",") if g.strip()) if len(row) > 3 else ()
            )
            token = row[0].strip().encode()
            if token in self._callers:
                raise TokenFileError(f"{path}:{number}: the token of line {number} is repeated")
            self._callers[token] = _caller(row[1].strip(), row[2].strip(), groups)
        if not self._callers:
            raise TokenFileError(f"the token file {path} has no token")

    def __len__(self) -> int:
        return len(self._callers)

    def lookup(self, token: str) -> Caller | None:
        presented = token.encode()
        found = None
        for known, caller in self._callers.items():  # every entry: no early exit to time
            if hmac.compare_digest(known, presented):
                found = caller
        return found


class _TtlCache:
    def __init__(self) -> None:
        self._entries: OrderedDict[Any, tuple[float, Any]] = OrderedDict()

    def get(self, key: Any) -> tuple[bool, Any]:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return False, None
        self._entries.move_to_end(key)
        return True, entry[1]

    def put(self, key: Any, value: Any) -> None:
        self._entries[key] = (time.monotonic() + REVIEW_TTL, value)
        self._entries.move_to_end(key)
        while len(self._entries) > REVIEW_CACHE_SIZE:
            self._entries.popitem(last=False)


class KubernetesReviews:
    """TokenReview and SubjectAccessReview against the cluster podgate serves."""

    def __init__(self, cluster: Callable[[], Awaitable[Cluster]]) -> None:
        self._cluster = cluster
        self._tokens = _TtlCache()
        self._access = _TtlCache()

    async def authenticate(self, token: str) -> Caller | None:
        hit, cached = self._tokens.get(token)
        if hit:
            return cached  # type: ignore[no-any-return]
        cluster = await self._cluster()
        review = await cluster.create(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token},
            },
        )
        status = review.get("status") or {}
        caller = None
        if status.get("authenticated"):
            user = status.get("user") or {}
            caller = _caller(
                str(user.get("username") or ""),
                str(user.get("uid") or ""),
                tuple(str(g) for g in user.get("groups") or ()),
                from_cluster=True,
            )
        self._tokens.put(token, caller)
        return caller

    async def missing_permission(self, caller: Caller, namespace: str) -> str | None:
        """What the caller may not do of what a session needs in ``namespace`` (kubectl's
        port-forward: get the pod, create its portforward subresource), or None."""
        for verb, resource, subresource in (("get", "pods", ""), ("create", "pods", "portforward")):
            key = (caller, namespace, verb, resource, subresource)
            hit, allowed = self._access.get(key)
            if not hit:
                allowed = await self._review(caller, namespace, verb, resource, subresource)
                self._access.put(key, allowed)
            if not allowed:
                what = f"{resource}/{subresource}" if subresource else resource
                return f'{verb} "{what}" in namespace "{namespace}"'
        return None

    async def _review(
        self, caller: Caller, namespace: str, verb: str, resource: str, subresource: str
    ) -> bool:
        attributes = {"namespace": namespace, "verb": verb, "resource": resource}
        if subresource:
            attributes["subresource"] = subresource
        cluster = await self._cluster()
        review = await cluster.create(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": caller.user,
                    "uid": caller.uid,
                    "groups": list(caller.groups),
                    "resourceAttributes": attributes,
                },
            },
        )
        return bool((review.get("status") or {}).get("allowed"))


class Authenticator:
    """The API's view: from a bearer token to a `Caller`, and the create check."""

    def __init__(self, tokens: TokenFile | None, reviews: KubernetesReviews | None) -> None:
        self.tokens = tokens
        self.reviews = reviews

    @property
    def enabled(self) -> bool:
        return self.tokens is not None or self.reviews is not None

    def describe(self) -> str:
        """For the start-up log line."""
        parts = []
        if self.tokens is not None:
            parts.append(f"bearer tokens from {self.tokens.path} ({len(self.tokens)} tokens)")
        if self.reviews is not None:
            parts.append("bearer tokens checked by the cluster (TokenReview, SubjectAccessReview)")
        return " and ".join(parts) if parts else "none (loopback only)"

    async def caller(self, token: str) -> Caller | None:
        """The caller a token stands for, or None (unknown, expired, refused)."""
        if self.tokens is not None:
            found = self.tokens.lookup(token)
            if found is not None or self.reviews is None:
                return found
        if self.reviews is not None:
            try:
                return await self.reviews.authenticate(token)
            except UpstreamError as exc:
                log.warning("TokenReview failed: %s", exc)
                raise
        return None

    async def may_create(self, caller: Caller, namespace: str) -> str | None:
        """The permission the caller lacks to create a session in ``namespace``, or None.
        The cluster decides for its users (``--auth kubernetes``); token-file users and the
        local user without authentication may create."""
        if self.reviews is None or not caller.from_cluster:
            return None
        return await self.reviews.missing_permission(caller, namespace)
