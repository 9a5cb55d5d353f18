"""The read-only slice of the Kubernetes API that port-forward clients read.

Only what kubectl and client libraries fetch before forwarding, answered from the
registry file. This is an emulation for a node without an API server, kept minimal on
purpose; it is not a general API server:

- discovery: ``/version``, ``/api``, ``/api/v1`` (pods, pods/portforward, services),
  ``/apis`` (the ``apps`` group only) and ``/apis/apps/v1`` (deployments, statefulsets,
  replicasets), legacy (unaggregated) documents only, which kubectl accepts;
- ``GET /api/v1/namespaces/{ns}/pods/{name}``;
- ``GET /api/v1/namespaces/{ns}/pods?labelSelector=a=b,c=d``: a PodList. Only equality
  selectors (``a=b``, ``a==b``) are understood; anything else (``!=``, ``in``, ``notin``,
  bare keys), ``fieldSelector`` and ``watch`` get a 400 Status saying so;
- ``GET /api/v1/namespaces/{ns}/services/{name}``: selector and ports only;
- ``GET /apis/apps/v1/namespaces/{ns}/{deployments|statefulsets|replicasets}/{name}``:
  ``spec.selector.matchLabels`` (and the matching template labels) only.

No status beyond the pod's phase and Ready condition, no lists of other kinds, no writes,
no watches. Objects carry fixed resourceVersions and timestamps.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from service.agent.registry import (
    WORKLOAD_KINDS,
    PodEntry,
    PodRegistry,
    ServiceEntry,
    WorkloadEntry,
)

NODE_NAME = "podgate-agent"
GIT_VERSION = "v1.33.0-podgate"


def status(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A metav1.Status, the body Kubernetes clients parse on errors."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def pod_not_found(namespace: str, name: str) -> dict[str, Any]:
    return not_found("pods", name)


def not_found(resource: str, name: str, group: str = "") -> dict[str, Any]:
    """The API server's 404 for a named object; ``details.kind`` is the resource."""
    details = {"name": name, "kind": resource}
    if group:
        details["group"] = group
    qualified = f"{resource}.{group}" if group else resource
    return status(404, "NotFound", f'{qualified} "{name}" not found', details)


def bad_request(message: str) -> dict[str, Any]:
    return status(400, "BadRequest", message)


def version() -> dict[str, Any]:
    return {
        "major": "1",
        "minor": "33",
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def api_versions() -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    }


_APPS_VERSION = {"groupVersion": "apps/v1", "version": "v1"}


def apps_group() -> dict[str, Any]:
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": "apps",
        "versions": [_APPS_VERSION],
        "preferredVersion": _APPS_VERSION,
    }


def api_group_list() -> dict[str, Any]:
    group = apps_group()
    del group["kind"], group["apiVersion"]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}


def apps_v1_resources() -> dict[str, Any]:
    short = {"deployments": ["deploy"], "statefulsets": ["sts"], "replicasets": ["rs"]}
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "apps/v1",
        "resources": [
            {
                "name": resource,
                "singularName": kind.lower(),
                "namespaced": True,
                "kind": kind,
                "verbs": ["get"],
                "shortNames": short[resource],
                "categories": ["all"],
            }
            for kind, resource in WORKLOAD_KINDS.items()
        ],
    }


def core_v1_resources() -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {
                "name": "pods",
                "singularName": "pod",
                "namespaced": True,
                "kind": "Pod",
                "verbs": ["get", "list"],
                "shortNames": ["po"],
                "categories": ["all"],
            },
            {
                "name": "pods/portforward",
                "singularName": "",
                "namespaced": True,
                "kind": "PodPortForwardOptions",
                "verbs": ["create", "get"],
            },
            {
                "name": "services",
                "singularName": "service",
                "namespaced": True,
                "kind": "Service",
                "verbs": ["get"],
                "shortNames": ["svc"],
                "categories": ["all"],
            },
        ],
    }


_CREATED = "2026-01-01T00:00:00Z"


def pod(entry: PodEntry) -> dict[str, Any]:
    ready = "True" if entry.phase == "Running" and entry.ready else "False"
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": entry.name,
            "namespace": entry.namespace,
            "uid": entry.uid,
            "resourceVersion": "1",
            "creationTimestamp": _CREATED,
            "labels": dict(entry.labels),
        },
        "spec": {
            "nodeName": NODE_NAME,
            "containers": [
                {
                    "name": "main",
                    "image": "podgate/agent-pod",
                    "ports": [p.to_json() for p in entry.ports],
                }
            ],
        },
        "status": {
            "phase": entry.phase,
            "conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": _CREATED}],
            # image and imageID are required fields: typed clients (the official Python
            # client) refuse a container status without them.
            "containerStatuses": [
                {
                    "name": "main",
                    "image": "podgate/agent-pod",
                    "imageID": "",
                    "ready": ready == "True",
                    "restartCount": 0,
                }
            ],
        },
    }


