"""schemathesis against a real `podgate serve --demo`, from the committed
openapi/openapi.json: every phase (examples, coverage, fuzzing, stateful links), every
check but one, a fixed seed and few examples per operation; both runs at once (about 15 s).

- With a token file and a token: also checks that requests without it, or with a wrong
  one, are refused (ignored_auth) and that 405s carry Allow (unsupported_method).
- Without authentication (loopback): the same document without its `security`
  requirements, which is what that service is.

Left out: positive_data_acceptance ("a schema-valid request must not be rejected"). The
document cannot say everything a request must be: a port range (1-65535 inside
"8888:5000"), an IP address or a target kind in a string, a privileged port or an address
the listen policy refuses (403). Those are documented 422s and 403s, not server errors.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.test_serve_security import serve
from tests.support.podgate import Podgate

pytestmark = pytest.mark.timeout(120)

DOCUMENT = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
TOKEN = "schemathesis-token"


#: An event stream never ends: schemathesis reads it until the request timeout, so the
#: streams get a short one (and every other answer, all local, a generous one).
CONFIG = """\
request-timeout = 5

[[operations]]
include-path-regex = "events$"
request-timeout = 0.3
"""


def start_schemathesis(document: Path, url: str, *options: str) -> subprocess.Popen[str]:
    config = document.with_name("schemathesis.toml")
    config.write_text(CONFIG)
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(config),
        "run",
        str(document),
        "--url",
        url,
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        "5",
        "--seed",
        "11",
        "--workers",
        "2",
        "--generation-database",
        "none",
        "--no-color",
        *options,
    ]
    # In the run's directory: schemathesis keeps replay data in ./.schemathesis.
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=document.parent,
    )


@dataclass
class Run:
    schemathesis: subprocess.Popen[str]
    serve: Podgate

    def check(self) -> None:
        output, _ = self.schemathesis.communicate(timeout=100)
        assert self.schemathesis.returncode == 0, output[-20_000:]
        assert " passed" in output and "0 passed" not in output, output[-3000:]
        assert "Traceback" not in self.serve.process.stderr_text(), self.serve.process.describe()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """Both runs at once (each mostly waits on event streams), one server each."""
    with contextlib.ExitStack() as stack:
        started: dict[str, Run] = {}
        # With a token file, and the token.
        directory = tmp_path_factory.mktemp("schemathesis-token")
        document = directory / "openapi.json"
        document.write_text(DOCUMENT.read_text())
        tokens = directory / "tokens.csv"
        tokens.write_text(f"{TOKEN},fuzzer,uid-fuzzer\n")
        podgate = stack.enter_context(serve(directory, "--token-file", str(tokens)))
        process = start_schemathesis(
            document, podgate.url, "--header", f"Authorization: Bearer {TOKEN}"
        )
        stack.callback(process.kill)
        started["token"] = Run(process, podgate)
        # Without authentication: the document without its security requirements.
        directory = tmp_path_factory.mktemp("schemathesis-none")
        plain = json.loads(DOCUMENT.read_text())
        for item in plain["paths"].values():
            for operation in item.values():
                operation.pop("security", None)
        document = directory / "openapi.json"
        document.write_text(json.dumps(plain))
        podgate = stack.enter_context(serve(directory))
        process = start_schemathesis(document, podgate.url)
        stack.callback(process.kill)
        started["none"] = Run(process, podgate)
        yield started


def test_schemathesis_with_a_token(runs: dict[str, Run]) -> None:
    runs["token"].check()


def test_schemathesis_without_authentication(runs: dict[str, Run]) -> None:
    runs["none"].check()
