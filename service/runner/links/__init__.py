"""The client transports, one module each (the agent's `agent/sessions/` has the same
names), all implementing `Link` (`base.py`):

- `spdy`: one HTTP/1.1 upgrade to SPDY/3.1, every connection a stream pair;
- `wstunnel`: the same SPDY link inside a WebSocket (`websocket`);
- `wschannel`: a v4 channel WebSocket per connection (`ws-channel`);
- `h2`: podgate's own HTTP/2 link to a podgate agent.

`DIALERS` maps each requested `Transport` to the function that dials it; `auto` is the
tunnel, then SPDY on a refused upgrade, as kubectl 1.31+ decides.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from service.model import Transport
from service.runner.links import h2, spdy, wschannel, wstunnel
from service.runner.links.base import Link, LinkDialer, LinkHooks
from service.upstream import Cluster, TunnelRefused

__all__ = ["DIALERS", "Link", "LinkDialer", "LinkHooks", "dial_auto"]

log = logging.getLogger("podgate.runner")


async def dial_auto(cluster: Cluster, namespace: str, pod: str, hooks: LinkHooks) -> Link:
    """The WebSocket tunnel; on any refused upgrade (a 403 too, but not a TCP or TLS
    error) plain SPDY, exactly as kubectl falls back."""
    try:
        return await wstunnel.dial(cluster, namespace, pod, hooks)
    except TunnelRefused as exc:
        log.info("pod %s/%s: tunnel refused, using SPDY: %s", namespace, pod, exc)
    return await spdy.dial(cluster, namespace, pod, hooks)


DIALERS: Mapping[Transport, LinkDialer] = {
    Transport.AUTO: dial_auto,
    Transport.SPDY: spdy.dial,
    Transport.WEBSOCKET: wstunnel.dial,
    Transport.WS_CHANNEL: wschannel.dial,
    Transport.H2: h2.dial,
}
