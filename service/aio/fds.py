"""File descriptors: use all the process may, and keep a reserve.

At start `serve` and `agent` raise the soft ``RLIMIT_NOFILE`` to the hard limit. Descriptors
are handed out lowest first, so a new socket's number tells how close the process is to
the limit: the forwarding paths refuse new connections once a socket's number enters the
last `reserve()` descriptors, which stay for the API (DELETE, /healthz) and for the
connections already open.
"""

from __future__ import annotations

import resource

__all__ = ["near_limit", "raise_nofile_limit", "reserve", "soft_limit"]

_soft = 0


def raise_nofile_limit() -> int:
    """Raise the soft limit to the hard one (where allowed); return the soft limit."""
    global _soft
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # a container may not allow it: keep what we have
    _soft = soft
    return soft


def soft_limit() -> int:
    global _soft
    if not _soft:
        _soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return _soft


def reserve() -> int:
    """Descriptors kept free for the API and open connections: 5 %, at least 32."""
    return max(32, soft_limit() // 20)


def near_limit(fileno: int) -> bool:
    """Whether a socket numbered ``fileno`` is among the last `reserve()` descriptors."""
    return fileno >= soft_limit() - reserve()
