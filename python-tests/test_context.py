"""Calls on a live context. Contexts need a dlmfs mount, which this host
lacks, so they run in a child process under fakedlmfs.so, which makes a
plain directory pass the dlmfs check; the calls then work on ordinary files.
That is enough for argument checking and the context's own bookkeeping;
locking itself (conflicts, BASTs, LVB semantics) is tested on a real kernel
dlmfs elsewhere."""

import os

import pytest

from o2dlm_ctypes import (DOMAIN_MAX_LEN, LOCK_ID_MAX_LEN, LVB_LEN, PR, EX, TRYLOCK, E,
                          Unterminated, name)
from o2dlm_remote import RemoteDied

BAD_NAMES = [b"", b".", b"..", b".hidden", b"a/b", b"/a", b"a/", b"x" * LOCK_ID_MAX_LEN,
             b"x" * 100]
BAD_NAME_IDS = ["empty", "dot", "dotdot", "dotname", "slash", "lead-slash", "trail-slash",
                "32-chars", "100-chars"]
BAD_LEVELS = [-1, 2, 3, 100, 2**31 - 1, -2**31]
BAD_FLAGS = [0x2, 0x4, 0x80, 0x100, 0x3, -1, 2**31 - 1, -2**31]
ID31 = b"i" * (LOCK_ID_MAX_LEN - 1)


def every_id_call(api, ctx, lockid):
    """The return code of every entry point that takes a lock id."""
    return {
        "lock": api.lock(ctx, lockid, 0, PR),
        "lock_with_bast": api.lock_with_bast(ctx, lockid, 0, PR)[0],
        "unlock": api.unlock(ctx, lockid),
        "drop_lock": api.drop_lock(ctx, lockid),
        "read_lvb": api.read_lvb(ctx, lockid, LVB_LEN)[0],
        "write_lvb": api.write_lvb(ctx, lockid, b"x")[0],
    }


def named(results):
    return {k: name(v) for k, v in results.items()}


# --- the harness itself ---------------------------------------------------------

def test_guard_page_catches_an_overread(o2dlm_remote):
    r = o2dlm_remote()
    with pytest.raises(RemoteDied, match="SIGSEGV"):
        r.overread_probe(b"abc")


def test_fake_dlmfs_gives_a_context(fake_ctx):
    fake, ctx = fake_ctx
    entries = fake.entries()
    # The private context lock: "." + 16 lower-case hex digits.
    assert len(entries) == 1 and len(entries[0]) == 17 and entries[0][0] == "."
    assert all(c in "0123456789abcdef" for c in entries[0][1:])


# --- lock ids ---------------------------------------------------------------------

@pytest.mark.parametrize("lockid", BAD_NAMES, ids=BAD_NAME_IDS)
def test_bad_lock_id(fake_ctx, lockid):
    fake, ctx = fake_ctx
    got = every_id_call(fake.api, ctx, lockid)
    assert named(got) == {k: "INVALID_LOCK_NAME" for k in got}
    assert len(fake.entries()) == 1, f"files created: {fake.entries()}"


def test_null_lock_id(fake_ctx):
    fake, ctx = fake_ctx
    got = every_id_call(fake.api, ctx, None)
    assert named(got) == {k: "INVALID_ARGS" for k in got}


def test_unterminated_lock_id_is_not_overread(fake_ctx):
    # 32 bytes with no NUL, then an unreadable page.
    fake, ctx = fake_ctx
    got = every_id_call(fake.api, ctx, Unterminated(b"u" * LOCK_ID_MAX_LEN))
    assert named(got) == {k: "INVALID_LOCK_NAME" for k in got}


def test_longest_lock_id_right_before_the_guard_page(fake_ctx):
    fake, ctx = fake_ctx
    lockid = Unterminated(ID31 + b"\0")
    assert fake.api.lock(ctx, lockid, 0, EX) == 0
    assert fake.api.write_lvb(ctx, lockid, b"v") == (0, 1)
    assert fake.api.unlock(ctx, lockid) == 0
    assert fake.api.drop_lock(ctx, lockid) == 0


