"""Fixtures of the real-apiserver tier: kube-apiserver v1.20.2 + etcd (tests/cluster/build.sh,
``make cluster``) with `podgate agent` as the kubelet; tests/support/cluster.py has the API.

Session-scoped, started once for the whole tier:

- ``cluster``: the common :class:`~tests.support.cluster.Cluster`, set up by
  :func:`~tests.support.cluster.setup_tier` (namespace ``tier``; alice may port-forward there,
  bob may only get pods, carol nothing; ``node-1`` serves pod ``tier/echo``). Tests add
  their own namespaces, Nodes and pods; they must not restart it.
- ``tier_node``: that ``node-1`` (its agent process, its port).
- ``kubeconfig``: contexts ``admin``, ``alice``, ``bob``, ``carol`` (static tokens),
  namespace ``tier``, ``admin`` current.
- ``podgate``: one `podgate serve` process on that kubeconfig; ``api``: an httpx client
  for it. A session picks its user with ``"context": "alice"``; delete sessions you create.

Function-scoped:

- ``private_cluster``: a cluster of its own (same setup as ``cluster``, own etcd), for
  tests that restart the apiserver or otherwise disturb it::

      def test_x(private_cluster: Cluster, tmp_path: Path) -> None:
          kubeconfig = private_cluster.kubeconfig(tmp_path / "kc", namespace="tier")
          with run_serve(tmp_path / "data", kubeconfig) as serve, api_client(serve.url) as api:
              ...
              mark = private_cluster.apiserver.log.mark()
              private_cluster.apiserver.restart(signal.SIGKILL)
              ...
              assert private_cluster.apiserver.log.count(mark, user_agent="podgate/",
                                                         watch=True) < 10
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.cluster import TIER_NAMESPACE, Cluster, Node, setup_tier, start_cluster
from tests.support.podgate import Podgate, api_client, run_serve


@pytest.fixture(scope="session")
def _tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Node]]:
    with start_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster, setup_tier(cluster)


@pytest.fixture(scope="session")
def cluster(_tier: tuple[Cluster, Node]) -> Cluster:
    return _tier[0]


@pytest.fixture(scope="session")
def tier_node(_tier: tuple[Cluster, Node]) -> Node:
    return _tier[1]


@pytest.fixture(scope="session")
def kubeconfig(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kubeconfig") / "kubeconfig"
    return cluster.kubeconfig(path, ["admin", "alice", "bob", "carol"], namespace=TIER_NAMESPACE)


@pytest.fixture(scope="session")
def podgate(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podgate]:
    with run_serve(tmp_path_factory.mktemp("podgate-data"), kubeconfig) as serve:
        yield serve


@pytest.fixture(scope="session")
def api(podgate: Podgate) -> Iterator[httpx.Client]:
    with api_client(podgate.url) as client:
        yield client


@pytest.fixture
def private_cluster(tmp_path: Path) -> Iterator[Cluster]:
    with start_cluster(tmp_path / "private-cluster") as cluster:
        setup_tier(cluster)
        yield cluster
