"""Thread-safety smoke tests: many threads making bad and good calls at once.
(ctypes releases the GIL around each foreign call, so the calls overlap.)"""

from o2dlm_ctypes import LVB_LEN, PR, EX, TRYLOCK, E, Unterminated, name

THREADS = 8


def test_bad_input_without_context_from_many_threads(o2dlm):
    jobs = [
        ("lock", (None, b"a", 0, PR), E.INVALID_ARGS),
        ("lock_with_bast", (None, b"a", 0, PR), E.INVALID_ARGS),
        ("unlock", (None, b"a"), E.INVALID_ARGS),
        ("drop_lock", (None, b"a"), E.INVALID_ARGS),
        ("read_lvb", (None, b"a", LVB_LEN), E.INVALID_ARGS),
        ("write_lvb", (None, b"a", b"x"), E.INVALID_ARGS),
        ("destroy", (None,), E.INVALID_ARGS),
        ("supports", ("bast", True), E.INVALID_ARGS),
        ("supports", ("stackglue",), 0),
        ("initialize", (b"/proc", None), E.INVALID_ARGS),
        ("initialize", (b"/proc", b"d" * 300), E.NAME_TOO_LONG),
        ("initialize", (b"/proc", b"a/b"), E.INVALID_ARGS),
        ("initialize", (b"/proc", b"dom"), E.NO_FS),
        ("initialize", (b"/nonexistent/o2dlm", b"dom"), E.OPEN_DLM_DIR),
    ]
    assert o2dlm.hammer(jobs, THREADS, 300) == []


def test_bad_input_on_one_shared_context(fake_ctx):
    fake, ctx = fake_ctx
    api = fake.api
    assert api.lock(ctx, b"held", 0, EX) == 0
    jobs = [
        ("lock", (ctx, b".x", 0, PR), E.INVALID_LOCK_NAME),
        ("lock", (ctx, b"x" * 40, 0, PR), E.INVALID_LOCK_NAME),
        ("lock", (ctx, Unterminated(b"u" * 32), 0, PR), E.INVALID_LOCK_NAME),
        ("lock", (ctx, b"n", 0, 7), E.INVALID_LOCK_LEVEL),
        ("lock", (ctx, b"n", 0x8, PR), E.INVALID_ARGS),
        ("lock", (ctx, b"held", TRYLOCK, PR), E.RECURSIVE_LOCK),
        ("lock_with_bast", (ctx, b"n/", 0, PR), E.INVALID_LOCK_NAME),
        ("lock_with_bast", (ctx, b"n", 0, 2), E.INVALID_LOCK_LEVEL),
        ("lock_with_bast", (ctx, b"held", 0, PR), E.RECURSIVE_LOCK),
        ("unlock", (ctx, b"n"), E.UNKNOWN_LOCK),
        ("unlock", (ctx, None), E.INVALID_ARGS),
        ("drop_lock", (ctx, b"held"), E.BUSY_LOCK),
        ("write_lvb", (ctx, b"held", b"z" * 10, 65), E.INVALID_ARGS),
        ("read_lvb", (ctx, b"n", LVB_LEN), E.UNKNOWN_LOCK),
        ("read_lvb", (ctx, b"held", LVB_LEN), E.LVB_INVALID),
    ]
    assert api.hammer(jobs, THREADS, 200) == []
    # Nothing changed underneath.
    assert len(fake.entries()) == 2
    assert api.unlock(ctx, b"held") == 0
    assert api.destroy(ctx) == 0


def test_one_id_locked_by_many_threads_of_one_context(fake_ctx):
    fake, ctx = fake_ctx
    for round_ in range(20):
        results = fake.api.race_lock(ctx, b"contended", THREADS)
        assert sorted(map(name, results)) == ["OK"] + ["RECURSIVE_LOCK"] * (THREADS - 1), \
            f"round {round_}"
        assert fake.api.unlock(ctx, b"contended") == 0


def test_good_calls_on_separate_ids_from_many_threads(fake_ctx):
    # Each thread locks, writes, reads back and unlocks an id of its own.
    fake, ctx = fake_ctx
    assert fake.api.hammer_ids(ctx, THREADS, 100) == []
    assert len(fake.entries()) == 1 + THREADS
    assert fake.api.destroy(ctx) == 0
