"""pytest glue for the kernel (qemu) tests.

* marker ``kernel``: every test here needs qemu; select or deselect with
  ``-m kernel`` / ``-m "not kernel"``.
* ``O2DLM_SKIP_KERNEL=1`` reports these tests as skipped. Without it, a
  harness that cannot boot makes them fail: a broken harness must not look
  like a passing suite.
* on a failure, the kernel log of every running guest is attached to the
  report (section "dmesg <vm>").
* ``O2DLM_STAGE``: the staged install of our library (the prefix holding
  lib/pkgconfig/o2dlm.pc); default <repo>/target/stage/usr/local, as made by
  ``make stage``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, Union

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import vm as kvm  # noqa: E402

REPO = HERE.parent.parent
CHECK_SRC = REPO / "c-tests" / "guest" / "dlmfs_check.c"
BUILDS = ("real", "ours")


def pytest_configure(config):
    config.addinivalue_line("markers", "kernel: needs qemu and a Debian Linux 6.1 kernel (slow, ~1 min boot)")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("O2DLM_SKIP_KERNEL") != "1":
        return
    skip = pytest.mark.skip(reason="O2DLM_SKIP_KERNEL=1: kernel tests in qemu were not run")
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed or "kernel" not in item.keywords:
        return
    for guest in kvm.live_vms():
        try:
            text = guest.dmesg()
        except Exception as e:  # a log must never hide the real failure
            text = f"(no log: {e})"
        # the cluster stack's lines, then the tail (whatever it is)
        lines = text.splitlines()
        stack = [x for x in lines if re.search(r"o2|ocfs2|dlm|OCFS2|O2T", x)][-150:]
        tail = lines[-40:]
        rep.sections.append((f"dmesg {guest.name}", "\n".join(stack + ["-- last lines --"] + tail)))


# --------------------------------------------------------------------------
# builds of the guest program


def stage_prefix() -> Path:
    return Path(os.environ.get("O2DLM_STAGE", REPO / "target" / "stage" / "usr" / "local"))


def _gcc(out: Path, args) -> None:
    cmd = ["gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-Wno-error=unused-parameter",
           "-o", str(out), str(CHECK_SRC)] + list(args)
    res = subprocess.run(cmd, capture_output=True, text=True)
    # glibc warns about dlopen in static programs; anything else is an error
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(map(shlex.quote, cmd))} failed:\n{res.stderr}")


def build_real(outdir: Path) -> Path:
    """Against Debian's ocfs2-tools libo2dlm.a: the reference behaviour."""
    kvm.ensure_host_packages(["ocfs2-tools-dev", "comerr-dev"])
    out = outdir / "dlmfs_check-real"
    _gcc(out, ["-lo2dlm", "-lcom_err", "-lpthread", "-ldl", "-lm"])
    if _has_rust_symbols(out):
        raise RuntimeError(f"{out} unexpectedly contains Rust code")
    return out


def build_ours(outdir: Path) -> Path:
    """Against our staged libo2dlm.a, through pkg-config like a user."""
    kvm.ensure_host_packages(["comerr-dev", "pkg-config"])
    prefix = stage_prefix()
    pcdir = prefix / "lib" / "pkgconfig"
    if not (pcdir / "o2dlm.pc").exists():
        raise RuntimeError(f"our library is not staged: no {pcdir}/o2dlm.pc (run `make stage` or set O2DLM_STAGE)")
    env = dict(os.environ, PKG_CONFIG_PATH=str(pcdir))
    res = subprocess.run(["pkg-config", "--cflags", "--libs", "--static", "o2dlm"], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"pkg-config o2dlm failed: {res.stderr}")
    out = outdir / "dlmfs_check-ours"
    _gcc(out, res.stdout.split() + ["-lcom_err", "-lpthread", "-ldl", "-lm"])
    # proof that the static link took our archive, not Debian's
    if not _has_rust_symbols(out):
        raise RuntimeError(f"{out} has no Rust symbols: linked against the wrong libo2dlm.a?")
    return out


def _has_rust_symbols(path: Path) -> bool:
    res = subprocess.run(["nm", str(path)], capture_output=True, text=True)
    return "rust_begin_unwind" in res.stdout or "_ZN4core" in res.stdout


@pytest.fixture(scope="session")
def dlmfs_check_bins(tmp_path_factory) -> Dict[str, Union[Path, str]]:
    """build -> path of the static binary, or the reason it could not be built."""
    outdir = tmp_path_factory.mktemp("dlmfs_check")
    bins: Dict[str, Union[Path, str]] = {}
    for build, fn in (("real", build_real), ("ours", build_ours)):
        try:
            bins[build] = fn(outdir)
        except Exception as e:
            bins[build] = str(e)
    return bins


# --------------------------------------------------------------------------
# guests


@pytest.fixture(scope="module")
def kernel_cluster(tmp_path_factory, dlmfs_check_bins):
    """Two kernel nodes (0 and 1), dlmfs on /dlm in both, with
    /bin/dlmfs_check-<build> in each guest. Module scope: one boot for the
    dlmfs module (the only user), and never two clusters at once."""
    extra = {f"bin/dlmfs_check-{b}": p for b, p in dlmfs_check_bins.items() if isinstance(p, Path)}
    state = tmp_path_factory.mktemp("cluster")
    cluster = kvm.boot_cluster(state, n=2, seed="cluster", extra_files=extra)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def single_vm(tmp_path_factory, request):
    """Kernel node 0 with node 1 left for a host process (see vm.HostPeerFacts)."""
    state = tmp_path_factory.mktemp("single")
    node = kvm.boot_single_vm(state, seed=request.node.nodeid)
    try:
        yield node
    finally:
        node.stop()
