"""A persistent subprocess that runs the fuzz cases of tests/test_fuzz.py, so that a native-code crash (a segfault,
an abort, a hang) fails one test with the input that caused it instead of killing the pytest run.

Protocol: the parent writes a pickled ``(case_name, kind, spec)`` request, the worker answers a pickled
``(status, detail, info)``: status "ok" or "fail" (a Python exception in the check: detail is its traceback). The
worker runs ``fuzz_ops.run(case_name, kind, spec)``; the spec is plain data (sizes, dtypes, a seed), so the
failing input can be named and replayed: ``python tests/fuzz_worker.py --replay <case> <kind> "<spec repr>"``.

The worker talks over a private copy of its stdout file descriptor; fd 1 itself is pointed at stderr, so whatever
a kernel or a library prints cannot corrupt the protocol.
"""

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
_HEADER = struct.Struct("<Q")


def _write_msg(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj)
    buf = _HEADER.pack(len(data)) + data
    while buf:
        n = os.write(fd, buf)
        buf = buf[n:]


def _read_exact(fd: int, n: int, deadline: Optional[float]) -> Optional[bytes]:
    """n bytes from fd; None on EOF. Raises TimeoutError past the deadline (time.monotonic())."""
    chunks, left = [], n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_msg(fd: int, deadline: Optional[float] = None) -> Any:
    header = _read_exact(fd, _HEADER.size, deadline)
    if header is None:
        return None
    data = _read_exact(fd, _HEADER.unpack(header)[0], deadline)
    return None if data is None else pickle.loads(data)


def describe_exit(returncode: Optional[int]) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class WorkerCrash(AssertionError):
    """The worker died or hung on an input: a test failure (AssertionError), not an error of the test run."""


class Worker:
    """The parent's handle: ``run(case, kind, spec)`` returns the worker's info dict or raises AssertionError
    (a failed check, a crash, a hang) naming the input. A crashed or hung worker is replaced by a fresh one
    before the next call."""

    def __init__(self, timeout: float = 120.0, env: Optional[dict] = None):
        self.timeout = timeout
        self.env = env
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0

    def _start(self) -> None:
        env = dict(os.environ if self.env is None else self.env)
        # The worker imports pyops from the same checkout as the tests.
        env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), str(HERE)] +
                                            ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        self.starts += 1
        ready = _read_msg(self.proc.stdout.fileno(), time.monotonic() + 300)
        if ready != "ready":
            self.close()
            raise RuntimeError(f"fuzz worker failed to start: {describe_exit(self.proc.returncode)}")

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc.stdin.close()
            self.proc.stdout.close()
            self.proc = None

    def run(self, case: str, kind: str, spec: Any, timeout: Optional[float] = None) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.close()
            self._start()
        proc = self.proc
        try:
            _write_msg(proc.stdin.fileno(), (case, kind, spec))
            reply = _read_msg(proc.stdout.fileno(), time.monotonic() + (timeout or self.timeout))
        except TimeoutError:
            self.close()
            raise WorkerCrash(f"fuzz {case} ({kind}): no answer within {timeout or self.timeout:.0f} s (hang) "
                              f"on input {spec!r}") from None
        except (BrokenPipeError, OSError):
            reply = None
        if reply is None:  # EOF: the worker died on this input
            proc.wait()
            code = proc.returncode
            self.close()
            raise WorkerCrash(f"fuzz {case} ({kind}): the worker process {describe_exit(code)} on input {spec!r}")
        status, detail, info = reply
        if status != "ok":
            raise AssertionError(f"fuzz {case} ({kind}) failed on input {spec!r}:\n{detail}")
        return info


def _serve() -> None:
    proto_in = sys.stdin.fileno()
    proto_out = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints go to stderr, not into the protocol
    import traceback

    import fuzz_ops

    _write_msg(proto_out, "ready")
    while True:
        request = _read_msg(proto_in)
        if request is None:
            return
        case, kind, spec = request
        try:
            info = fuzz_ops.run(case, kind, spec)
            _write_msg(proto_out, ("ok", "", info or {}))
        except BaseException:  # noqa: BLE001  (reported to the parent as the test's failure)
            _write_msg(proto_out, ("fail", traceback.format_exc(), {}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--replay":  # run one input in this process, e.g. under gdb
        import ast

        sys.path[:0] = [str(HERE.parent), str(HERE)]
        import fuzz_ops

        print(fuzz_ops.run(sys.argv[2], sys.argv[3], ast.literal_eval(sys.argv[4])))
    else:
        _serve()
