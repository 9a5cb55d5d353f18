"""Targets as kubectl names them (TYPE/NAME), and the pure parts of resolving them: the pod
order kubectl's GetFirstPod uses and label selectors as query strings."""

from __future__ import annotations

from typing import Any

import pytest

from service.upstream.resolve import InvalidTarget, format_label_selector, pod_rank
from service.upstream.targets import Target, TargetError, parse_target

ACCEPTED = [
    ("web", "pod", "web"),
    ("pod/web", "pod", "web"),
    ("po/web", "pod", "web"),
    ("pods/web", "pod", "web"),
    ("Pod/web", "pod", "web"),
    ("svc/web", "service", "web"),
    ("service/web", "service", "web"),
    ("services/web", "service", "web"),
    ("service.v1./web", "service", "web"),  # RESOURCE.VERSION.GROUP with the core group
    ("deploy/web", "deployment", "web"),
    ("deployment/web", "deployment", "web"),
    ("deployments/web", "deployment", "web"),
    ("deployment.apps/web", "deployment", "web"),
    ("deployments.v1.apps/web", "deployment", "web"),
    ("sts/db", "statefulset", "db"),
    ("statefulset/db", "statefulset", "db"),
    ("statefulsets.apps/db", "statefulset", "db"),
    ("rs/web-5d4f", "replicaset", "web-5d4f"),
    ("replicaset/web-5d4f", "replicaset", "web-5d4f"),
    ("replicasets/web-5d4f", "replicaset", "web-5d4f"),
    ("pod/a.b-c", "pod", "a.b-c"),
]


@pytest.mark.parametrize(("text", "kind", "name"), ACCEPTED)
def test_accepted_targets(text: str, kind: str, name: str) -> None:
    target = parse_target(text)
    assert target == Target(kind, name)
    assert str(target) == f"{kind}/{name}"
    assert target.is_pod == (kind == "pod")


REFUSED = [
    ("job/x", ['"job/x"', 'unknown kind "job"', "svc/NAME", "deploy/NAME", "sts/NAME"]),
    ("ds/x", ['unknown kind "ds"', "rs/NAME"]),
    ("/x", ['the kind before "/" is missing']),
    ("pod/a/b", ['one "/"']),
    ("deployment.core/x", ['"apps" API group', 'not "core"']),
    ("svc.apps/x", ["core API group", 'not "apps"']),
    ("pod/Web", ['"Web" is not a valid pod name']),
    ("svc/-web", ['"-web" is not a valid service name']),
    ("deploy/", ['"" is not a valid deployment name']),
    ("", ['"" is not a valid pod name']),
    ("pod/" + "a" * 254, ["is not a valid pod name"]),
    # ASCII only: str.isdigit() took Arabic-Indic digits and superscripts.
    ("pod/\u0661\u0662\u0663", ["is not a valid pod name"]),
    ("pod/web\u00b2", ["is not a valid pod name"]),
    # Surrounding whitespace is refused, not silently stripped (and then stored).
    ("  web  ", ["remove the whitespace around it"]),
    ("pod/web\n", ["remove the whitespace around it"]),
]


@pytest.mark.parametrize(("text", "fragments"), REFUSED)
def test_refused_targets_say_why(text: str, fragments: list[str]) -> None:
    with pytest.raises(TargetError) as caught:
        parse_target(text)
    for fragment in fragments:
        assert fragment in str(caught.value)


def _pod(
    name: str,
    *,
    phase: str = "Running",
    ready: bool = True,
    node: str = "n1",
    ready_since: str = "2026-01-01T00:00:00Z",
    restarts: int = 0,
    created: str = "2026-01-01T00:00:00Z",
    deleting: bool = False,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "creationTimestamp": created}
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-02T00:00:00Z"
    return {
        "metadata": metadata,
        "spec": {"nodeName": node},
        "status": {
            "phase": phase,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": ready_since,
                }
            ],
            "containerStatuses": [{"restartCount": restarts}],
        },
    }


def _order(*pods: dict[str, Any]) -> list[str]:
    return [p["metadata"]["name"] for p in sorted(pods, key=pod_rank)]