def test_lock_id_stops_at_the_nul(fake_ctx):
    fake, ctx = fake_ctx
    # Bytes after the NUL are not part of the id.
    assert fake.api.lock(ctx, b"abc\0/../x", 0, PR) == 0
    assert fake.api.unlock(ctx, b"abc") == 0
    assert "abc" in fake.entries()


@pytest.mark.parametrize("lockid", [b"a", ID31, b"with space", b"\xff\xfe", b"a.b", b"-_~"])
def test_good_lock_ids(fake_ctx, lockid):
    fake, ctx = fake_ctx
    assert fake.api.lock(ctx, lockid, 0, EX) == 0
    assert fake.api.unlock(ctx, lockid) == 0


# --- levels and flags --------------------------------------------------------------

@pytest.mark.parametrize("level", BAD_LEVELS)
def test_bad_level(fake_ctx, level):
    fake, ctx = fake_ctx
    assert name(fake.api.lock(ctx, b"a", 0, level)) == "INVALID_LOCK_LEVEL"
    assert name(fake.api.lock_with_bast(ctx, b"a", 0, level)[0]) == "INVALID_LOCK_LEVEL"
    assert len(fake.entries()) == 1


@pytest.mark.parametrize("flags", BAD_FLAGS, ids=[hex(f & 0xFFFFFFFF) for f in BAD_FLAGS])
def test_unknown_flag_bits_are_refused(fake_ctx, flags):
    # The original silently masked them off.
    fake, ctx = fake_ctx
    assert name(fake.api.lock(ctx, b"a", flags, PR)) == "INVALID_ARGS"
    assert name(fake.api.lock_with_bast(ctx, b"a", flags, PR)[0]) == "INVALID_ARGS"
    assert len(fake.entries()) == 1
    assert fake.api.unlock(ctx, b"a") == E.UNKNOWN_LOCK


@pytest.mark.parametrize("flags,level", [(0, PR), (0, EX), (TRYLOCK, PR), (TRYLOCK, EX)])
def test_valid_flags_and_levels(fake_ctx, flags, level):
    fake, ctx = fake_ctx
    assert fake.api.lock(ctx, b"a", flags, level) == 0
    assert fake.api.unlock(ctx, b"a") == 0


def test_bad_name_is_reported_before_bad_level_and_flags(fake_ctx):
    fake, ctx = fake_ctx
    assert fake.api.lock(ctx, b".x", 0x2, 7) == E.INVALID_LOCK_NAME


# --- LVB ---------------------------------------------------------------------------

@pytest.mark.parametrize("length", [LVB_LEN + 1, 100, 4096, 2**32 - 1])
def test_write_lvb_longer_than_64_is_refused(fake_ctx, length):
    # Only 10 bytes are readable: reading `length` of them would crash.
    fake, ctx = fake_ctx
    assert fake.api.lock(ctx, b"a", 0, EX) == 0
    assert fake.api.write_lvb(ctx, b"a", b"0123456789", length) == (E.INVALID_ARGS, 0xDEAD)
    assert os.path.getsize(os.path.join(fake.domain_dir(), "a")) == 0


def test_write_lvb_of_64(fake_ctx):
    fake, ctx = fake_ctx
    data = bytes(range(64))
    assert fake.api.lock(ctx, b"a", 0, EX) == 0
    assert fake.api.write_lvb(ctx, b"a", data) == (0, 64)
    rc, buf, n = fake.api.read_lvb(ctx, b"a", 64)
    assert (rc, buf, n) == (0, data, 64)


def test_write_lvb_null_buffer(fake_ctx):
    fake, ctx = fake_ctx
    assert fake.api.lock(ctx, b"a", 0, EX) == 0
    assert fake.api.write_lvb(ctx, b"a", b"", 8, null_buf=True) == (E.INVALID_ARGS, 0xDEAD)


