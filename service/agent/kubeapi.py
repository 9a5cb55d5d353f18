"""The read-only slice of the Kubernetes API that port-forward clients read.

Only what kubectl and client libraries fetch before forwarding: discovery documents and
GET on a pod. This is an emulation for a node without an API server, kept minimal on
purpose; it is not a general API server.
"""

from __future__ import annotations

from typing import Any

from service.agent.registry import PodEntry

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
    return status(
        404,
        "NotFound",
        f'pods "{name}" not found',
        {"name": name, "kind": "pods"},
    )


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


def api_group_list() -> dict[str, Any]:
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}


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
        ],
    }


def pod(entry: PodEntry) -> dict[str, Any]:
    ready = "True" if entry.phase == "Running" else "False"
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": entry.name,
            "namespace": entry.namespace,
            "uid": entry.uid,
            "resourceVersion": "1",
            "creationTimestamp": "2026-01-01T00:00:00Z",
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
            "conditions": [{"type": "Ready", "status": ready}],
            "containerStatuses": [{"name": "main", "ready": ready == "True", "restartCount": 0}],
        },
    }
