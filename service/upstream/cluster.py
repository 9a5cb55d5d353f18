"""One cluster endpoint and its credentials, loaded the way kubernetes_asyncio does it
(protocols.md §6), plus the two requests port-forward needs: GET pod and the upgrade."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import functools
import json
import logging
import os
import ssl
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.configuration import Configuration

from service.protocols.websocket import ChannelClient, TunnelClient

from .endpoint import auth_headers, build_ssl_context, describe_connect_error, portforward_url
from .errors import (
    PodNotFound,
    PodNotRunning,
    UpstreamError,
    WatchExpired,
    WatchRefused,
    describe_http_error,
    parse_status,
)
from .upgrade import UpgradedConnection, dial_spdy
from .websocket import WebSocketConnection, connect_raw, dial_websocket

__all__ = ["DEFAULT_TIMEOUT", "WATCH_TIMEOUT", "Cluster", "PodInfo", "user_agent"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 15.0
REFRESH_INTERVAL = 60.0
# kubernetes_asyncio treats a token as expired this long before its expirationTimestamp.
_EXPIRY_SKEW = datetime.timedelta(minutes=5)
_MAX_POD_BODY = 4 * 1024 * 1024
_MAX_LIST_BODY = 32 * 1024 * 1024
_MAX_WATCH_ERROR_BODY = 64 * 1024
#: How long one watch request lasts before the server ends it (the caller watches again).
WATCH_TIMEOUT = 300


@functools.cache  # Why: importlib.metadata re-reads the package metadata on every call.
def user_agent() -> str:
    try:
        version = metadata.version("podgate")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    return f"podgate/{version}"


@dataclass(frozen=True)
class PodInfo:
    name: str
    namespace: str
    phase: str
    uid: str
    container_ports: list[dict[str, Any]]  # raw spec.containers[].ports, all containers
    resource_version: str = ""  # where a watch of this pod starts
    deleting: bool = False  # Terminating: metadata.deletionTimestamp is set

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PodInfo:
        metadata_ = data.get("metadata") or {}
        spec = data.get("spec") or {}
        ports: list[dict[str, Any]] = []
        for container in spec.get("containers") or []:
            ports.extend(p for p in container.get("ports") or [] if isinstance(p, dict))
        return cls(
            name=str(metadata_.get("name", "")),
            namespace=str(metadata_.get("namespace", "")),
            phase=str((data.get("status") or {}).get("phase") or "Unknown"),
            uid=str(metadata_.get("uid", "")),
            container_ports=ports,
            resource_version=str(metadata_.get("resourceVersion") or ""),
            deleting=bool(metadata_.get("deletionTimestamp")),
        )


def _existing_kubeconfigs(spec: str) -> list[str]:
    """The files of a ``:``-separated kubeconfig list that exist (missing ones are skipped)."""
    paths = [os.path.expanduser(p) for p in spec.split(os.pathsep) if p]
    return [p for p in paths if os.path.exists(p)]


class Cluster:
    """One cluster endpoint + credentials, from a kubeconfig (path/context) or in-cluster."""

    def __init__(
        self,
        cfg: Any,
        loader: Any | None = None,
        *,
        source: str,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._cfg: Any = cfg
        self._loader: Any = loader
        self._source = source
        self._timeout = timeout
        # Why raw aiohttp: the generated client would load ~800 model modules (+38 MB RSS).
        self._session: aiohttp.ClientSession | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._credential_lock = asyncio.Lock()

    # ------------------------------------------------------------------ loading

    @classmethod
    async def load(cls, kubeconfig: str | None = None, context: str | None = None) -> Cluster:
        """Load ``kubeconfig`` (else ``$KUBECONFIG``, else ``~/.kube/config``); when no such
        file exists and no path was given, fall back to the in-cluster service account.

        Starts no background task; see :meth:`start_refresh`.
        """
        cfg = Configuration()
        explicit = kubeconfig is not None
        origin = "kubeconfig" if explicit else "$KUBECONFIG"
        spec = kubeconfig or os.environ.get("KUBECONFIG") or ""
        if not spec:
            origin = "default kubeconfig"
            spec = k8s_config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION
        paths = _existing_kubeconfigs(spec)
        if paths:
            try:
                loader = await k8s_config.load_kube_config(
                    config_file=os.pathsep.join(paths),
                    context=context,
                    client_configuration=cfg,
                    persist_config=False,
                )
            except Exception as exc:  # the loader raises ConfigException, KeyError, YAML errors…
                what = f"context {context!r} of " if context else ""
                raise UpstreamError(
                    f"cannot load {what}kubeconfig {spec}: {_describe(exc)}", retryable=False
                ) from exc
            return cls(cfg, loader, source=f"kubeconfig {spec}")
        if explicit:
            raise UpstreamError(f"kubeconfig {spec} does not exist", retryable=False)
        if context is not None:
            raise UpstreamError(
                f"context {context!r} requested but no kubeconfig exists at {spec} ({origin})",
                retryable=False,
            )
        load_incluster: Any = k8s_config.load_incluster_config
        try:
            load_incluster(client_configuration=cfg)
        except Exception as exc:
            raise UpstreamError(
                f"no cluster configured: no kubeconfig at {spec} ({origin}) and no in-cluster "
                f"service account ({_describe(exc)})",
                retryable=False,
            ) from exc
        return cls(cfg, None, source="in-cluster service account")

    @classmethod
    def for_agent(cls, url: str, credentials: Cluster | None = None) -> Cluster:
        """A `podgate agent` at ``url`` as a dial target, with the credentials (token or
        client certificate) and certificate authority of ``credentials`` (a kubeconfig
        context describing the agent), or none."""
        if credentials is not None:
            cfg = copy.copy(credentials.configuration)
            cfg.api_key = dict(cfg.api_key)
            loader, source = credentials._loader, f"agent {url} ({credentials.source})"
        else:
            cfg, loader, source = Configuration(), None, f"agent {url}"
        cfg.host = url.rstrip("/")
        return cls(cfg, loader, source=source)

    # ------------------------------------------------------------------ properties

    @property
    def server(self) -> str:
        """The API server URL, with any path prefix, e.g. ``https://127.0.0.1:6443/prefix``."""
        return str(self._cfg.host)

    @property
    def source(self) -> str:
        """Where the configuration came from, for messages."""
        return self._source

    @property
    def configuration(self) -> Any:
        """The kubernetes_asyncio Configuration (for other dialers)."""
        return self._cfg

    # ------------------------------------------------------------------ requests

    async def get_pod(self, namespace: str, name: str) -> PodInfo:
        """GET the pod; 404 → :class:`PodNotFound`. Does not check the phase."""
        url = portforward_url(self.server, namespace, name).removesuffix("/portforward")
        data = await self._read_object("pods", url, self._path("api/v1", namespace, "pods", name))
        if data is None:
            raise PodNotFound(namespace, name)
        return PodInfo.from_json(data)

    async def require_running(self, namespace: str, name: str) -> PodInfo:
        """:meth:`get_pod`, then kubectl's check: ``status.phase`` must be Running."""
        pod = await self.get_pod(namespace, name)
        if pod.phase != "Running":
            raise PodNotRunning(namespace, name, pod.phase)
        return pod

    # The read-only calls target resolution needs (service/upstream/resolve.py). Each is
    # bounded by the cluster timeout like get_pod and returns the raw JSON object.

    async def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        """GET the Service (raw JSON); None when the API server says it does not exist."""
        url = f"{self.server}/api/v1/namespaces/{namespace}/services/{name}"
        return await self._read_object(
            "services", url, self._path("api/v1", namespace, "services", name)
        )

    async def get_endpoints(self, namespace: str, name: str) -> dict[str, Any] | None:
        """GET the Endpoints of a Service (raw JSON); None when they do not exist."""
        url = f"{self.server}/api/v1/namespaces/{namespace}/endpoints/{name}"
        return await self._read_object(
            "endpoints", url, self._path("api/v1", namespace, "endpoints", name)
        )

    async def get_workload(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """GET an apps/v1 Deployment, StatefulSet or ReplicaSet (``kind`` lowercase, as in
        :data:`service.upstream.targets.KINDS`); None when it does not exist."""
        resources = {
            "deployment": "deployments",
            "statefulset": "statefulsets",
            "replicaset": "replicasets",
        }
        if kind not in resources:
            raise ValueError(f"not an apps/v1 workload kind: {kind!r}")
        resource = resources[kind]
        url = f"{self.server}/apis/apps/v1/namespaces/{namespace}/{resource}/{name}"
        return await self._read_object(
            resource, url, self._path("apis/apps/v1", namespace, resource, name)
        )

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """LIST the pods of ``namespace`` matching ``label_selector`` (``a=b,c=d``); raw JSON
        items, in the order the API server returned them."""
        url = f"{self.server}/api/v1/namespaces/{namespace}/pods?labelSelector={label_selector}"
        data = await self._read_object(
            "pods",
            url,
            self._path("api/v1", namespace, "pods")
            + "?"
            + urlencode({"labelSelector": label_selector}),
            limit=_MAX_LIST_BODY,
        )
        if data is None:  # a 404 naming pods: the namespace has none
            return []
        items = data.get("items")
        if not isinstance(items, list):
            raise UpstreamError(f"GET {url} returned a list without items", retryable=False)
        return [item for item in items if isinstance(item, dict)]

    @contextlib.contextmanager
    def _connect_errors(self, url: str, doing: str) -> Iterator[None]:
        """The time-out (while ``doing``) and the connection failures of a request to
        ``url`` as UpstreamErrors; other errors pass, for the caller to word."""
        try:
            yield
        except TimeoutError:
            raise UpstreamError(
                f"timed out after {self._timeout:g} s {doing} {url}", retryable=True
            ) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise describe_connect_error(exc.certificate_error, url) from exc
        except aiohttp.ClientConnectorError as exc:
            raise describe_connect_error(exc.os_error, url) from exc

    async def _request(
        self, url: str, path: str, limit: int, *, method: str = "GET", body: bytes | None = None
    ) -> tuple[int, str, bytes]:
        """``method path`` with get_pod's bounds and error mapping; ``(status, reason,
        body)`` for any HTTP answer (the body cut at ``limit``)."""
        try:
            with self._connect_errors(url, "on GET"):
                async with asyncio.timeout(self._timeout):
                    await self._fresh_credentials()
                    timeout = aiohttp.ClientTimeout(total=self._timeout)
                    response = await self._send(method, path, timeout, body)
                    try:
                        body = await _read_bounded(response.content, limit)
                    finally:
                        response.release()
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"GET {url} failed: {_describe(exc)}", retryable=True) from exc
        except OSError as exc:
            raise describe_connect_error(exc, url) from exc
        return int(response.status), str(response.reason or ""), body

    async def _read_object(
        self,
        resource: str,
        url: str,
        path: str,
        *,
        limit: int = _MAX_POD_BODY,
    ) -> dict[str, Any] | None:
        """Run one read request with get_pod's bounds and error mapping; None for a 404
        whose Status names ``resource`` (the object does not exist)."""
        status, reason, body = await self._request(url, path, limit)
        if status == 404 and _names_kind(body, resource):
            return None
        if not 200 <= status < 300:
            text = describe_http_error(status, reason, body)
            raise UpstreamError(f"GET {url}: {text}", status=status)
        try:
            data = json.loads(body)
        except ValueError:
            raise UpstreamError(
                f"GET {url} returned {status} with a body that is not JSON", status=status
            ) from None
        if not isinstance(data, dict):
            raise UpstreamError(f"GET {url} returned an unexpected body", status=status)
        return data

    async def list_pod(self, namespace: str, name: str) -> tuple[PodInfo | None, str]:
        """LIST the pods named ``name`` (a field selector, as client-go's reflector does):
        ``(the pod or None, the list's resourceVersion)``. A watch from that version is
        served even when the pod's own version is older than the server's watch cache (after
        an API server restart a watch from it gets 410 Gone)."""
        items, version = await self.list_pods_raw(namespace, f"metadata.name={name}")
        pods = [PodInfo.from_json(item) for item in items]
        return (pods[0] if pods else None), version

    def _pods_path(self, namespace: str | None) -> str:
        """``/api/v1/namespaces/NS/pods``, or ``/api/v1/pods`` for every namespace."""
        return "/api/v1/pods" if namespace is None else self._path("api/v1", namespace, "pods")

    async def list_pods_raw(
        self, namespace: str | None, field_selector: str = ""
    ) -> tuple[list[dict[str, Any]], str]:
        """LIST the pods of ``namespace`` (None: every namespace) matching
        ``field_selector``: ``(raw JSON items, the list's resourceVersion)``."""
        path = self._pods_path(namespace)
        if field_selector:
            path += "?" + urlencode({"fieldSelector": field_selector})
        url = self.server + path
        data = await self._read_object("pods", url, path, limit=_MAX_LIST_BODY)
        if data is None:
            return [], ""
        items = data.get("items")
        if not isinstance(items, list):
            raise UpstreamError(f"GET {url} returned a list without items", retryable=False)
        version = (data.get("metadata") or {}).get("resourceVersion")
        return [item for item in items if isinstance(item, dict)], str(version or "")

    async def check_portforward(self, namespace: str, pod: str) -> None:
        """GET …/pods/{pod}/portforward without an upgrade: the API server authorizes the
        request (and finds the pod) before it answers 400 "Upgrade request required", so a
        401/403/404 here is what every upgrade would get. For transports that dial per
        connection (ws-channel), which would otherwise only learn it per connection."""
        url = portforward_url(self.server, namespace, pod)
        path = self._path("api/v1", namespace, "pods", pod) + "/portforward"
        status, reason, body = await self._request(url, path, _MAX_WATCH_ERROR_BODY)
        if status == 404 and _names_kind(body, "pods"):
            raise PodNotFound(namespace, pod)
        if status in (401, 403, 404) or status >= 500 or status in (408, 429):
            text = describe_http_error(status, reason, body)
            raise UpstreamError(f"GET {url}: {text}", status=status)

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` (JSON) to ``path`` and return the object the server answers
        (TokenReview, SubjectAccessReview: nothing is stored)."""
        url = self.server + path
        status, reason, answer = await self._request(
            url, path, _MAX_POD_BODY, method="POST", body=json.dumps(body).encode()
        )
        if not 200 <= status < 300:
            text = describe_http_error(status, reason, answer)
            raise UpstreamError(f"POST {url}: {text}", status=status)
        try:
            data = json.loads(answer)
        except ValueError:
            raise UpstreamError(f"POST {url} returned a body that is not JSON") from None
        if not isinstance(data, dict):
            raise UpstreamError(f"POST {url} returned an unexpected body")
        return data

    async def ready(self) -> bool:
        """Whether the API server answers ``GET /readyz`` with 200 (a server that does not
        serve /readyz, such as podgate's agent, counts as ready once it answers at all)."""
        try:
            status, _, _ = await self._request(f"{self.server}/readyz", "/readyz", 4096)
        except UpstreamError:
            return False
        return status == 200 or (400 <= status < 500 and status not in (408, 429))

    def watch_pod(
        self,
        namespace: str,
        name: str,
        *,
        resource_version: str = "",
        timeout_seconds: int = WATCH_TIMEOUT,
    ) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        """Watch one pod: ``GET …/pods?watch=true&fieldSelector=metadata.name=NAME``
        (see `watch_pods`)."""
        return self.watch_pods(
            namespace,
            f"metadata.name={name}",
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
        )

    async def watch_pods(
        self,
        namespace: str | None,
        field_selector: str = "",
        *,
        resource_version: str = "",
        timeout_seconds: int = WATCH_TIMEOUT,
    ) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        """Watch the pods of ``namespace`` (None: every namespace) that match
        ``field_selector``.

        Yields ``(type, object)`` (ADDED, MODIFIED, DELETED, BOOKMARK; raw JSON), from
        ``resource_version`` on when given. Ends when the server ends the watch (after
        ``timeout_seconds``). Raises :class:`WatchRefused` when the request is answered
        with an HTTP error (the server will not serve this watch: podgate's agent answers
        400, an RBAC role without ``watch`` 403), :class:`WatchExpired` for 410 Gone, and
        :class:`UpstreamError` for connection failures and malformed events.

        The request is kubernetes_asyncio's, but the stream is read here rather than with
        ``watch.Watch``: that one reads an error answer as events and re-requests forever
        on an empty body; here the status is checked first and nothing is retried.
        """
        path = self._pods_path(namespace)
        url = f"{self.server}{path}?watch=true"
        try:
            with self._connect_errors(url, "opening the watch"):
                async with asyncio.timeout(self._timeout):
                    await self._fresh_credentials()
                    query: dict[str, str] = {"allowWatchBookmarks": "true"}
                    if field_selector:
                        query["fieldSelector"] = field_selector
                    if resource_version:
                        query["resourceVersion"] = resource_version
                    query |= {"timeoutSeconds": str(timeout_seconds), "watch": "true"}
                    response = await self._get(
                        path + "?" + urlencode(query),
                        aiohttp.ClientTimeout(
                            sock_connect=self._timeout, sock_read=timeout_seconds + self._timeout
                        ),
                    )
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"watch {url} failed: {_describe(exc)}", retryable=True) from exc
        try:
            status = int(response.status)
            if not 200 <= status < 300:
                body = await _read_bounded(response.content, _MAX_WATCH_ERROR_BODY)
                text = describe_http_error(status, str(response.reason or ""), body)
                if status == 410:
                    raise WatchExpired(f"watch {url}: {text}")
                raise WatchRefused(f"watch {url}: {text}", status=status)
            while True:
                try:
                    line = await response.content.readline()
                except (aiohttp.ClientError, OSError, ValueError, TimeoutError) as exc:
                    raise UpstreamError(f"watch {url} broke: {_describe(exc)}") from exc
                if not line:
                    return  # the server ended the watch
                if not line.strip():
                    continue
                yield _watch_event(line, url)
        finally:
            response.close()

    def _path(self, prefix: str, namespace: str, resource: str, name: str = "") -> str:
        """``/prefix/namespaces/NS/resource[/name]``, each segment quoted like the generated
        client (nothing safe)."""
        path = f"/{prefix}/namespaces/{quote(namespace, safe='')}/{resource}"
        return f"{path}/{quote(name, safe='')}" if name else path

    async def _get(self, path_query: str, timeout: aiohttp.ClientTimeout) -> Any:
        return await self._send("GET", path_query, timeout)

    async def _send(
        self,
        method: str,
        path_query: str,
        timeout: aiohttp.ClientTimeout,
        body: bytes | None = None,
    ) -> Any:
        """``method server + path_query`` the way the generated REST client did: same TLS
        context, auth header, proxy settings and ``Accept``/``Content-Type``; unread body."""
        cfg = self._cfg
        if self._session is None:
            ssl_context = build_ssl_context(cfg, ())
            connector = aiohttp.TCPConnector(limit=cfg.connection_pool_maxsize, ssl=ssl_context)
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=True, read_bufsize=2**21
            )
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": user_agent(),
            **dict(await auth_headers(cfg)),
        }
        kwargs: dict[str, Any] = {}
        if cfg.proxy:
            kwargs["proxy"] = cfg.proxy
        if cfg.proxy_headers:
            kwargs["proxy_headers"] = cfg.proxy_headers
        if cfg.tls_server_name:
            kwargs["server_hostname"] = cfg.tls_server_name
        return await self._session.request(
            method, self.server + path_query, headers=headers, timeout=timeout, data=body, **kwargs
        )

    async def upgrade_spdy(
        self,
        namespace: str,
        pod: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> UpgradedConnection:
        """POST …/pods/{pod}/portforward with ``Upgrade: SPDY/3.1`` (protocols.md §1.1).

        The returned transport has reading paused: install your protocol with
        ``conn.attach(protocol)``, or ``set_protocol`` + feed ``leftover`` +
        ``transport.resume_reading()``.
        """
        url = portforward_url(self.server, namespace, pod)
        headers, ssl_context, deadline = await self._prepare(url, timeout)
        return await dial_spdy(
            url,
            headers=headers,
            ssl_context=ssl_context,
            server_hostname=self._cfg.tls_server_name or None,
            timeout=timeout,
            deadline=deadline,  # one bound for credentials + connect + TLS + answer
        )

    async def _prepare(
        self, url: str, timeout: float, alpn: tuple[str, ...] = ("http/1.1",)
    ) -> tuple[list[tuple[str, str]], ssl.SSLContext | None, float]:
        """Fresh request headers (auth read per dial), the TLS context and the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if getattr(self._cfg, "proxy", None):
            raise UpstreamError(
                f"the cluster is configured with proxy-url {self._cfg.proxy}; "
                "port-forward through a proxy is not supported",
                retryable=False,
            )
        try:
            async with asyncio.timeout_at(deadline):
                await self._fresh_credentials()
                headers = [("User-Agent", user_agent()), *await auth_headers(self._cfg)]
        except TimeoutError:
            raise UpstreamError(
                f"timed out after {timeout:g} s refreshing credentials for {url}",
                retryable=True,
            ) from None
        tls = url.startswith(("https:", "wss:"))
        ssl_context = build_ssl_context(self._cfg, alpn) if tls else None
        return headers, ssl_context, deadline

    async def upgrade_tunnel(
        self, namespace: str, pod: str, *, timeout: float = DEFAULT_TIMEOUT
    ) -> WebSocketConnection:
        """GET …/portforward as a WebSocket offering `SPDY/3.1+portforward.k8s.io` (§3).

        Raises TunnelRefused (fall back to SPDY) when the server answered otherwise.
        """
        url = portforward_url(self.server, namespace, pod)
        headers, ssl_context, deadline = await self._prepare(url, timeout)
        return await dial_websocket(
            url,
            lambda ep: TunnelClient(ep.host_header, ep.target, headers),
            ssl_context=ssl_context,
            server_hostname=self._cfg.tls_server_name or None,
            deadline=deadline,
        )

    async def open_channel(
        self, namespace: str, pod: str, ports: list[int], *, timeout: float = DEFAULT_TIMEOUT
    ) -> WebSocketConnection:
        """GET …/portforward?ports=… as a v4.channel.k8s.io WebSocket (§2)."""
        url = portforward_url(self.server, namespace, pod)
        headers, ssl_context, deadline = await self._prepare(url, timeout)
        return await dial_websocket(
            url,
            lambda ep: ChannelClient(ep.host_header, ep.target, ports, extra_headers=headers),
            ssl_context=ssl_context,
            server_hostname=self._cfg.tls_server_name or None,
            deadline=deadline,
        )

    async def connect_h2(
        self, *, timeout: float = DEFAULT_TIMEOUT
    ) -> tuple[asyncio.Transport, list[tuple[str, str]]]:
        """A connection for podgate's own HTTP/2 link (§5.2): h2c with prior knowledge on
        http://, ALPN h2 on https://. Returns it (reading paused) and the request headers."""
        headers, ssl_context, deadline = await self._prepare(self.server, timeout, ("h2",))
        transport = await connect_raw(
            self.server,
            ssl_context=ssl_context,
            server_hostname=self._cfg.tls_server_name or None,
            deadline=deadline,
        )
        return transport, headers

    # ------------------------------------------------------------------ credentials

    def _exec_token_expired(self) -> bool:
        loader = self._loader
        if loader is None or loader._user is None or "exec" not in loader._user:
            return False
        expiry = getattr(loader, "exec_plugin_expiry", None)
        if not isinstance(expiry, datetime.datetime):
            return False  # no expiry: the token stays valid; the refresh task re-runs the plugin
        if expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=datetime.UTC)
        return expiry - _EXPIRY_SKEW <= datetime.datetime.now(datetime.UTC)

    async def _fresh_credentials(self) -> None:
        """Re-run an exec plugin whose token has expired, before a request needs it."""
        if not self._exec_token_expired():
            return
        async with self._credential_lock:
            if not self._exec_token_expired():
                return
            try:
                await self._loader.load_from_exec_plugin()
            except Exception as exc:
                raise UpstreamError(
                    f"the exec credential plugin failed: {_describe(exc)}", retryable=True
                ) from exc
            self._cfg.api_key["BearerToken"] = self._loader.token

    def _uses_refreshable_token(self) -> bool:
        loader = self._loader
        if loader is None:
            return False
        if loader.provider in ("gcp", "oidc"):
            return True
        return loader._user is not None and "exec" in loader._user

    def start_refresh(self) -> None:
        """Keep exec/GCP/OIDC tokens fresh in the background (no-op for other credentials)."""
        if self._refresh_task is not None or not self._uses_refreshable_token():
            return
        self._refresh_task = asyncio.create_task(
            self._refresh_loop(), name=f"podgate-token-refresh[{self._source}]"
        )

    async def _refresh_loop(self) -> None:
        loader = self._loader
        while True:  # each branch sleeps before it refreshes, so a failure never spins
            try:
                if loader.provider == "oidc":
                    # refresh_token() does not cover OIDC; reloading refreshes an expired one.
                    await asyncio.sleep(REFRESH_INTERVAL)
                    await loader.load_and_set(self._cfg)
                else:
                    # Loops forever for exec/GCP; returns only when there is nothing to do.
                    await k8s_config.refresh_token(loader, self._cfg, interval=REFRESH_INTERVAL)
                    return
            except Exception as exc:
                log.warning("token refresh for %s failed: %s", self._source, _describe(exc))

    async def close(self) -> None:
        """Stop the refresh task and close the HTTP client."""
        task, self._refresh_task = self._refresh_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def _read_bounded(stream: Any, limit: int) -> bytes:
    body = bytearray()
    while len(body) < limit and (chunk := await stream.read(limit - len(body))):
        body += chunk
    return bytes(body)


def _watch_event(line: bytes, url: str) -> tuple[str, dict[str, Any]]:
    """One line of a watch stream as (type, object); an ERROR event raises."""
    try:
        event = json.loads(line)
    except ValueError:
        raise UpstreamError(f"watch {url} sent a line that is not JSON") from None
    kind = event.get("type") if isinstance(event, dict) else None
    obj = event.get("object") if isinstance(event, dict) else None
    if not isinstance(kind, str) or not isinstance(obj, dict):
        raise UpstreamError(f"watch {url} sent an event without type or object")
    if kind == "ERROR":
        message = f"watch {url}: {obj.get('code')} {obj.get('reason')}: {obj.get('message')}"
        if obj.get("code") == 410:
            raise WatchExpired(message)
        raise UpstreamError(message)
    return kind, obj


def _names_kind(body: bytes, resource: str) -> bool:
    """Whether a 404 is the API server's "<resource> ... not found" rather than a wrong URL."""
    details = (parse_status(body) or {}).get("details")
    return isinstance(details, dict) and details.get("kind") == resource


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__
