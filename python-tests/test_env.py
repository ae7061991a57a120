"""O2DLM_BACKEND and O2DLM_LOG. Each case runs in a fresh child process so
the variables are in place when the library initialises."""

import os

import pytest

from o2dlm_ctypes import E, name


def init(fake, domain=b"envdom", path=None):
    rc, ctx = fake.api.initialize(fake.root.encode() if path is None else path, domain)
    return rc, ctx


# --- O2DLM_BACKEND ----------------------------------------------------------------

@pytest.mark.parametrize("backend", [None, "auto", "dlmfs"])
def test_dlmfs_mount_is_used(fake_dlmfs, backend):
    fake = fake_dlmfs({} if backend is None else {"O2DLM_BACKEND": backend})
    rc, ctx = init(fake)
    assert name(rc) == "OK"
    assert fake.api.lock(ctx, b"a", 0, 1) == 0
    assert "a" in fake.entries(b"envdom".decode())
    assert fake.api.destroy(ctx) == 0


@pytest.mark.parametrize("backend", [None, "auto", "dlmfs"])
@pytest.mark.parametrize("where,want", [("missing", "OPEN_DLM_DIR"), ("file", "NO_FS_DIR"),
                                        ("tmpdir", "NO_FS"), ("proc", "NO_FS")])
def test_not_a_dlmfs_mount_gives_the_original_error(o2dlm_remote, tmp_path, backend, where,
                                                     want):
    paths = {"missing": tmp_path / "absent", "file": tmp_path / "file", "tmpdir": tmp_path,
             "proc": "/proc"}
    (tmp_path / "file").write_text("x")
    r = o2dlm_remote({} if backend is None else {"O2DLM_BACKEND": backend})
    rc, ctx = r.initialize(str(paths[where]).encode(), b"envdom")
    assert (name(rc), ctx) == (want, None)


@pytest.mark.parametrize("backend", [None, "auto", "dlmfs"])
def test_null_path_is_service_unavailable(o2dlm_remote, backend):
    r = o2dlm_remote({} if backend is None else {"O2DLM_BACKEND": backend})
    assert name(r.initialize(None, b"envdom")[0]) == "SERVICE_UNAVAILABLE"


@pytest.mark.parametrize("path", ["fake", "proc", None], ids=["dlmfs", "not-dlmfs", "null"])
def test_engine_is_not_built_yet(fake_dlmfs, path):
    fake = fake_dlmfs({"O2DLM_BACKEND": "engine"})
    p = {"fake": fake.root.encode(), "proc": b"/proc", None: None}[path]
    rc, ctx = fake.api.initialize(p, b"envdom")
    assert (name(rc), ctx) == ("SERVICE_UNAVAILABLE", None)
    assert os.listdir(fake.root) == [], "the engine choice touched the dlmfs mount"


@pytest.mark.parametrize("value", ["bogus", "dlmfs2", "kernel", "auto,dlmfs"])
def test_invalid_backend_value(fake_dlmfs, value):
    fake = fake_dlmfs({"O2DLM_BACKEND": value})
    rc, ctx = init(fake)
    assert (name(rc), ctx) == ("SERVICE_UNAVAILABLE", None)
    assert os.listdir(fake.root) == []


def test_argument_errors_come_before_the_backend_choice(o2dlm_remote):
    r = o2dlm_remote({"O2DLM_BACKEND": "engine"})
    assert name(r.initialize(b"/proc", None)[0]) == "INVALID_ARGS"
    assert name(r.initialize(b"/proc", b"d" * 255)[0]) == "NAME_TOO_LONG"


# --- O2DLM_LOG ---------------------------------------------------------------------

def exercise(fake):
    """A run with successes and failures of every kind."""
    rc, ctx = init(fake)
    assert rc == 0
    api = fake.api
    assert api.lock(ctx, b"a", 0, 1) == 0
    assert api.lock(ctx, b"a", 0, 1) == E.RECURSIVE_LOCK
    assert api.lock(ctx, b".bad", 0, 1) == E.INVALID_LOCK_NAME
    assert api.lock(ctx, b"b", 0x10, 1) == E.INVALID_ARGS
    assert api.write_lvb(ctx, b"a", b"lvb")[0] == 0
    assert api.read_lvb(ctx, b"zz", 64)[0] == E.UNKNOWN_LOCK
    assert api.unlock(ctx, b"a") == 0
    assert api.destroy(ctx) == 0
    assert api.initialize(b"/proc", b"envdom")[0] == E.NO_FS
    assert api.destroy(None) == E.INVALID_ARGS


def test_silent_by_default(fake_dlmfs):
    fake = fake_dlmfs()
    exercise(fake)
    assert fake.api.stderr() == ""


def test_silent_by_default_even_when_the_engine_is_refused(fake_dlmfs):
    fake = fake_dlmfs({"O2DLM_BACKEND": "engine"})
    assert init(fake)[0] == E.SERVICE_UNAVAILABLE
    assert fake.api.stderr() == ""


@pytest.mark.parametrize("level", ["debug", "trace"])
def test_debug_logs_on_stderr(fake_dlmfs, level):
    fake = fake_dlmfs({"O2DLM_LOG": level})
    pid = fake.api.getpid()
    exercise(fake)
    lines = fake.api.stderr().splitlines()
    assert lines, "no log output"
    bad = [l for l in lines if not l.startswith("o2dlm[")]
    assert not bad, f"lines without the o2dlm[ prefix: {bad}"
    assert all(l.startswith(f"o2dlm[{pid}]") for l in lines)


def test_levels_filter(fake_dlmfs):
    # A clean run has debug-level chatter but nothing at error level.
    counts = {}
    for level in ("error", "warn", "info", "debug"):
        fake = fake_dlmfs({"O2DLM_LOG": level})
        rc, ctx = init(fake)
        assert rc == 0
        assert fake.api.lock(ctx, b"a", 0, 1) == 0
        assert fake.api.destroy(ctx) == 0
        counts[level] = len(fake.api.stderr().splitlines())
    assert counts["error"] == 0
    assert counts["error"] <= counts["warn"] <= counts["info"] <= counts["debug"]
    assert counts["debug"] > counts["error"]


def test_engine_refusal_is_logged_at_error(fake_dlmfs):
    fake = fake_dlmfs({"O2DLM_BACKEND": "engine", "O2DLM_LOG": "error"})
    assert init(fake)[0] == E.SERVICE_UNAVAILABLE
    err = fake.api.stderr()
    assert err.startswith("o2dlm[") and "engine" in err


def test_unknown_log_value_does_not_break_the_library(fake_dlmfs):
    fake = fake_dlmfs({"O2DLM_LOG": "loud"})
    exercise(fake)
    assert "o2dlm[" not in fake.api.stderr()
