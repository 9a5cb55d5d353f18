"""`podgate sessions`: a command-line client of a running `podgate serve` (HTTP only).

The package keeps its imports light (`podgate serve` and `agent` build the same argument
parser): `api` speaks HTTP (httpx), `render` prints tables, `commands` runs the verbs;
`run` imports them when a `sessions` command runs. Of podgate it imports `service.model`
only: it needs neither the runner nor the API, and checking a request stays the API's
job (its 422 ``detail`` is printed).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from service.model import Transport

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_SERVER",
    "KIND_WORDS",
    "add_address_option",
    "add_parser",
    "run",
]

_USAGE = """\
  podgate sessions ls [-o wide|json|yaml|name]
  podgate sessions get NAME|ID... [-o wide|json|yaml|name]
  podgate sessions create [NAMESPACE/]TARGET PORT... [--name NAME] [--transport T]
                          [--address ADDR] [--context CTX] [--wait] [-o json|yaml|name]
  podgate sessions rm NAME|ID... | --all
  podgate sessions watch [NAME|ID...] [-o json]

The server is --server URL ($PODGATE_SERVER, default http://127.0.0.1:8080) and the
bearer token --token ($PODGATE_TOKEN). Errors print the API's problem detail and exit 1
(2 for a command line that cannot be used). Tables are laid out like `kubectl get`."""

DEFAULT_SERVER = "http://127.0.0.1:8080"
#: Seconds one request may take unless --request-timeout says otherwise.
DEFAULT_REQUEST_TIMEOUT = 30.0

#: The words before "/" that make ``A/B`` a ``KIND/NAME`` target rather than
#: ``NAMESPACE/NAME`` (the kinds ``service.upstream.targets`` accepts; a unit test keeps
#: the two lists equal). A kind may carry its group: ``deployment.apps/web``.
KIND_WORDS = frozenset(
    {
        *("po", "pod", "pods"),
        *("svc", "service", "services"),
        *("deploy", "deployment", "deployments"),
        *("sts", "statefulset", "statefulsets"),
        *("rs", "replicaset", "replicasets"),
        *("ip", "host"),  # through a helper agent (`via`)
    }
)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def add_address_option(parser: argparse.ArgumentParser) -> None:
    """``--address``, as `oc port-forward` has it (also `podgate forward`'s)."""
    parser.add_argument(
        "--address",
        action="append",
        default=[],
        help="addresses to listen on, comma separated (default localhost: 127.0.0.1 and ::1)",
    )


def add_parser(sub: Any) -> None:
    """Register ``podgate sessions`` on the ``podgate`` command's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: an option after the verb overrides the same option before it.
    common.add_argument(
        "--server",
        default=argparse.SUPPRESS,
        metavar="URL",
        help=f"the podgate API (default $PODGATE_SERVER, else {DEFAULT_SERVER})",
    )
    common.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        help="bearer token for a server started with --token-file or --auth kubernetes "
        "(default $PODGATE_TOKEN; the variable keeps it out of `ps`)",
    )
    common.add_argument(
        "--request-timeout",
        type=_positive_float,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help=f"how long one request may take (default {DEFAULT_REQUEST_TIMEOUT:g})",
    )

    sessions = sub.add_parser(
        "sessions",
        parents=[common],
        help="list, create, delete and watch the sessions of a running `podgate serve`",
        description=_USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Not set_defaults(server=...): the parents' actions are shared, and a default set
    # here would also reset an option given before the verb. `commands.main` defaults them.
    sessions.set_defaults(func=run)
    verbs = sessions.add_subparsers(dest="verb_given", required=True, metavar="COMMAND")

    def add_verb(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        """A verb's parser, with the common options; ``args.verb`` is its name, whichever
        alias was typed."""
        parser: argparse.ArgumentParser = verbs.add_parser(name, parents=[common], **kwargs)
        parser.set_defaults(verb=name)
        return parser

    def output_option(parser: argparse.ArgumentParser, choices: Sequence[str]) -> None:
        parser.add_argument(
            "-o",
            "--output",
            choices=choices,
            default="table",
            help=f"{', '.join(choices)} (default: a table)",
        )

    ls = add_verb("ls", aliases=["list"], help="list the sessions")
    output_option(ls, ("wide", "json", "yaml", "name"))

    get = add_verb("get", help="show sessions by name or id")
    get.add_argument("refs", nargs="+", metavar="NAME|ID")
    output_option(get, ("wide", "json", "yaml", "name"))

    create = add_verb(
        "create",
        help="create a session; prints the `Forwarding from` lines like `oc port-forward`",
        description="TARGET: NAME, KIND/NAME (pod, svc, deploy, sts, rs; ip, host via an "
        "agent), NAMESPACE/NAME or "
        "NAMESPACE/KIND/NAME. PORT: 5000, 8888:5000, :5000, 0:5000, or a port name "
        "(8080:http). The API checks them and says what is wrong.",
    )
    create.add_argument("target", metavar="[NAMESPACE/]TARGET")
    create.add_argument("ports", nargs="+", metavar="PORT")
    create.add_argument("-n", "--namespace", help="the namespace (default: default)")
    create.add_argument("--name", help="a unique name (creating it again is a no-op)")
    create.add_argument(
        "--transport",
        choices=[t.value for t in Transport],
        help="how to reach the cluster (default auto)",
    )
    add_address_option(create)
    create.add_argument("--context", help="kubeconfig context of the server to use")
    create.add_argument(
        "--via",
        metavar="URL",
        help="go through this podgate agent (README: Helper agent); ip/ and host/ targets need one",
    )
    create.add_argument(
        "--via-context",
        metavar="NAME",
        help="the context of the server's agent kubeconfig with the agent's CA and token",
    )
    create.add_argument(
        "--wait",
        action="store_true",
        help="wait until the session is ready (then the lines show the pod's port for a "
        "Service target, as kubectl prints it); fail if it fails",
    )
    create.add_argument(
        "--wait-timeout",
        type=_positive_float,
        default=30.0,
        metavar="SECONDS",
        help="how long --wait waits (default 30)",
    )
    output_option(create, ("json", "yaml", "name"))

    rm = add_verb("rm", aliases=["delete"], help="delete sessions by name or id")
    rm.add_argument("refs", nargs="*", metavar="NAME|ID")
    rm.add_argument("--all", action="store_true", help="delete every session you can see")

    watch = add_verb(
        "watch",
        help="print a line per session change (GET /events) until Ctrl-C",
        description="Prints the current sessions, then one line per event. A dropped "
        "stream is resumed with Last-Event-ID; when the server no longer has the missed "
        "events, the sessions are read again and what changed is printed.",
    )
    watch.add_argument("refs", nargs="*", metavar="NAME|ID", help="only these sessions")
    watch.add_argument(
        "-o", "--output", choices=("json",), default="table", help="json: one event per line"
    )


async def run(args: argparse.Namespace) -> int:
    """``podgate sessions VERB ...``: the exit status."""
    # Why here: `podgate serve` and `agent` build the same parser; httpx and yaml (about
    # 20 MB resident) stay out of them.
    from service.client.commands import main

    return await main(args)
