"""ctypes view of libo2dlm for the tests, and the facts they check it against.

`Api` wraps every entry point so that each call takes and returns plain,
picklable Python values: the same object serves in-process tests and, via
o2dlm_driver.py, tests that must run in a child process (environment read at
initialisation, the fakedlmfs.so preload, calls that would crash a process if
the library misbehaved).

Pointer arguments: `None` passes NULL; `bytes` passes a NUL-terminated copy;
`Unterminated(data)` passes `data` with no NUL, placed so that the byte after
it is the first byte of an inaccessible page (reading past it crashes).
"""

import ctypes
import mmap
import os
import threading

# libo2dlm-abi.md §4: the com_err table "o2dl".
ERROR_TABLE_BASE = -1485330944
ERROR_CODES = [  # (name, message) in table order; code = base + index
    ("NO_MEMORY", "Memory allocation failed"),
    ("SERVICE_UNAVAILABLE", "Unable to access cluster service"),
    ("INVALID_LOCK_NAME", "Invalid name for a lock"),
    ("INVALID_LOCK_LEVEL", "Invalid locking level"),
    ("INTERNAL_FAILURE", "Internal logic failure"),
    ("NAME_TOO_LONG", "Name too long"),
    ("STATFS", "Could not stat user_dlmfs mountpoint"),
    ("NO_FS_DIR", "Dlmfs path specified is not a directory."),
    ("NO_FS", "ocfs2_dlmfs file system was not found"),
    ("OPEN_DLM_DIR", "Could not open dlm directory"),
    ("NO_DOMAIN_DIR", "No directory for domain was found"),
    ("BAD_DOMAIN_DIR", "Could not stat domain directory"),
    ("BUSY_DOMAIN_DIR", "Domain directory has active locks"),
    ("DOMAIN_DIR", "Could not read domain dir"),
    ("DOMAIN_DESTROY", "Could not destroy domain"),
    ("DOMAIN_CREATE", "Could not create domain"),
    ("RANDOM", "Could not generate random value"),
    ("BUSY_LOCK", "Lock resource is in use by another process"),
    ("OUTPUT_ERROR", "Output Error"),
    ("UNLINK", "Error unlinking lock resource"),
    ("UNKNOWN_LOCK", "Could not find lock resource"),
    ("RECURSIVE_LOCK", "Already have a lock on this resource"),
    ("LOCKING", "Could not take lock"),
    ("FAILED_UNLOCKS", "Could not drop all locks"),
    ("INVALID_ARGS", "Invalid arguments passed to function"),
    ("TRYLOCK_FAILED", "Trylock failed"),
    ("LVB_READ", "Error reading LVB"),
    ("LVB_WRITE", "Error writing LVB"),
    ("SEEK", "Could not seek within file descriptor"),
    ("DOMAIN_BUSY", "The domain is busy and cannot be accessed"),
    ("BAST_UNSUPPORTED", "This environment does not support BASTs"),
    ("LVB_INVALID", "The LVB is not valid"),
]


class E:
    """O2DLM_ET_* codes by short name, e.g. E.INVALID_ARGS."""


for _i, (_name, _msg) in enumerate(ERROR_CODES):
    setattr(E, _name, ERROR_TABLE_BASE + _i)

NAME_OF = {ERROR_TABLE_BASE + i: n for i, (n, _) in enumerate(ERROR_CODES)}


def name(rc):
    """Readable form of a return code for assertion messages."""
    return "OK" if rc == 0 else NAME_OF.get(rc, str(rc))


LOCK_ID_MAX_LEN = 32
DOMAIN_MAX_LEN = 255
MAX_FULL_DOMAIN_PATH = 4097  # PATH_MAX + 1
LVB_LEN = 64
TRYLOCK = 0x01
PR, EX = 0, 1

BAST_FUNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class ErrorTable(ctypes.Structure):
    """com_err's struct error_table."""

    _fields_ = [
        ("msgs", ctypes.POINTER(ctypes.c_char_p)),
        ("base", ctypes.c_long),
        ("n_msgs", ctypes.c_int),
    ]


class EtNode(ctypes.Structure):
    """A node of libcom_err's table list (next, table)."""


EtNode._fields_ = [("next", ctypes.POINTER(EtNode)), ("table", ctypes.c_void_p)]


class Unterminated:
    """A string argument with no NUL, right before an unreadable page."""

    def __init__(self, data):
        self.data = bytes(data)


_PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _guarded(data):
    """Returns (keepalive, address) of `data` ending at a PROT_NONE page."""
    size = (len(data) + _PAGE - 1) // _PAGE * _PAGE or _PAGE
    region = mmap.mmap(-1, size + _PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    if _libc.mprotect(base + size, _PAGE, 0) != 0:
        raise OSError(ctypes.get_errno(), "mprotect")
    start = base + size - len(data)
    ctypes.memmove(start, data, len(data))
    return region, start


def _arg(value, keep):
    """Converts a string-ish argument to a pointer value (see module doc)."""
    if value is None:
        return None
    if isinstance(value, Unterminated):
        region, addr = _guarded(value.data)
        keep.append(region)
        return addr
    buf = ctypes.create_string_buffer(bytes(value))
    keep.append(buf)
    return ctypes.addressof(buf)


def load(path):
    """Loads the library and declares every prototype."""
    lib = ctypes.CDLL(path)
    vp, cl, ci, cu = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_uint
    protos = {
        "o2dlm_initialize": (cl, [vp, vp, vp]),
        "o2dlm_lock": (cl, [vp, vp, ci, ci]),
        "o2dlm_lock_with_bast": (cl, [vp, vp, ci, ci, BAST_FUNC, vp, vp]),
        "o2dlm_process_bast": (None, [vp, ci]),
        "o2dlm_unlock": (cl, [vp, vp]),
        "o2dlm_drop_lock": (cl, [vp, vp]),
        "o2dlm_read_lvb": (cl, [vp, vp, vp, cu, vp]),
        "o2dlm_write_lvb": (cl, [vp, vp, vp, cu, vp]),
        "o2dlm_destroy": (cl, [vp]),
        "o2dlm_supports_bast": (cl, [vp]),
        "o2dlm_supports_stackglue": (cl, [vp]),
        "initialize_o2dl_error_table": (None, []),
        "initialize_o2dl_error_table_r": (None, [vp]),
    }
    for fn, (restype, argtypes) in protos.items():
        f = getattr(lib, fn)
        f.restype = restype
        f.argtypes = argtypes
    return lib


def load_com_err():
    lib = ctypes.CDLL("libcom_err.so.2")
    lib.error_message.restype = ctypes.c_char_p
    lib.error_message.argtypes = [ctypes.c_long]
    lib.com_right.restype = ctypes.c_char_p
    lib.com_right.argtypes = [ctypes.c_void_p, ctypes.c_long]
    return lib


class Api:
    """Every libo2dlm call with plain-value arguments and results."""

    def __init__(self, path):
        self.path = path
        self.lib = load(path)
        self.com_err = load_com_err()
        self.bast_calls = 0
        self._callbacks = []  # keeps ctypes callbacks alive

    # --- error table -------------------------------------------------------
    def init_error_table(self):
        self.lib.initialize_o2dl_error_table()

    def error_message(self, code):
        return self.com_err.error_message(code).decode()

    # --- API ------------------------------------------------------------------
    def initialize(self, path, domain, null_out=False, out_sentinel=None):
        """Returns (rc, ctx) where ctx is the pointer value or None."""
        keep = []
        out = ctypes.c_void_p(out_sentinel)
        rc = self.lib.o2dlm_initialize(
            _arg(path, keep), _arg(domain, keep), None if null_out else ctypes.addressof(out)
        )
        return rc, out.value

    def lock(self, ctx, lockid, flags=0, level=PR):
        keep = []
        return self.lib.o2dlm_lock(ctx, _arg(lockid, keep), flags, level)

    def lock_with_bast(self, ctx, lockid, flags=0, level=PR, null_func=False, null_fd=False):
        """Returns (rc, poll_fd); poll_fd is -12345 when left untouched."""
        keep = []
        fd = ctypes.c_int(-12345)

        def on_bast(_arg):
            self.bast_calls += 1

        func = BAST_FUNC() if null_func else BAST_FUNC(on_bast)
        self._callbacks.append(func)
        rc = self.lib.o2dlm_lock_with_bast(
            ctx, _arg(lockid, keep), flags, level, func, None,
            None if null_fd else ctypes.addressof(fd),
        )
        return rc, fd.value

    def process_bast(self, ctx, fd):
        """Returns how many BAST callbacks ran."""
        before = self.bast_calls
        self.lib.o2dlm_process_bast(ctx, fd)
        return self.bast_calls - before

    def unlock(self, ctx, lockid):
        keep = []
        return self.lib.o2dlm_unlock(ctx, _arg(lockid, keep))

    def drop_lock(self, ctx, lockid):
        keep = []
        return self.lib.o2dlm_drop_lock(ctx, _arg(lockid, keep))

    def read_lvb(self, ctx, lockid, length, bufsize=None, null_buf=False, null_count=False):
        """Returns (rc, whole buffer, bytes_read).

        The buffer has `bufsize` (default `length`) bytes, all 0xA5 at first,
        so writes beyond what the library may touch are visible; bytes_read
        is 0xDEAD when left untouched.
        """
        keep = []
        bufsize = length if bufsize is None else bufsize
        buf = (ctypes.c_char * max(bufsize, 1))(*([b"\xa5"] * max(bufsize, 1)))
        count = ctypes.c_uint(0xDEAD)
        rc = self.lib.o2dlm_read_lvb(
            ctx, _arg(lockid, keep), None if null_buf else ctypes.addressof(buf), length,
            None if null_count else ctypes.addressof(count),
        )
        return rc, bytes(buf)[:bufsize], count.value

    def write_lvb(self, ctx, lockid, data, length=None, null_buf=False, null_count=False):
        """Returns (rc, bytes_written); 0xDEAD when left untouched."""
        keep = []
        length = len(data) if length is None else length
        count = ctypes.c_uint(0xDEAD)
        src = None if null_buf else _arg(Unterminated(data), keep)
        rc = self.lib.o2dlm_write_lvb(
            ctx, _arg(lockid, keep), src, length,
            None if null_count else ctypes.addressof(count),
        )
        return rc, count.value

    def destroy(self, ctx):
        return self.lib.o2dlm_destroy(ctx)

    def supports(self, what, null=False):
        """what: "bast" or "stackglue". Returns (rc, value); 77 if untouched."""
        value = ctypes.c_int(77)
        fn = getattr(self.lib, "o2dlm_supports_" + what)
        rc = fn(None if null else ctypes.addressof(value))
        return rc, value.value

    # --- helpers for child processes ---------------------------------------
    def getpid(self):
        return os.getpid()

    def fd_is_open(self, fd):
        try:
            os.fstat(fd)
            return True
        except OSError:
            return False

    def hammer(self, jobs, threads, rounds):
        """Runs `jobs` (a list of (method, args, expected rc)) from
        `threads` threads, `rounds` times each, all starting together.
        Returns a list of unexpected results (empty when all matched)."""
        barrier = threading.Barrier(threads)
        wrong = []
        lock = threading.Lock()

        def worker():
            barrier.wait()
            for _ in range(rounds):
                for method, args, want in jobs:
                    got = getattr(self, method)(*args)
                    rc = got[0] if isinstance(got, tuple) else got
                    if rc != want:
                        with lock:
                            wrong.append((method, args, name(want), name(rc)))

        ts = [threading.Thread(target=worker) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return wrong

    def hammer_ids(self, ctx, threads, rounds):
        """Thread i locks "t<i>" EX, writes an LVB, reads it back and
        unlocks, `rounds` times. Returns the list of anything unexpected."""
        barrier = threading.Barrier(threads)
        wrong = []
        lock = threading.Lock()

        def worker(i):
            lockid = f"t{i}".encode()
            barrier.wait()
            for n in range(rounds):
                data = bytes([i, n % 256]) * 4
                got = [
                    ("lock", self.lock(ctx, lockid, 0, EX), 0),
                    ("write", self.write_lvb(ctx, lockid, data), (0, 8)),
                    ("read", self.read_lvb(ctx, lockid, 8), (0, data, 8)),
                    ("unlock", self.unlock(ctx, lockid), 0),
                ]
                for what, result, want in got:
                    if result != want:
                        with lock:
                            wrong.append((i, n, what, result))

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return wrong

    def race_lock(self, ctx, lockid, threads):
        """`threads` threads lock the same id of one context at once;
        returns their return codes."""
        barrier = threading.Barrier(threads)
        results = []
        lock = threading.Lock()

        def worker():
            barrier.wait()
            rc = self.lock(ctx, lockid, TRYLOCK, EX)
            with lock:
                results.append(rc)

        ts = [threading.Thread(target=worker) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return results


def overread_probe(data):
    """strlen() over an Unterminated argument: must crash the process.
    Used to show that the guard page really catches an over-read."""
    keep = []
    _libc.strlen.argtypes = [ctypes.c_void_p]
    _libc.strlen.restype = ctypes.c_size_t
    return _libc.strlen(_arg(Unterminated(data), keep))


Api.overread_probe = staticmethod(overread_probe)
