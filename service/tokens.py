"""Static bearer tokens, in kube-apiserver's ``--token-auth-file`` format, for the API
(`podgate serve --token-file`) and the agent (`podgate agent --token-file`)::

    token,user,uid[,"group1,group2"]

A member of ``podgate:admin`` sees every session through the API.
"""

from __future__ import annotations

import csv
import hmac
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ADMIN_GROUP", "Caller", "TokenFile", "TokenFileError", "bearer_token"]

ADMIN_GROUP = "podgate:admin"


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

    @classmethod
    def of(
        cls, user: str, uid: str, groups: tuple[str, ...], *, from_cluster: bool = False
    ) -> Caller:
        return cls(user, uid, groups, sees_all=ADMIN_GROUP in groups, from_cluster=from_cluster)

    @property
    def owner(self) -> str:
        """What sessions it creates record as their owner."""
        return self.user

    def may_see(self, owner: str) -> bool:
        return self.sees_all or owner == self.user


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
            listed = row[3].split(",") if len(row) > 3 else []
            groups = tuple(g.strip() for g in listed if g.strip())
            token = row[0].strip().encode()
            if token in self._callers:
                raise TokenFileError(f"{path}:{number}: the token of line {number} is repeated")
            self._callers[token] = Caller.of(row[1].strip(), row[2].strip(), groups)
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


def bearer_token(authorization: str) -> str:
    """The token of an ``Authorization: Bearer TOKEN`` value ("" when there is none)."""
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
