"""Runs o2dlm_ctypes.Api calls in a child process (see o2dlm_driver.py).

Used when a test needs its own environment at library initialisation
(O2DLM_BACKEND, O2DLM_LOG, the fakedlmfs.so preload), or makes calls that
would take the test runner down if the library crashed.
"""

import os
import pickle
import signal
import subprocess
import sys
import tempfile

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "o2dlm_driver.py")


class RemoteDied(Exception):
    pass


class Remote:
    def __init__(self, lib_path, env=None):
        # The child sees only the O2DLM_* variables the test asks for.
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith("O2DLM_") and k not in ("LD_PRELOAD", "FAKE_DLMFS_ROOT")}
        full_env.update(env or {})
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, DRIVER, lib_path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=full_env,
        )
        self._stderr_text = None

    def call(self, method, *args, **kwargs):
        try:
            pickle.dump((method, args, kwargs), self.proc.stdin)
            self.proc.stdin.flush()
            status, value = pickle.load(self.proc.stdout)
        except (EOFError, BrokenPipeError, pickle.UnpicklingError):
            code = self.proc.wait()
            how = (f"killed by signal {signal.Signals(-code).name}" if code < 0
                   else f"exit status {code}")
            raise RemoteDied(
                f"library process died during {method}{args!r}: {how}\n"
                f"stderr: {self.stderr()[-2000:]}"
            ) from None
        if status != "ok":
            raise AssertionError(f"{method}{args!r} raised in the child:\n{value}")
        return value

    def __getattr__(self, method):
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self.call(method, *args, **kwargs)

    def close(self):
        """Ends the child; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def stderr(self):
        """Everything the child wrote on stderr (ends it first)."""
        if self._stderr_text is None:
            self.close()
            self._stderr.seek(0)
            self._stderr_text = self._stderr.read().decode(errors="replace")
        return self._stderr_text