def test_write_lvb_null_count_is_allowed(fake_ctx):
    fake, ctx = fake_ctx
    assert fake.api.lock(ctx, b"a", 0, EX) == 0
    assert fake.api.write_lvb(ctx, b"a", b"abc", null_count=True) == (0, 0xDEAD)
    assert fake.api.read_lvb(ctx, b"a", 3) == (0, b"abc", 3)


def test_read_lvb_reads_at_most_64(fake_ctx):
    # Put 100 bytes in the (plain) lock file behind the library's back, then
    # ask for 100: only 64 may be read, the rest of the buffer stays as is.
    fake, ctx = fake_ctx
    assert fake.api.lock(ctx, b"a", 0, EX) == 0
    with open(os.path.join(fake.domain_dir(), "a"), "wb") as f:
        f.write(bytes(range(100)))
    rc, buf, n = fake.api.read_lvb(ctx, b"a", 100)
    assert (name(rc), n) == ("OK", 64)
    assert buf == bytes(range(64)) + b"\xa5" * 36


def test_read_lvb_null_buffer(fake_ctx):
    fake, ctx = fake_ctx
    assert fake.api.lock(ctx, b"a", 0, EX) == 0
    assert fake.api.write_lvb(ctx, b"a", b"abc") == (0, 3)
    rc, _, n = fake.api.read_lvb(ctx, b"a", 64, null_buf=True)
    assert (name(rc), n) == ("INVALID_ARGS", 0xDEAD)


def test_read_lvb_zero_length(fake_ctx):
    # As the original on a real dlmfs (checked in the kernel tests): the
    # read returns 0 bytes, which means LVB_INVALID. Nothing is written.
    fake, ctx = fake_ctx
    assert fake.api.lock(ctx, b"a", 0, EX) == 0
    assert fake.api.write_lvb(ctx, b"a", b"abc") == (0, 3)
    rc, buf, n = fake.api.read_lvb(ctx, b"a", 0, bufsize=4)
    assert (name(rc), buf, n) == ("LVB_INVALID", b"\xa5" * 4, 0xDEAD)


def test_read_lvb_null_count_is_allowed(fake_ctx):
    fake, ctx = fake_ctx
    assert fake.api.lock(ctx, b"a", 0, EX) == 0
    assert fake.api.write_lvb(ctx, b"a", b"abc") == (0, 3)
    assert fake.api.read_lvb(ctx, b"a", 8, null_count=True) == (0, b"abc" + b"\xa5" * 5,
                                                                 0xDEAD)


def test_lvb_calls_need_a_held_lock(fake_ctx):
    fake, ctx = fake_ctx
    assert fake.api.read_lvb(ctx, b"a", 64)[0] == E.UNKNOWN_LOCK
    assert fake.api.write_lvb(ctx, b"a", b"x") == (E.UNKNOWN_LOCK, 0xDEAD)


# --- BAST registration ---------------------------------------------------------------

def test_lock_with_bast_null_callback_or_fd(fake_ctx):
    fake, ctx = fake_ctx
    assert fake.api.lock_with_bast(ctx, b"a", null_func=True) == (E.INVALID_ARGS, -12345)
    assert fake.api.lock_with_bast(ctx, b"a", null_fd=True)[0] == E.INVALID_ARGS
    assert fake.api.unlock(ctx, b"a") == E.UNKNOWN_LOCK


def test_lock_with_bast_without_the_capability(fake_ctx_nobast):
    fake, ctx = fake_ctx_nobast
    assert fake.api.lock_with_bast(ctx, b"a") == (E.BAST_UNSUPPORTED, -12345)
    assert fake.api.unlock(ctx, b"a") == E.UNKNOWN_LOCK
    assert len(fake.entries()) == 1


