"""Our library (the engine backend) in a long-lived child process.

A kernel test needs an engine node that can hold a lock while the guest
acts, wait in ``o2dlm_lock`` while the test does something else, and end
(or be killed) on purpose. ``EngineClient`` runs ``python3 engine_client.py
<libo2dlm.so>`` with the environment the caller gives (O2DLM_* / O2CB_*) and
talks to it over pipes:

* requests, one JSON line each on the child's stdin:
  ``{"id": 7, "op": "lock", "args": [ctx, "L", 1, 0]}``
* answers, one JSON line each on its stdout, in completion order:
  ``{"id": 7, "result": ..., "start": t, "end": t}`` (``time.monotonic()``
  of the child; the same clock as the parent's on Linux).

Every request runs in its own thread of the child, so a blocked lock does
not hold up the next request (the library's contexts are thread-safe).
Library log lines (O2DLM_LOG) go to the child's stderr, which is a file.

Operations (byte strings travel as latin-1 text, LVB data as hex):
  initialize(domain) -> [rc, ctx]          lock(ctx, id, flags, level) -> rc
  unlock(ctx, id) -> rc                    drop_lock(ctx, id) -> rc
  read_lvb(ctx, id, len) -> [rc, hex, n]   write_lvb(ctx, id, hex) -> [rc, n]
  destroy(ctx) -> rc                       ping() -> "pong"
  exit(status) -> the child calls exit(status) (atexit hooks run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

HERE = Path(__file__).resolve().parent
PY_TESTS = HERE.parent


# --------------------------------------------------------------------------
# parent side


class ClientDied(AssertionError):
    """The child ended while an answer was awaited."""


class Pending:
    """A request that was sent; ``wait()`` for its answer."""

    def __init__(self, client: "EngineClient", rid: int, what: str) -> None:
        self.client = client
        self.id = rid
        self.what = what
        self.sent = time.monotonic()

    def done(self) -> bool:
        with self.client._cond:
            return self.id in self.client._answers

    def answer(self, timeout: float) -> Dict[str, Any]:
        """The whole answer (result and the child's start/end times)."""
        deadline = time.monotonic() + timeout
        c = self.client
        with c._cond:
            while self.id not in c._answers:
                left = deadline - time.monotonic()
                if c._eof:
                    raise ClientDied(f"engine client ended (status {c.proc.poll()}) before answering {self.what}\n"
                                     f"--- its log (tail) ---\n{c.log_tail()}")
                if left <= 0:
                    raise AssertionError(f"no answer to {self.what} within {timeout:.0f} s")
                c._cond.wait(min(left, 0.2))
            return c._answers[self.id]

    def wait(self, timeout: float) -> Any:
        return self.answer(timeout)["result"]


class EngineClient:
    """One child process using ``lib`` through ctypes."""

    def __init__(self, lib: Path, env: Dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(lib)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env,
            start_new_session=True,
        )
        self._cond = threading.Condition()
        self._answers: Dict[int, Dict[str, Any]] = {}
        self._eof = False
        self._next = 1
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="engine-client-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                self._answers[msg["id"]] = msg
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def start(self, op: str, *args: Any) -> Pending:
        with self._send_lock:
            rid = self._next
            self._next += 1
            line = json.dumps({"id": rid, "op": op, "args": list(args)}) + "\n"
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(line.encode())
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError) as e:
                raise ClientDied(f"engine client gone ({e}); log tail:\n{self.log_tail()}") from None
        return Pending(self, rid, f"{op}{tuple(args)!r}")

    def call(self, op: str, *args: Any, timeout: float = 30.0) -> Any:
        return self.start(op, *args).wait(timeout)

    # convenience wrappers
    def initialize(self, domain: str, timeout: float = 60.0):
        return self.call("initialize", domain, timeout=timeout)

    def lock(self, ctx: int, lockid: str, level: int, flags: int = 0, timeout: float = 30.0) -> int:
        return self.call("lock", ctx, lockid, flags, level, timeout=timeout)

    def unlock(self, ctx: int, lockid: str) -> int:
        return self.call("unlock", ctx, lockid)

    def read_lvb(self, ctx: int, lockid: str, length: int = 64):
        rc, hexdata, n = self.call("read_lvb", ctx, lockid, length)
        return rc, bytes.fromhex(hexdata), n

    def write_lvb(self, ctx: int, lockid: str, data: bytes):
        return tuple(self.call("write_lvb", ctx, lockid, data.hex()))

    def destroy(self, ctx: int, timeout: float = 60.0) -> int:
        return self.call("destroy", ctx, timeout=timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def exit(self, status: int = 0, timeout: float = 30.0) -> int:
        """Asks the child to exit(status) (atexit hooks run); its status."""
        if self.alive():
            try:
                self.start("exit", status)
            except ClientDied:
                pass
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 4000) -> str:
        return self.log_text()[-n:]


# --------------------------------------------------------------------------
# child side


def _serve(lib: str) -> None:
    sys.path.insert(0, str(PY_TESTS))
    from o2dlm_ctypes import Api  # noqa: E402

    api = Api(lib)
    api.init_error_table()
    out_lock = threading.Lock()
    out = sys.stdout

    def enc(s: str) -> bytes:
        return s.encode("latin-1")

    def run(op: str, args) -> Any:
        if op == "initialize":
            rc, ctx = api.initialize(b"/dlm", enc(args[0]))
            return [rc, ctx]
        if op == "lock":
            ctx, lockid, flags, level = args
            return api.lock(ctx, enc(lockid), flags, level)
        if op == "unlock":
            return api.unlock(args[0], enc(args[1]))
        if op == "drop_lock":
            return api.drop_lock(args[0], enc(args[1]))
        if op == "read_lvb":
            rc, buf, n = api.read_lvb(args[0], enc(args[1]), args[2])
            return [rc, buf.hex() if rc == 0 else "", n]
        if op == "write_lvb":
            rc, n = api.write_lvb(args[0], enc(args[1]), bytes.fromhex(args[2]))
            return [rc, n]
        if op == "destroy":
            return api.destroy(args[0])
        if op == "ping":
            return "pong"
        raise ValueError(f"unknown op {op!r}")

    def worker(req) -> None:
        start = time.monotonic()
        try:
            result = run(req["op"], req.get("args", []))
        except Exception as e:  # reported to the parent as the result
            result = {"error": f"{type(e).__name__}: {e}"}
        msg = json.dumps({"id": req["id"], "result": result, "start": start, "end": time.monotonic()})
        with out_lock:
            out.write(msg + "\n")
            out.flush()

    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "exit":
            sys.stdout.flush()
            # sys.exit from the main thread: atexit hooks (the library's
            # clean stop) run; threads still blocked in the library are
            # daemon threads and do not hold the exit up
            sys.exit(int(req["args"][0]) if req.get("args") else 0)
        threading.Thread(target=worker, args=(req,), daemon=True).start()
    # stdin closed: the parent is gone; end as exit(0) would
    sys.exit(0)


if __name__ == "__main__":
    _serve(sys.argv[1])
