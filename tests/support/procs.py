"""Run a subprocess whose stdout and stderr are drained by background threads.

Reading readiness lines straight from ``Popen`` pipes deadlocks as soon as the
other pipe fills up. :class:`ManagedProcess` drains *both* pipes continuously
into line buffers, so tests can wait for a line on one stream (with a timeout)
and inspect everything the process wrote afterwards::

    with ManagedProcess([binary, "--listen", "127.0.0.1:0"]) as proc:
        match = proc.wait_for_stdout(r"Listening on http://(\\S+)", timeout=10)
        ...
        assert "tunnel" in proc.stderr_text()

Leaving the ``with`` block stops the process (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = ["LineTimeout", "ManagedProcess", "ProcessFailed"]


class LineTimeout(TimeoutError):
    """No line matched before the deadline."""


class ProcessFailed(RuntimeError):
    """The stream ended (process exited or closed it) without a matching line."""


class _LineBuffer:
    """Lines read from one pipe by a daemon thread."""

    def __init__(self, name: str, pipe: IO[bytes], tee: IO[bytes] | None) -> None:
        self.name = name
        self._lines: list[str] = []
        self._eof = False
        self._cond = threading.Condition()
        self._tee = tee
        self._thread = threading.Thread(
            target=self._pump, args=(pipe,), name=f"drain-{name}", daemon=True
        )
        self._thread.start()

    def _pump(self, pipe: IO[bytes]) -> None:
        try:
            for raw in iter(pipe.readline, b""):
                if self._tee is not None:
                    self._tee.write(raw)
                    self._tee.flush()
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                with self._cond:
                    self._lines.append(line)
                    self._cond.notify_all()
        finally:
            pipe.close()
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def lines(self) -> list[str]:
        with self._cond:
            return list(self._lines)

    def wait_for(
        self, pattern: re.Pattern[str], timeout: float, start: int
    ) -> tuple[re.Match[str], int]:
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self._lines):
                    match = pattern.search(self._lines[index])
                    index += 1
                    if match is not None:
                        return match, index
                if self._eof:
                    raise ProcessFailed(
                        f"{self.name} closed without a line matching {pattern.pattern!r}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LineTimeout(
                        f"no line on {self.name} matched {pattern.pattern!r} within {timeout:.1f}s"
                    )
                self._cond.wait(remaining)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class ManagedProcess:
    """A child process with both output pipes drained into line buffers.

    Args:
        args: the command line.
        env: the complete environment (``None`` inherits ours).
        cwd: working directory.
        name: label used in error messages (defaults to the program name).
        tee_stderr: also copy the child's stderr to this binary stream as it arrives
            (for example ``sys.stderr.buffer`` while debugging).

    ``wait_for_stdout`` / ``wait_for_stderr`` scan lines in order. Each call resumes
    after the line that satisfied the previous call on the same stream, so a
    sequence of waits consumes a sequence of lines. ``stdout_text`` /
    ``stderr_text`` always return everything captured so far.
    """

    def __init__(
        self,
        args: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        name: str | None = None,
        tee_stderr: IO[bytes] | None = None,
    ) -> None:
        self.args = [os.fspath(a) for a in args]
        self.name = name or Path(self.args[0]).name
        self.popen: subprocess.Popen[bytes] = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
        assert self.popen.stdout is not None and self.popen.stderr is not None
        self._stdout = _LineBuffer(f"{self.name} stdout", self.popen.stdout, None)
        self._stderr = _LineBuffer(f"{self.name} stderr", self.popen.stderr, tee_stderr)
        self._cursor = {"stdout": 0, "stderr": 0}

    # -- waiting for output -------------------------------------------------

    def wait_for_stdout(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        """Return the match of the next stdout line matching ``pattern`` (``re.search``).

        Raises:
            LineTimeout: nothing matched within ``timeout`` seconds.
            ProcessFailed: stdout closed first; the message includes the captured stderr.
        """
        return self._wait("stdout", self._stdout, pattern, timeout)

    def wait_for_stderr(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        """Like :meth:`wait_for_stdout`, for stderr."""
        return self._wait("stderr", self._stderr, pattern, timeout)

    def _wait(
        self, key: str, buf: _LineBuffer, pattern: str | re.Pattern[str], timeout: float
    ) -> re.Match[str]:
        compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
        try:
            match, self._cursor[key] = buf.wait_for(compiled, timeout, self._cursor[key])
        except (LineTimeout, ProcessFailed) as exc:
            raise type(exc)(f"{exc}\n{self.describe()}") from None
        return match

    def stdout_text(self) -> str:
        """Everything read from stdout so far, newline-joined."""
        return "\n".join(self._stdout.lines())

    def stderr_text(self) -> str:
        """Everything read from stderr so far, newline-joined."""
        return "\n".join(self._stderr.lines())

    def describe(self) -> str:
        """A diagnostic summary: command, exit status and captured output."""
        return (
            f"--- {self.name}: {' '.join(self.args)} (returncode={self.popen.poll()})\n"
            f"--- stdout:\n{self.stdout_text()}\n--- stderr:\n{self.stderr_text()}"
        )

    # -- lifetime -----------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or ``None`` while running."""
        return self.popen.poll()

    def wait(self, timeout: float) -> int:
        """Wait for exit and for both pipes to be drained; return the exit status.

        Raises:
            subprocess.TimeoutExpired: still running after ``timeout`` seconds.
        """
        code = self.popen.wait(timeout)
        self._stdout.join(timeout)
        self._stderr.join(timeout)
        return code

    def send_signal(self, sig: int) -> None:
        """Signal the child (only while it runs)."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; return the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.wait(timeout)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
