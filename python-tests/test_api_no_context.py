"""Entry points called without a usable context: NULL pointers, bad
domains and dlmfs paths, the capability probes. None of this needs dlmfs."""

import os

import pytest

from o2dlm_ctypes import (DOMAIN_MAX_LEN, MAX_FULL_DOMAIN_PATH, PR, EX, TRYLOCK, E,
                          Unterminated, name)

SENTINEL = 0x5A5A5A5A


def init_rc(o2dlm, path, domain):
    rc, ctx = o2dlm.initialize(path, domain, out_sentinel=SENTINEL)
    assert ctx == SENTINEL, f"*ctxt written on failure ({name(rc)})"
    return rc


# --- o2dlm_initialize ------------------------------------------------------------

def test_initialize_null_domain(o2dlm):
    assert init_rc(o2dlm, b"/proc", None) == E.INVALID_ARGS


def test_initialize_null_ctxt_out(o2dlm):
    rc, _ = o2dlm.initialize(b"/proc", b"d", null_out=True)
    assert rc == E.INVALID_ARGS


def test_initialize_missing_path(o2dlm, tmp_path):
    assert init_rc(o2dlm, str(tmp_path / "absent").encode(), b"d") == E.OPEN_DLM_DIR


def test_initialize_path_is_a_file(o2dlm, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert init_rc(o2dlm, str(f).encode(), b"d") == E.NO_FS_DIR


@pytest.mark.parametrize("path", [b"/proc", b"/", None], ids=["proc", "root", "tmp_path"])
def test_initialize_not_dlmfs(o2dlm, tmp_path, path):
    path = path or str(tmp_path).encode()
    assert init_rc(o2dlm, path, b"d") == E.NO_FS
    assert os.listdir(tmp_path) == []


def test_initialize_null_path_is_the_unsupported_fsdlm_mode(o2dlm):
    assert init_rc(o2dlm, None, b"d") == E.SERVICE_UNAVAILABLE


@pytest.mark.parametrize("length", [DOMAIN_MAX_LEN, DOMAIN_MAX_LEN + 1, 1000])
def test_initialize_domain_too_long(o2dlm, length):
    assert init_rc(o2dlm, b"/proc", b"d" * length) == E.NAME_TOO_LONG


def test_initialize_longest_domain_passes_the_name_check(o2dlm):
    assert init_rc(o2dlm, b"/proc", b"d" * (DOMAIN_MAX_LEN - 1)) == E.NO_FS


@pytest.mark.parametrize("domain", [b"", b".", b"..", b"a/b", b"/", b"a/", b"/a"])
def test_initialize_domain_not_a_plain_name(o2dlm, domain):
    # Checked before the path, so this holds on any path.
    assert init_rc(o2dlm, b"/proc", domain) == E.INVALID_ARGS


def test_initialize_path_plus_domain_limit(o2dlm):
    # "////…" is the root directory: long, but a real path that is not dlmfs.
    domain = b"domain"
    fits = b"/" * (MAX_FULL_DOMAIN_PATH - len(domain))
    assert init_rc(o2dlm, fits, domain) == E.NO_FS
    assert init_rc(o2dlm, fits + b"/", domain) == E.NAME_TOO_LONG


def test_initialize_unterminated_domain_is_not_overread(o2dlm_remote):
    # 255 bytes and then an unreadable page: the library may look at no more
    # than 255 bytes (a crash here kills only the child).
    r = o2dlm_remote()
    rc, _ = r.initialize(b"/proc", Unterminated(b"d" * DOMAIN_MAX_LEN))
    assert rc == E.NAME_TOO_LONG, name(rc)
    # 254 bytes + NUL right before the unreadable page is a valid name.
    rc, _ = r.initialize(b"/proc", Unterminated(b"d" * (DOMAIN_MAX_LEN - 1) + b"\0"))
    assert rc == E.NO_FS, name(rc)


def test_initialize_unterminated_path_is_refused(o2dlm_remote):
    r = o2dlm_remote()
    rc, _ = r.initialize(Unterminated(b"/" * (MAX_FULL_DOMAIN_PATH + 1)), b"d")
    assert rc == E.NAME_TOO_LONG, name(rc)


# --- NULL context ---------------------------------------------------------------

def test_destroy_null(o2dlm):
    assert o2dlm.destroy(None) == E.INVALID_ARGS


@pytest.mark.parametrize("call", [
    lambda a: a.lock(None, b"a", 0, PR),
    lambda a: a.lock(None, b"a", TRYLOCK, EX),
    lambda a: a.lock_with_bast(None, b"a", 0, PR)[0],
    lambda a: a.unlock(None, b"a"),
    lambda a: a.drop_lock(None, b"a"),
    lambda a: a.read_lvb(None, b"a", 64)[0],
    lambda a: a.write_lvb(None, b"a", b"x")[0],
], ids=["lock", "trylock", "lock_with_bast", "unlock", "drop_lock", "read_lvb", "write_lvb"])
def test_null_context(o2dlm, call):
    assert call(o2dlm) == E.INVALID_ARGS


def test_null_context_leaves_out_values_alone(o2dlm):
    rc, buf, count = o2dlm.read_lvb(None, b"a", 16)
    assert (rc, buf, count) == (E.INVALID_ARGS, b"\xa5" * 16, 0xDEAD)
    rc, fd = o2dlm.lock_with_bast(None, b"a")
    assert (rc, fd) == (E.INVALID_ARGS, -12345)
    rc, count = o2dlm.write_lvb(None, b"a", b"xyz")
    assert (rc, count) == (E.INVALID_ARGS, 0xDEAD)


@pytest.mark.parametrize("fd", [-1, 0, 1, 2, 12345])
def test_process_bast_null_context_is_a_no_op(o2dlm, fd):
    assert o2dlm.process_bast(None, fd) == 0


def test_null_context_and_every_other_argument_bad(o2dlm):
    # The NULL context is reported whatever else is wrong.
    assert o2dlm.lock(None, None, 0x7F, 99) == E.INVALID_ARGS
    assert o2dlm.read_lvb(None, None, 0, null_buf=True)[0] == E.INVALID_ARGS
    assert o2dlm.write_lvb(None, None, b"", 1000, null_buf=True)[0] == E.INVALID_ARGS


# --- capabilities --------------------------------------------------------------

CAPS = "/sys/module/ocfs2_dlmfs/parameters/capabilities"


@pytest.mark.parametrize("what", ["bast", "stackglue"])
def test_supports_on_this_host(o2dlm, what):
    rc, value = o2dlm.supports(what)
    assert rc == 0
    if os.path.exists(CAPS):
        words = open(CAPS).readline().split()
        assert value == int(what in words)
    else:
        assert value == 0


@pytest.mark.parametrize("what", ["bast", "stackglue"])
def test_supports_null(o2dlm, what):
    assert o2dlm.supports(what, null=True)[0] == E.INVALID_ARGS


@pytest.mark.parametrize("content,bast,stackglue", [
    ("bast stackglue\n", 1, 1),
    ("stackglue bast", 1, 1),
    ("bast\n", 1, 0),
    ("stackglue\n", 0, 1),
    ("bastion stackgluey\n", 0, 0),
    ("\nbast stackglue\n", 0, 0),
    ("", 0, 0),
])
def test_supports_parses_the_capabilities_line(o2dlm, monkeypatch, tmp_path, content, bast,
                                               stackglue):
    # O2DLM_DLMFS_CAPABILITIES is the library's test hook for the sysfs path.
    caps = tmp_path / "capabilities"
    caps.write_text(content)
    monkeypatch.setenv("O2DLM_DLMFS_CAPABILITIES", str(caps))
    assert o2dlm.supports("bast") == (0, bast)
    assert o2dlm.supports("stackglue") == (0, stackglue)


def test_supports_missing_file_is_no_capability(o2dlm, monkeypatch, tmp_path):
    monkeypatch.setenv("O2DLM_DLMFS_CAPABILITIES", str(tmp_path / "absent"))
    assert o2dlm.supports("bast") == (0, 0)
    assert o2dlm.supports("stackglue") == (0, 0)


def test_supports_unreadable_file_is_service_unavailable(o2dlm, monkeypatch, tmp_path):
    # A directory exists but cannot be read as a file.
    monkeypatch.setenv("O2DLM_DLMFS_CAPABILITIES", str(tmp_path))
    assert o2dlm.supports("bast") == (E.SERVICE_UNAVAILABLE, 77)
    assert o2dlm.supports("stackglue") == (E.SERVICE_UNAVAILABLE, 77)