def test_pod_order_follows_kubectl_active_pods_reversed() -> None:
    # Each pair differs in one criterion; the first named pod must come first.
    assert _order(_pod("unscheduled", node=""), _pod("scheduled")) == ["scheduled", "unscheduled"]
    assert _order(_pod("pending", phase="Pending"), _pod("unknown", phase="Unknown"))[0] == (
        "unknown"
    )
    assert _order(_pod("unknown", phase="Unknown"), _pod("running"))[0] == "running"
    assert _order(_pod("not-ready", ready=False), _pod("ready")) == ["ready", "not-ready"]
    assert _order(
        _pod("newer", ready_since="2026-01-02T00:00:00Z"),
        _pod("older", ready_since="2026-01-01T00:00:00Z"),
    ) == ["older", "newer"]
    assert _order(_pod("no-time", ready_since=""), _pod("timed")) == ["timed", "no-time"]
    assert _order(_pod("flaky", restarts=3), _pod("steady", restarts=0)) == ["steady", "flaky"]
    assert _order(
        _pod("young", created="2026-03-01T00:00:00Z"),
        _pod("old", created="2026-02-01T00:00:00Z"),
    ) == ["old", "young"]
    # Phase outranks readiness: a Running pod that is not ready beats a ready Pending one.
    assert _order(_pod("pending", phase="Pending"), _pod("running", ready=False))[0] == "running"


def test_a_pod_being_deleted_loses_to_one_that_is_not() -> None:
    # kubectl 1.28+: among pods equally ready, not deleting wins, before the ready time.
    replacement = _pod("new", ready_since="2026-01-03T00:00:00Z")
    assert _order(_pod("dying", deleting=True), replacement) == ["new", "dying"]
    assert _order(_pod("dying", deleting=True), _pod("new")) == ["new", "dying"]
    # ...but readiness comes first: a Terminating ready pod beats one not ready yet.
    assert _order(_pod("dying", deleting=True), _pod("starting", ready=False))[0] == "dying"
    # Among Terminating pods, the one deleted last is chosen.
    early = _pod("early", deleting=True)
    late = _pod("late", deleting=True)
    late["metadata"]["deletionTimestamp"] = "2026-01-03T00:00:00Z"
    assert _order(early, late) == ["late", "early"]


def test_sidecar_restarts_break_ties_after_container_restarts() -> None:
    # kubectl 1.31+: restarts of restartable init containers (sidecars) count next.
    def with_sidecar(name: str, restarts: int) -> dict[str, Any]:
        pod = _pod(name)
        pod["spec"]["initContainers"] = [
            {"name": "proxy", "restartPolicy": "Always"},
            {"name": "setup"},
        ]
        pod["status"]["initContainerStatuses"] = [
            {"name": "proxy", "restartCount": restarts},
            {"name": "setup", "restartCount": 9},  # not a sidecar: ignored
        ]
        return pod

    assert _order(with_sidecar("flaky", 2), with_sidecar("steady", 0)) == ["steady", "flaky"]
    assert _order(_pod("more", restarts=1), with_sidecar("sidecar", 5))[0] == "sidecar"


def test_pod_rank_copes_with_sparse_objects() -> None:
    assert _order({"metadata": {"name": "bare"}}, _pod("full")) == ["full", "bare"]


def test_label_selectors() -> None:
    assert format_label_selector(None) == ""
    assert format_label_selector({}) == ""
    assert format_label_selector({"matchLabels": {"tier": "web", "app": "shop"}}) == (
        "app=shop,tier=web"
    )
    assert (
        format_label_selector(
            {
                "matchLabels": {"app": "shop"},
                "matchExpressions": [
                    {"key": "env", "operator": "In", "values": ["prod", "canary"]},
                    {"key": "track", "operator": "NotIn", "values": ["old"]},
                    {"key": "owner", "operator": "Exists"},
                    {"key": "legacy", "operator": "DoesNotExist"},
                ],
            }
        )
        == "app=shop,env in (canary,prod),track notin (old),owner,!legacy"
    )
    with pytest.raises(InvalidTarget, match="Gt"):
        format_label_selector({"matchExpressions": [{"key": "a", "operator": "Gt"}]})