def test_lock_with_bast_check_order(fake_ctx_nobast):
    # As in the original: NULL callback/fd first, then BAST support, then
    # the lock arguments. A NULL lock id is a NULL pointer: INVALID_ARGS
    # first (the original reported BAST_UNSUPPORTED here).
    fake, ctx = fake_ctx_nobast
    assert fake.api.lock_with_bast(ctx, b".bad", 0x2, 9, null_func=True)[0] == E.INVALID_ARGS
    assert fake.api.lock_with_bast(ctx, b".bad", 0x2, 9, null_fd=True)[0] == E.INVALID_ARGS
    assert fake.api.lock_with_bast(ctx, None, 0, PR)[0] == E.INVALID_ARGS
    assert fake.api.lock_with_bast(ctx, b".bad", 0x2, 9)[0] == E.BAST_UNSUPPORTED
    assert fake.api.lock_with_bast(ctx, b"ok", 0, 9)[0] == E.BAST_UNSUPPORTED
    assert fake.api.lock_with_bast(ctx, b"ok", 0x2, PR)[0] == E.BAST_UNSUPPORTED


def test_lock_with_bast_without_capabilities_file(fake_dlmfs, tmp_path):
    fake = fake_dlmfs({"O2DLM_DLMFS_CAPABILITIES": str(tmp_path / "absent")})
    rc, ctx = fake.api.initialize(fake.root.encode(), b"pytest")
    assert rc == 0
    assert fake.api.lock_with_bast(ctx, b"a") == (E.BAST_UNSUPPORTED, -12345)


def test_lock_with_bast_unreadable_capabilities(fake_dlmfs, tmp_path):
    fake = fake_dlmfs({"O2DLM_DLMFS_CAPABILITIES": str(tmp_path)})
    rc, ctx = fake.api.initialize(fake.root.encode(), b"pytest")
    assert rc == 0
    assert fake.api.lock_with_bast(ctx, b"a") == (E.SERVICE_UNAVAILABLE, -12345)


def test_bast_registration_lifecycle(fake_ctx):
    fake, ctx = fake_ctx
    rc, fd = fake.api.lock_with_bast(ctx, b"a", 0, EX)
    assert rc == 0 and fd >= 0 and fake.api.fd_is_open(fd)
    assert fake.api.lock_with_bast(ctx, b"a", 0, EX)[0] == E.RECURSIVE_LOCK
    assert fake.api.process_bast(ctx, fd + 1000) == 0
    assert fake.api.process_bast(ctx, fd) == 1
    assert fake.api.unlock(ctx, b"a") == 0
    assert not fake.api.fd_is_open(fd)
    assert fake.api.process_bast(ctx, fd) == 0, "callback survived the unlock"
    assert fake.api.destroy(ctx) == 0


@pytest.mark.parametrize("fd", [-1, 0, 1, 2, 99999])
def test_process_bast_unknown_fd_is_a_no_op(fake_ctx, fd):
    fake, ctx = fake_ctx
    assert fake.api.lock(ctx, b"a", 0, EX) == 0
    assert fake.api.process_bast(ctx, fd) == 0
    assert fake.api.unlock(ctx, b"a") == 0


# --- state after bad calls --------------------------------------------------------

def bad_calls(api, ctx):
    """Every kind of refused call, aimed at held lock "a" and unheld "b"."""
    for lockid in (b"a", b"b"):
        api.lock(ctx, lockid, 0x2, EX)
        api.lock(ctx, lockid, 0, 5)
        api.lock_with_bast(ctx, lockid, 0x4, PR)
        api.lock_with_bast(ctx, lockid, 0, PR, True)
        api.lock_with_bast(ctx, lockid, 0, PR, False, True)
        api.write_lvb(ctx, lockid, b"0123456789", 65)
        api.write_lvb(ctx, lockid, b"", 1, True)
        api.read_lvb(ctx, lockid, 64, None, True)
        api.read_lvb(ctx, lockid, 0)
    for lockid in BAD_NAMES + [None, Unterminated(b"a" * 32)]:
        every_id_call(api, ctx, lockid)
    api.process_bast(ctx, -1)


