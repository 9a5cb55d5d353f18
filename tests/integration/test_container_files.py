"""The Dockerfile and docker-compose.yml, without a container engine (there is none on
the build machines): what can be checked is checked for real.

- Dockerfile: a non-root numeric USER after the last RUN, a HEALTHCHECK whose command
  (run here against a real `podgate serve`, token file on, 0.0.0.0) passes while it
  answers and fails once it is gone, and the image's default command refuses to start
  beyond loopback without authentication.
- docker-compose.yml: `docker-compose config` (Debian's docker-compose, `.ci/run`) accepts
  it; the podgate service's start-up script, run here by /bin/sh against a real `podgate
  serve`, writes a random token file (mode 600) once, keeps it on the next start, and the
  API takes that token and refuses requests without it. No token that works anywhere
  but the demo is committed.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.podgate import LISTENING_RE, PODGATE, START_TIMEOUT, podgate_env
from tests.support.procs import ManagedProcess

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_the_image_runs_as_a_non_root_user() -> None:
    steps = instructions()
    users = [i for i, (word, _) in enumerate(steps) if word == "USER"]
    runs = [i for i, (word, _) in enumerate(steps) if word == "RUN"]
    assert users and users[-1] > runs[-1], steps
    user = steps[users[-1]][1].split(":")[0]
    assert user.isdigit() and int(user) != 0, user  # numeric: runAsNonRoot can check it


def healthcheck_command() -> list[str]:
    (arguments,) = [rest for word, rest in instructions() if word == "HEALTHCHECK"]
    assert re.search(r"--timeout=\d+s", arguments) and re.search(r"--interval=\d+s", arguments)
    command: list[str] = json.loads(arguments[arguments.index("CMD") + 3 :])
    return command


def test_the_healthcheck_passes_while_serve_answers_and_fails_after(tmp_path: Path) -> None:
    command = healthcheck_command()
    assert command[0] == "python" and any("/healthz" in part for part in command), command
    tokens = tmp_path / "tokens.csv"
    tokens.write_text("a-token,someone,uid\n")
    args = [*PODGATE, "serve", "--host", "0.0.0.0", "--port", "0", "--demo"]
    args += ["--token-file", str(tokens), "--data-dir", str(tmp_path / "data")]
    with ManagedProcess(args, env=podgate_env(), name="podgate-serve") as serve:
        port = serve.wait_for_stdout(LISTENING_RE, START_TIMEOUT)[1].rpartition(":")[2]
        check = [sys.executable, *(part.replace("8080", port) for part in command[1:])]
        assert subprocess.run(check, timeout=10, check=False).returncode == 0
    assert subprocess.run(check, timeout=10, check=False, capture_output=True).returncode != 0


def test_the_images_default_command_is_closed(tmp_path: Path) -> None:
    """ENTRYPOINT + CMD as they are: beyond loopback, no authentication, exit 2."""
    steps = dict(instructions())
    entrypoint, cmd = json.loads(steps["ENTRYPOINT"]), json.loads(steps["CMD"])
    assert entrypoint == ["podgate"]
    args = [*PODGATE, *cmd]
    env = {**podgate_env(), "PODGATE_DATA_DIR": str(tmp_path / "data")}
    with ManagedProcess(args, env=env, name="podgate-serve") as proc:
        assert proc.wait(START_TIMEOUT) == 2, proc.describe()
    assert "--token-file" in proc.stderr_text() and "--auth kubernetes" in proc.stderr_text()


def compose_config() -> dict[str, Any]:
    binary = shutil.which("docker-compose")
    assert binary is not None, "docker-compose is missing: apt-get install docker-compose (.ci/run)"
    result = subprocess.run(
        [binary, "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "HOME": os.environ.get("HOME", "/root")},
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_compose_file_is_valid_and_sets_a_token_file() -> None:
    services = compose_config()["services"]
    for name, service in services.items():
        script = "\n".join(service["command"])
        assert "--token-file" in script, (name, script)
        assert "--host 0.0.0.0" in script, (name, script)
    assert "--listen-address 0.0.0.0" in "\n".join(services["podgate"]["command"])
    # The only token written down is the demo's, and the demo serves nothing but its pod.
    assert "--demo" in "\n".join(services["demo"]["command"])
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [f for f in tracked if re.search(r"token", f, re.I) and f.endswith(".csv")]


def start_script(data: Path, port: str = "0") -> str:
    """The podgate service's start-up script, run on this machine: /data is `data`, the
    port 0, the demo pod instead of the mounted kubeconfig."""
    (script,) = compose_config()["services"]["podgate"]["command"]
    assert "/data/tokens.csv" in script and "--port 8080" in script
    podgate = " ".join(PODGATE)
    return (
        script.replace("/data/", f"{data}/")
        .replace("--port 8080", f"--port {port} --data-dir {data}")
        .replace("exec podgate serve", f"exec {podgate} serve --demo")
    )


def test_compose_start_up_writes_a_token_once_and_the_api_wants_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    env = podgate_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # python
    tokens = data / "tokens.csv"
    seen: list[str] = []
    for start in range(2):
        with ManagedProcess(["/bin/sh", "-ec", start_script(data)], env=env) as proc:
            url = proc.wait_for_stdout(LISTENING_RE, START_TIMEOUT)[1]
            assert ("wrote a new API token" in proc.stderr_text()) == (start == 0)
            token, user, _, groups = next(csv.reader([tokens.read_text()]))
            assert (user, groups) == ("admin", "podgate:admin") and len(token) >= 40
            assert tokens.stat().st_mode & 0o077 == 0, oct(tokens.stat().st_mode)
            seen.append(token)
            port = url.rpartition(":")[2]
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:
                assert api.get("/sessions").status_code == 401
                headers = {"Authorization": f"Bearer {token}"}
                assert api.get("/sessions", headers=headers).status_code == 200
    assert seen[0] == seen[1]  # kept across restarts
