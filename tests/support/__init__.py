"""Reusable test helpers (among others in this package).

- :mod:`tests.support.procs`: subprocesses with drained pipes and line waits.
- :mod:`tests.support.kube`: find kubectl binaries, kubeconfig, ``kubectl port-forward``.
- :mod:`tests.support.echo`: in-process loopback TCP echo server, refused port, bulk
  round trip.
"""