def test_state_intact_after_bad_calls(fake_ctx):
    fake, ctx = fake_ctx
    api = fake.api
    assert api.lock(ctx, b"a", 0, EX) == 0
    assert api.write_lvb(ctx, b"a", b"before") == (0, 6)
    files_before = fake.entries()

    bad_calls(api, ctx)

    assert fake.entries() == files_before
    assert api.read_lvb(ctx, b"a", 64)[:2] == (0, b"before" + b"\xa5" * 58)
    assert api.lock(ctx, b"a", 0, EX) == E.RECURSIVE_LOCK, "a no longer held"
    assert api.unlock(ctx, b"b") == E.UNKNOWN_LOCK, "b became held"
    assert api.drop_lock(ctx, b"a") == E.BUSY_LOCK
    assert api.unlock(ctx, b"a") == 0
    assert api.unlock(ctx, b"a") == E.UNKNOWN_LOCK
    assert api.lock(ctx, b"b", TRYLOCK, PR) == 0
    assert api.unlock(ctx, b"b") == 0
    assert api.destroy(ctx) == 0
    assert os.listdir(fake.root) == []


def test_failed_lock_leaves_no_registration(fake_ctx):
    # A lock refused for a bad level must not make the id "held".
    fake, ctx = fake_ctx
    assert fake.api.lock(ctx, b"a", 0, 9) == E.INVALID_LOCK_LEVEL
    assert fake.api.lock(ctx, b"a", 0, PR) == 0


# --- lifecycle -------------------------------------------------------------------------

def test_destroy_releases_everything(fake_ctx):
    fake, ctx = fake_ctx
    for i in range(5):
        assert fake.api.lock(ctx, f"l{i}".encode(), 0, EX if i % 2 else PR) == 0
    assert fake.api.write_lvb(ctx, b"l1", b"lvb") == (0, 3)
    assert len(fake.entries()) == 6
    assert fake.api.destroy(ctx) == 0
    assert os.listdir(fake.root) == []


def test_two_contexts_in_one_process(fake_dlmfs):
    fake = fake_dlmfs()
    rc1, c1 = fake.api.initialize(fake.root.encode(), b"one")
    rc2, c2 = fake.api.initialize(fake.root.encode(), b"two")
    assert (rc1, rc2) == (0, 0) and c1 != c2
    assert fake.api.lock(c1, b"a", 0, EX) == 0
    # Held in c1 only.
    assert fake.api.lock(c2, b"a", 0, EX) == 0
    assert fake.api.unlock(c1, b"a") == 0
    assert fake.api.unlock(c1, b"a") == E.UNKNOWN_LOCK
    assert fake.api.unlock(c2, b"a") == 0
    assert fake.api.destroy(c1) == 0
    assert sorted(os.listdir(fake.root)) == ["two"]
    assert fake.api.destroy(c2) == 0


@pytest.mark.parametrize("domain", [b"", b".", b"..", b"a/b"])
def test_bad_domain_on_dlmfs_creates_nothing(fake_dlmfs, domain):
    fake = fake_dlmfs()
    rc, ctx = fake.api.initialize(fake.root.encode(), domain)
    assert (name(rc), ctx) == ("INVALID_ARGS", None)
    assert os.listdir(fake.root) == []


def test_too_long_domain_on_dlmfs(fake_dlmfs):
    fake = fake_dlmfs()
    for domain in (b"d" * DOMAIN_MAX_LEN, Unterminated(b"d" * DOMAIN_MAX_LEN)):
        rc, ctx = fake.api.initialize(fake.root.encode(), domain)
        assert (name(rc), ctx) == ("NAME_TOO_LONG", None)
    assert os.listdir(fake.root) == []


def test_domain_path_that_is_a_file(fake_dlmfs):
    fake = fake_dlmfs()
    open(os.path.join(fake.root, "dom"), "w").close()
    rc, ctx = fake.api.initialize(fake.root.encode(), b"dom")
    assert (name(rc), ctx) == ("BAD_DOMAIN_DIR", None)
