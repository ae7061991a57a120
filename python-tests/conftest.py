"""Fixtures for the libo2dlm tests (pytest + ctypes).

The library under test is $O2DLM_LIB, by default the staged install
target/stage/usr/local/lib/libo2dlm.so.1 (`make stage` at the top level).
Every fixture here is named o2dlm_*/fake_* and none is autouse, so test
directories below this one (kernel/) are unaffected unless they ask.
"""

import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from o2dlm_ctypes import Api  # noqa: E402
from o2dlm_remote import Remote  # noqa: E402

REPO = os.path.dirname(HERE)
DEFAULT_LIB = os.path.join(REPO, "target", "stage", "usr", "local", "lib", "libo2dlm.so.1")
FAKEDLMFS_SRC = os.path.join(REPO, "c-tests", "fakedlmfs.c")
# Variables that change what o2dlm_initialize does.
O2DLM_ENV = ("O2DLM_BACKEND", "O2DLM_LOG", "O2DLM_HEARTBEAT_DEVICE", "O2DLM_CLUSTER_CONF",
             "O2DLM_DLMFS_CAPABILITIES")


@pytest.fixture(scope="session")
def o2dlm_lib_path():
    path = os.environ.get("O2DLM_LIB", DEFAULT_LIB)
    if not os.path.isfile(path):
        pytest.fail(f"libo2dlm under test not found at {path}: run `make stage` at the top "
                    f"level first, or set O2DLM_LIB to the library to test", pytrace=False)
    return os.path.abspath(path)


@pytest.fixture(scope="session")
def o2dlm_session_api(o2dlm_lib_path):
    return Api(o2dlm_lib_path)


@pytest.fixture
def o2dlm(o2dlm_session_api, monkeypatch):
    """The library loaded in this process, with no O2DLM_* variable set
    (the library reads them at each o2dlm_initialize)."""
    for var in O2DLM_ENV:
        monkeypatch.delenv(var, raising=False)
    return o2dlm_session_api


@pytest.fixture(scope="session")
def fake_dlmfs_shim(tmp_path_factory):
    """fakedlmfs.so (c-tests/fakedlmfs.c): makes FAKE_DLMFS_ROOT look like a
    dlmfs mount to fstatfs(), so contexts can be created on this host."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("a C compiler is needed to build fakedlmfs.so", pytrace=False)
    out = str(tmp_path_factory.mktemp("shim") / "fakedlmfs.so")
    proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", out, FAKEDLMFS_SRC, "-ldl"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"building fakedlmfs.so failed:\n{proc.stderr}", pytrace=False)
    return out


@pytest.fixture
def o2dlm_remote(o2dlm_lib_path):
    """Factory: o2dlm_remote(env={...}) starts a child process running the
    library with exactly those O2DLM_* variables. Closed after the test."""
    started = []

    def start(env=None):
        r = Remote(o2dlm_lib_path, env)
        started.append(r)
        return r

    yield start
    for r in started:
        r.close()


class FakeDlmfs:
    """A child process whose library sees `root` as a dlmfs mount."""

    def __init__(self, remote, root):
        self.api = remote
        self.root = root

    def domain_dir(self, domain="pytest"):
        return os.path.join(self.root, domain)

    def entries(self, domain="pytest"):
        d = self.domain_dir(domain)
        return sorted(os.listdir(d)) if os.path.isdir(d) else None


@pytest.fixture
def fake_dlmfs(o2dlm_remote, fake_dlmfs_shim, tmp_path):
    """Factory: fake_dlmfs(env={...}) → FakeDlmfs on a fresh directory."""
    count = [0]

    def start(env=None):
        count[0] += 1
        root = tmp_path / f"dlmfs{count[0]}"
        root.mkdir()
        full = {"LD_PRELOAD": fake_dlmfs_shim, "FAKE_DLMFS_ROOT": str(root)}
        full.update(env or {})
        return FakeDlmfs(o2dlm_remote(full), str(root))

    return start


def _fake_ctx(fake_dlmfs, capabilities, tmp_path):
    caps = tmp_path / "capabilities"
    caps.write_text(capabilities)
    # O2DLM_DLMFS_CAPABILITIES: the library's test hook for the sysfs file.
    fake = fake_dlmfs({"O2DLM_DLMFS_CAPABILITIES": str(caps)})
    rc, ctx = fake.api.initialize(fake.root.encode(), b"pytest")
    assert rc == 0, f"o2dlm_initialize on the fake dlmfs: {rc}"
    assert ctx
    return fake, ctx


@pytest.fixture
def fake_ctx(fake_dlmfs, tmp_path):
    """(FakeDlmfs, ctx): a context on domain "pytest" of a fake dlmfs whose
    capabilities say "bast stackglue", as current kernels do."""
    return _fake_ctx(fake_dlmfs, "bast stackglue\n", tmp_path)


@pytest.fixture
def fake_ctx_nobast(fake_dlmfs, tmp_path):
    """Like fake_ctx, on a dlmfs without the bast capability."""
    return _fake_ctx(fake_dlmfs, "stackglue\n", tmp_path)