def pod_list(entries: list[PodEntry]) -> dict[str, Any]:
    items = []
    for entry in entries:
        item = pod(entry)
        del item["kind"], item["apiVersion"]  # list items carry neither, as in the API
        items.append(item)
    return {
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "1"},
        "items": items,
    }


def service(entry: ServiceEntry) -> dict[str, Any]:
    ports = []
    for port in entry.ports:
        out: dict[str, Any] = {
            "protocol": port.protocol,
            "port": port.port,
            "targetPort": port.target_port,
        }
        if port.name:
            out["name"] = port.name
        ports.append(out)
    spec: dict[str, Any] = {"ports": ports, "type": "ClusterIP"}
    if entry.selector:
        spec["selector"] = dict(entry.selector)
    if entry.cluster_ip is not None:
        spec["clusterIP"] = entry.cluster_ip
    return {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": _metadata(entry.namespace, entry.name, "service"),
        "spec": spec,
    }


def workload(entry: WorkloadEntry) -> dict[str, Any]:
    return {
        "kind": entry.kind,
        "apiVersion": "apps/v1",
        "metadata": _metadata(entry.namespace, entry.name, entry.kind),
        "spec": {
            "selector": {"matchLabels": dict(entry.selector)},
            "template": {"metadata": {"labels": dict(entry.selector)}},
        },
    }


def _metadata(namespace: str, name: str, kind: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"podgate/{kind}/{namespace}/{name}")),
        "resourceVersion": "1",
        "creationTimestamp": _CREATED,
    }


_NAME = r"[^/?]+"
_NAMESPACED = rf"^/(?P<prefix>api/v1|apis/apps/v1)/namespaces/(?P<ns>{_NAME})/(?P<resource>{_NAME})"
_OBJECT = re.compile(_NAMESPACED + rf"/(?P<name>{_NAME})$")
_LIST = re.compile(_NAMESPACED + "$")
_EQUALITY = re.compile(r"^([A-Za-z0-9._/-]+)\s*==?\s*([A-Za-z0-9._-]*)$")


def parse_equality_selector(text: str) -> dict[str, str] | None:
    """``a=b,c==d`` as a mapping; None when it uses anything but equality."""
    selector: dict[str, str] = {}
    for term in filter(None, (t.strip() for t in text.split(","))):
        match = _EQUALITY.match(term)
        if match is None or "!" in term:
            return None
        selector[match[1]] = match[2]
    return selector


def answer_get(registry: PodRegistry, path: str, query: str) -> tuple[int, dict[str, Any]] | None:
    """The answer to a GET the server's fixed routes do not cover, or None (a plain 404)."""
    if path == "/apis/apps":
        return 200, apps_group()
    if path == "/apis/apps/v1":
        return 200, apps_v1_resources()
    match = _OBJECT.match(path)
    if match:
        return _get_object(registry, match["prefix"], match["ns"], match["resource"], match["name"])
    match = _LIST.match(path)
    if match and (match["prefix"], match["resource"]) == ("api/v1", "pods"):
        return _list_pods(registry, match["ns"], parse_qs(query, keep_blank_values=True))
    return None


def _get_object(
    registry: PodRegistry, prefix: str, namespace: str, resource: str, name: str
) -> tuple[int, dict[str, Any]] | None:
    if prefix == "api/v1" and resource == "services":
        found = registry.service(namespace, name)
        return (200, service(found)) if found else (404, not_found("services", name))
    if prefix == "apis/apps/v1" and resource in WORKLOAD_KINDS.values():
        entry = registry.workload(namespace, resource, name)
        return (200, workload(entry)) if entry else (404, not_found(resource, name, "apps"))
    return None


def _list_pods(
    registry: PodRegistry, namespace: str, query: Mapping[str, list[str]]
) -> tuple[int, dict[str, Any]]:
    for unsupported in ("watch", "fieldSelector"):
        values = query.get(unsupported, [])
        if any(v not in ("", "false", "0") for v in values):
            return 400, bad_request(f"{unsupported} is not supported by this agent")
    text = ",".join(query.get("labelSelector", []))
    selector = parse_equality_selector(text)
    if selector is None:
        return 400, bad_request(
            f"unable to parse label selector {text!r}: this agent supports only equality "
            "selectors such as a=b,c=d"
        )
    return 200, pod_list(registry.matching(namespace, selector))
