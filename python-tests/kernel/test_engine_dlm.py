"""Our engine and a real Linux kernel in one cluster, contending for the
same locks (issue 4 item 8, second bullet).

One qemu VM (``vm.boot_single_vm``) is kernel node 0, with dlmfs on /dlm.
Node 1 is our library with the engine backend, loaded through ctypes in a
long-lived child process (``engine_client.EngineClient``), so a test can
hold a lock, or wait in ``o2dlm_lock``, while the guest acts.

Addresses (see engine_node.py): our cluster.conf has the kernel at
127.0.0.1:<forwarded port> and us at 127.0.0.2:<own port>; the kernel knows
us as 10.0.2.2:7777 (slirp), so a second cluster.conf with the addresses as
the kernel has them is our O2DLM_ADVERTISED_CONF, which QUERY_NODEINFO
compares at join. Timeouts are the VM's (dead threshold 7, idle 10 s,
keepalive 1 s), with reconnect 2 s, our minimum.

Guest side: plain shell on dlmfs (``exec 3<>F`` takes EX and holds it,
``printf >&3`` writes the LVB, ``dd if=F`` takes PR and reads it) and
``nbopen``, a tiny static program built here, for an O_NONBLOCK open and
its errno. Who masters what is read from the kernel's debugfs
(``/sys/kernel/debug/o2dlm/<domain>/locking_state``: ``LRES:1,<owner>,...``)
and from our own log (``node 1 masters X``).

After each test the kernel log must hold no o2dlm/o2net complaint.
Every test reports the time it allowed and took for each step.
Host ports are in 40000-49999, away from the other kernel tests.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

import engine_client as ec
import engine_node as en
import vm as kvm

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parent.parent.parent

PR, EX = 0, 1
TRYLOCK = 0x01
ET_BASE = -1485330944
ET_TRYLOCK_FAILED = ET_BASE + 25

PORT_BASES = range(40032, 49999, 32)
OWN_OFFSET = 3  # base+2 is unused when the guest is the lower node; +3 is ours

# Kernel lines that mean a peer upset it (or a kernel bug). The
# "seq_file: buggy .next function lockres_seq_next" line is the kernel's own
# debugfs quirk, printed whenever locking_state is read; it is not ours.
COMPLAINT_RE = re.compile(
    r"(?m)^.*(ERROR|BUG|\bbad\b|Call Trace|WARNING:|[Uu]nexpected|[Uu]nknown|[Rr]efus|[Mm]ismatch|[Ff]enc|panic).*$"
)
KERNEL_QUIRK_RE = re.compile(r"seq_file: buggy \.next function")

NBOPEN_C = r"""
/* nbopen PATH ro|rw: one open(2) with O_NONBLOCK (a dlmfs trylock); prints
 * "NBOPEN ok" or "NBOPEN errno=<n> <name>", then closes the file again.
 * nbopen PATH mk: creates the lock file with mknod(2), which takes no lock
 * (open with O_CREAT would). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int fd, e;

	if (argc != 3)
		return 2;
	if (!strcmp(argv[2], "mk")) {
		if (mknod(argv[1], S_IFREG | 0664, 0) && errno != EEXIST) {
			perror("mknod");
			return 1;
		}
		return 0;
	}
	fd = open(argv[1], (strcmp(argv[2], "rw") ? O_RDONLY : O_RDWR) | O_NONBLOCK | O_CREAT, 0664);
	if (fd < 0) {
		e = errno;
		printf("NBOPEN errno=%d %s\n", e, e == ETXTBSY ? "ETXTBSY" : strerror(e));
		return 1;
	}
	printf("NBOPEN ok\n");
	close(fd);
	return 0;
}
"""


# --------------------------------------------------------------------------
# reporting and timing


@pytest.fixture(scope="module")
def report(request):
    """Writes a line to the terminal even while output is captured."""
    tr = request.config.pluginmanager.getplugin("terminalreporter")
    cm = request.config.pluginmanager.getplugin("capturemanager")

    def say(msg: str) -> None:
        line = f"[engine-dlm] {msg}"
        if tr is None or cm is None:
            print(line)
            return
        with cm.global_and_fixture_disabled():
            tr.write_line(line)

    return say


class Timer:
    """Reports '<what>: took X s (allowed Y s)'; fails past the allowance."""

    def __init__(self, say: Callable[[str], None], what: str, allowed: float) -> None:
        self.say, self.what, self.allowed = say, what, allowed
        self.took = 0.0

    def __enter__(self) -> "Timer":
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.took = time.monotonic() - self.t0
        self.say(f"{self.what}: took {self.took:.1f} s (allowed {self.allowed:.0f} s){' FAILED' if exc[0] else ''}")
        if exc[0] is None:
            assert self.took <= self.allowed, f"{self.what} took {self.took:.1f} s, allowed {self.allowed:.0f} s"


def wait_until(pred, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------
# the rig: VM + our library in a child process


def library() -> Path:
    """``O2DLM_LIB``, else target/release/libo2dlm.so brought up to date
    with ``cargo build --release`` (a no-op when current)."""
    forced = os.environ.get("O2DLM_LIB")
    if forced:
        return Path(forced)
    res = subprocess.run(["cargo", "build", "--release"], cwd=REPO, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"cargo build --release failed:\n{res.stderr[-4000:]}")
    return REPO / "target" / "release" / "libo2dlm.so"


def build_nbopen(outdir: Path) -> Path:
    src = outdir / "nbopen.c"
    src.write_text(NBOPEN_C)
    out = outdir / "nbopen"
    res = subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Werror", "-o", str(out), str(src)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"gcc nbopen failed:\n{res.stderr}")
    return out


def conf_text(facts: kvm.HostPeerFacts, addrs: Dict[int, tuple]) -> str:
    """A cluster.conf with node ``n`` at ``addrs[n]`` = (ip, port)."""
    out = [f"cluster:\n\tnode_count = {len(facts.nodes)}\n\tname = {facts.cluster_name}\n"]
    for node in facts.nodes:
        ip, port = addrs[node.num]
        out.append(
            f"node:\n\tip_port = {port}\n\tip_address = {ip}\n\tnumber = {node.num}\n"
            f"\tname = {node.name}\n\tcluster = {facts.cluster_name}\n"
        )
    return "\n".join(out)


def _boot(state: Path, extra: Dict[str, Path]) -> kvm.SingleVM:
    """boot_single_vm on a free port block in 4xxxx (a caller's
    O2DLM_KVM_PORT_BASE wins)."""
    kw = dict(seed="engine-dlm", extra_files=extra, reconnect_delay_ms=2000)
    saved = os.environ.get("O2DLM_KVM_PORT_BASE")
    if saved:
        return kvm.boot_single_vm(state, **kw)
    start = (os.getpid() * 11) % len(PORT_BASES)
    order = list(PORT_BASES[start:]) + list(PORT_BASES[:start])
    try:
        for base in order[:40]:
            os.environ["O2DLM_KVM_PORT_BASE"] = str(base)
            try:
                return kvm.boot_single_vm(state, **kw)
            except kvm.KvmError as e:
                if str(e).startswith("no free block"):
                    continue
                raise
        raise kvm.KvmError("no free port block in 40000-49999")
    finally:
        os.environ.pop("O2DLM_KVM_PORT_BASE", None)


class Mix:
    """The VM, and our library in a child process (node 1)."""

    def __init__(self, single: kvm.SingleVM, lib: Path, workdir: Path, say: Callable[[str], None]) -> None:
        self.single = single
        self.vm = single.vm
        self.facts = f = single.facts
        self.lib = lib
        self.workdir = workdir
        self.say = say
        workdir.mkdir(parents=True, exist_ok=True)
        base = f.o2net_connect_to[1] - kvm.PORT_O2NET
        self.own_port = base + OWN_OFFSET
        ours = conf_text(f, {f.guest_num: f.o2net_connect_to, f.peer_num: (en.HOST_IP, self.own_port)})
        theirs = conf_text(f, {n.num: (n.ip, n.port) for n in f.nodes})
        self.conf = workdir / "cluster.conf"
        self.conf.write_text(ours)
        self.advertised = workdir / "advertised.conf"
        self.advertised.write_text(theirs)
        self.env = en.node_env(f, self.conf, "debug")
        self.env.update(O2DLM_ADVERTISED_CONF=str(self.advertised), O2DLM_BACKEND="engine")
        self.client: Optional[ec.EngineClient] = None
        self.runs = 0
        # contexts a test created and has not destroyed yet
        self.contexts: List[int] = []

    def engine(self) -> ec.EngineClient:
        """The running child process (started when there is none)."""
        if self.client is not None and self.client.alive():
            return self.client
        self.runs += 1
        log = self.workdir / f"engine{self.runs}.log"
        self.client = ec.EngineClient(self.lib, self.env, log)
        self.say(f"engine process {self.runs} started (pid {self.client.proc.pid}), log {log}")
        return self.client

    def join(self, domain: str, allowed: float = 40.0) -> int:
        """The kernel joins ``domain`` (mkdir), then we do; our context."""
        self.g(f"mkdir -p /dlm/{domain}", timeout=90)
        c = self.engine()
        with Timer(self.say, f"o2dlm_initialize({domain!r})", allowed):
            rc, ctx = c.initialize(domain, timeout=allowed + 10)
        assert rc == 0, f"o2dlm_initialize({domain!r}) = {rc}\n{c.log_tail()}"
        self.contexts.append(ctx)
        return ctx

    def leftovers(self) -> None:
        """Best effort after a failed test: leave what it left joined, so
        the next test starts from a clean cluster."""
        c = self.client
        ctxs, self.contexts = self.contexts, []
        if c is None or not c.alive():
            return
        for ctx in ctxs:
            try:
                rc = c.destroy(ctx, timeout=20)
                self.say(f"cleanup: destroyed a context the test left ({rc})")
            except AssertionError as e:
                self.say(f"cleanup: destroy failed: {e}")

    # -- guest side

    def g(self, script: str, timeout: float = 30.0) -> str:
        res = self.vm.run(script, timeout=timeout)
        if res.rc != 0:
            raise AssertionError(f"guest: {script!r} failed (rc={res.rc}): {res.output[-2000:]}")
        return res.stdout

    def g_write(self, path: str, text: str) -> None:
        """EX open, LVB write at offset 0, close (the kernel keeps EX cached)."""
        assert "'" not in text
        self.g(f"exec 3<>{path} && printf '%s' '{text}' >&3 && exec 3<&-", timeout=60)

    def g_read(self, path: str, timeout: float = 60.0) -> bytes:
        """PR open and a 64-byte read of the LVB."""
        out = self.g(f"nbopen {path} mk && dd if={path} of=/tmp/lvb.bin bs=64 count=1 2>/tmp/dd.err || {{ cat /tmp/dd.err; exit 1; }}; "
                     "base64 /tmp/lvb.bin", timeout=timeout)
        return base64.b64decode("".join(out.split()))

    def g_nbopen(self, path: str, mode: str) -> str:
        res = self.vm.run(f"nbopen {path} {mode}", timeout=30)
        return res.stdout.strip()

    def g_hold(self, path: str, flag: str, write: Optional[str] = None) -> kvm.GuestJob:
        """A guest job that opens ``path`` O_RDWR (blocking EX), prints GOT
        and the LVB, optionally writes ``write``, and closes once ``flag``
        exists (then prints CLOSED)."""
        wr = f"printf '%s' '{write}' >&3 || echo WRITE-FAILED; " if write else ""
        return self.vm.spawn(
            f"rm -f {flag}; exec 3<>{path} || exit 9; echo GOT; "
            # a second open for the read (PR, granted by our EX at once), so
            # the write below still starts at offset 0 of fd 3
            f"dd if={path} bs=64 count=1 2>/dev/null | base64 | tr -d '\\n'; echo; {wr}"
            f"while [ ! -e {flag} ]; do sleep 0.05; done; exec 3<&-; echo CLOSED"
        )

    def g_owner(self, domain: str, name: str) -> Optional[int]:
        """Master of ``name`` as the kernel's debugfs shows it."""
        text = self.g(f"cat /sys/kernel/debug/o2dlm/{domain}/locking_state")
        m = re.search(rf"(?m)^NAME:{re.escape(name)}\nLRES:\d+,(-?\d+),", text)
        return int(m.group(1)) if m else None

    def g_locks(self, domain: str, name: str) -> List[str]:
        """LOCK lines of ``name`` in the kernel's debugfs."""
        text = self.g(f"cat /sys/kernel/debug/o2dlm/{domain}/locking_state")
        m = re.search(rf"(?ms)^NAME:{re.escape(name)}\n(.*?)(?=^NAME:|\Z)", text)
        return re.findall(r"(?m)^LOCK:.*$", m.group(1)) if m else []

    def destroy(self, ctx: int) -> int:
        rc = self.engine().destroy(ctx)
        if rc == 0 and ctx in self.contexts:
            self.contexts.remove(ctx)
        return rc

    def dmesg(self) -> str:
        return self.vm.dmesg()

    def close(self) -> None:
        if self.client is not None:
            self.client.kill()


@pytest.fixture(scope="module")
def mix(tmp_path_factory, report):
    lib = library()  # build before the boot clock starts
    state = tmp_path_factory.mktemp("engine-dlm")
    nbopen = build_nbopen(state)
    t0 = time.monotonic()
    single = _boot(state, {"bin/nbopen": nbopen})
    report(f"VM booted in {time.monotonic() - t0:.1f} s; o2net fwd {single.facts.o2net_connect_to}")
    m = Mix(single, lib, state / "host", report)
    try:
        yield m
    finally:
        m.close()
        single.stop()


@pytest.fixture(autouse=True)
def kernel_quiet(mix, report):
    """No o2dlm/o2net complaint (or kernel bug) in the log during a test."""
    mark = len(mix.dmesg())
    yield
    mix.leftovers()
    if not mix.vm.alive():
        pytest.fail("qemu exited: the kernel panicked or rebooted")
    new = mix.dmesg()[mark:]
    bad = [m.group(0) for m in COMPLAINT_RE.finditer(new) if not KERNEL_QUIRK_RE.search(m.group(0))]
    assert not bad, "kernel complained:\n" + "\n".join(bad)


def lvb(text: str) -> bytes:
    return text.encode().ljust(64, b"\0")


def grant_line(log: str, name: str) -> bool:
    return re.search(rf"node 1 masters {re.escape(name)}$", log, re.M) is not None


# --------------------------------------------------------------------------
# (a) the kernel holds EX: our EX waits, our trylock fails


def test_a_kernel_ex_blocks_ours(mix, report):
    with Timer(report, "test a: whole test", 90):
        ctx = mix.join("mixa")
        c = mix.engine()
        path = "/dlm/mixa/ka"
        job = mix.g_hold(path, "/tmp/rel-a", write="kernel-a")
        with Timer(report, "test a: guest EX open", 20):
            job.wait_for("GOT", 20)
        with Timer(report, "test a: our EX trylock refused", 5):
            rc = c.lock(ctx, "ka", EX, TRYLOCK)
        assert rc == ET_TRYLOCK_FAILED, f"EX trylock while the kernel holds EX = {rc}"
        with Timer(report, "test a: our PR trylock refused", 5):
            rc = c.lock(ctx, "ka", PR, TRYLOCK)
        assert rc == ET_TRYLOCK_FAILED, f"PR trylock while the kernel holds EX = {rc}"
        pending = c.start("lock", ctx, "ka", 0, EX)
        time.sleep(3)
        assert not pending.done(), f"our EX was granted while the guest holds EX: {pending.answer(1)}"
        report("test a: our EX still waiting 3 s after it was asked (guest holds EX)")
        assert mix.g_owner("mixa", "ka") == 0
        released = time.monotonic()
        mix.g("touch /tmp/rel-a")
        with Timer(report, "test a: our EX granted after the guest closed", 15):
            ans = pending.answer(15)
        assert ans["result"] == 0, ans
        assert ans["end"] >= released, "granted before the guest closed"
        out = job.wait(10)
        assert "CLOSED" in out.stdout and "WRITE-FAILED" not in out.stdout, out
        rc, data, n = c.read_lvb(ctx, "ka", 64)
        assert (rc, n, data) == (0, 64, lvb("kernel-a")), (rc, n, data)
        # the guest's lock is now at NL (down-converted for us)
        locks = mix.g_locks("mixa", "ka")
        report(f"test a: kernel's view of ka: owner {mix.g_owner('mixa', 'ka')}, {locks}")
        assert any(l.startswith("LOCK:1,0,5,-1,1,") for l in locks), locks  # our EX, granted
        assert c.unlock(ctx, "ka") == 0
        assert mix.destroy(ctx) == 0


def test_a2_trylock_of_second_context_while_first_waits(mix, report):
    """A trylock must fail at once, even while another local context waits
    for the same lock (it must not queue behind that waiter)."""
    ctx1 = mix.join("mixa2")
    c = mix.engine()
    rc, ctx2 = c.initialize("mixa2")
    assert rc == 0
    job = mix.g_hold("/dlm/mixa2/ka2", "/tmp/rel-a2")
    pending = trial = None
    try:
        job.wait_for("GOT", 20)
        pending = c.start("lock", ctx1, "ka2", 0, EX)
        time.sleep(1)
        assert not pending.done()
        trial = c.start("lock", ctx2, "ka2", TRYLOCK, EX)
        with Timer(report, "test a2: second context's EX trylock answered", 10):
            try:
                rc = trial.wait(5)
            except AssertionError:
                rc = None
        assert rc == ET_TRYLOCK_FAILED, (
            f"trylock from a second context while the first waits: {rc} (None = still blocked after 5 s)")
    finally:
        mix.g("touch /tmp/rel-a2")
        job.wait(15)
        for p in (pending, trial):
            if p is not None:
                p.wait(15)
        c.unlock(ctx1, "ka2")
        mix.destroy(ctx2)
        mix.destroy(ctx1)


# --------------------------------------------------------------------------
# (b) we hold EX: the guest's open waits, O_NONBLOCK gets ETXTBSY


def test_b_our_ex_blocks_kernel(mix, report):
    with Timer(report, "test b: whole test", 60):
        ctx = mix.join("mixb")
        c = mix.engine()
        path = "/dlm/mixb/ub"
        with Timer(report, "test b: our EX on a new lock", 5):
            assert c.lock(ctx, "ub", EX) == 0
        assert c.write_lvb(ctx, "ub", b"engine-b") == (0, 8)
        with Timer(report, "test b: guest O_NONBLOCK opens refused", 10):
            rw = mix.g_nbopen(path, "rw")
            ro = mix.g_nbopen(path, "ro")
        assert rw == "NBOPEN errno=26 ETXTBSY", rw
        assert ro == "NBOPEN errno=26 ETXTBSY", ro
        assert mix.g_owner("mixb", "ub") == 1, "we used ub first: we must master it"
        job = mix.g_hold(path, "/tmp/rel-b")
        time.sleep(3)
        out = job.output()
        assert "GOT" not in out, f"the guest got EX while we hold it: {out}"
        report("test b: guest open still blocked 3 s after it started (we hold EX)")
        released = time.monotonic()
        assert c.unlock(ctx, "ub") == 0
        with Timer(report, "test b: guest open returns after our unlock", 15):
            m = job.wait_for(r"GOT\n(\S*)\n", 15)
        report(f"test b: guest got EX {time.monotonic() - released:.2f} s after our unlock")
        assert base64.b64decode(m.group(1)) == lvb("engine-b"), m.group(1)
        mix.g("touch /tmp/rel-b")
        job.wait(10)
        assert grant_line(c.log_text(), "ub"), "our log has no 'node 1 masters ub'"
        assert mix.destroy(ctx) == 0


# --------------------------------------------------------------------------
# (c) LVBs written on each side are read on the other


def test_c_lvbs_both_ways(mix, report):
    with Timer(report, "test c: whole test", 90):
        ctx = mix.join("mixc")
        c = mix.engine()
        # kc: first used by the kernel (it masters); uc: first used by us
        mix.g_write("/dlm/mixc/kc", "kc-k0")
        assert c.lock(ctx, "uc", EX) == 0
        assert c.write_lvb(ctx, "uc", b"uc-e0") == (0, 5)
        assert c.unlock(ctx, "uc") == 0
        # (the kernel has no resource for uc until it uses it: checked below)
        assert mix.g_owner("mixc", "kc") == 0
        for name in ("kc", "uc"):
            path = f"/dlm/mixc/{name}"
            for i in range(1, 4):
                # kernel writes (64 bytes: every byte crosses), we read
                ktext = (f"{name}-k{i}-" + "abcdefghijklmnopqrstuvwxyz0123456789" * 2)[:64]
                with Timer(report, f"test c: {name} round {i}: guest write, our PR read", 20):
                    mix.g_write(path, ktext)
                    assert c.lock(ctx, name, PR) == 0
                    rc, data, n = c.read_lvb(ctx, name, 64)
                    assert c.unlock(ctx, name) == 0
                assert len(ktext) == 64 and (rc, n, data) == (0, 64, ktext.encode()), (name, i, rc, n, data)
                # we write (binary, all 64 bytes), the kernel reads
                etext = bytes((i * 37 + k) % 256 for k in range(64))
                with Timer(report, f"test c: {name} round {i}: our EX write, guest read", 20):
                    assert c.lock(ctx, name, EX) == 0
                    assert c.write_lvb(ctx, name, etext) == (0, 64)
                    assert c.unlock(ctx, name) == 0
                    got = mix.g_read(path)
                assert got == etext, (name, i, got.hex(), etext.hex())
        assert mix.g_owner("mixc", "kc") == 0 and mix.g_owner("mixc", "uc") == 1
        report("test c: 3 rounds each way on kc (kernel master) and uc (our master), 64-byte values")
        assert mix.destroy(ctx) == 0


# --------------------------------------------------------------------------
# (d) locks first used on each side: both sides master some


def test_d_both_sides_master(mix, report):
    with Timer(report, "test d: whole test", 60):
        ctx = mix.join("mixd")
        c = mix.engine()
        kernel_first = ["kd1", "kd2", "kd3"]
        ours_first = ["ud1", "ud2", "ud3"]
        for name in kernel_first:
            mix.g_write(f"/dlm/mixd/{name}", name)
        for name in ours_first:
            assert c.lock(ctx, name, EX) == 0
            assert c.write_lvb(ctx, name, name.encode()) == (0, 3)
            assert c.unlock(ctx, name) == 0
        # now every lock is used on the other side too
        with Timer(report, "test d: cross use of 6 locks", 30):
            for name in kernel_first:
                assert c.lock(ctx, name, EX) == 0
                rc, data, _ = c.read_lvb(ctx, name, 3)
                assert (rc, data) == (0, name.encode())
                assert c.unlock(ctx, name) == 0
            for name in ours_first:
                assert mix.g_read(f"/dlm/mixd/{name}")[:3] == name.encode()
        owners = {n: mix.g_owner("mixd", n) for n in kernel_first + ours_first}
        report(f"test d: masters (kernel debugfs): {owners}")
        assert all(owners[n] == 0 for n in kernel_first), owners
        assert all(owners[n] == 1 for n in ours_first), owners
        log = c.log_text()
        assert all(grant_line(log, n) for n in ours_first), "our log misses 'node 1 masters ud*'"
        assert not any(grant_line(log, n) for n in kernel_first), "we claim a lock the kernel masters"
        # the kernel's refmap lists us on its own resources we used
        text = mix.g("cat /sys/kernel/debug/o2dlm/mixd/locking_state")
        for n in kernel_first:
            m = re.search(rf"(?m)^NAME:{n}\nLRES:.*\nRMAP:(.*)$", text)
            assert m and "1" in m.group(1).split(), f"{n}: kernel refmap {m.group(1) if m else None}"
        assert mix.destroy(ctx) == 0


# --------------------------------------------------------------------------
# (e) leaving while the other side holds a lock we master


def test_e1_kernel_leaves_while_we_hold_its_lock(mix, report):
    with Timer(report, "test e1: whole test", 90):
        ctx = mix.join("mixe")
        c = mix.engine()
        mix.g_write("/dlm/mixe/ke", "ke-kernel")
        assert c.lock(ctx, "ke", EX) == 0
        rc, data, _ = c.read_lvb(ctx, "ke", 64)
        assert (rc, data) == (0, lvb("ke-kernel"))
        assert c.write_lvb(ctx, "ke", b"ke-engine") == (0, 9)
        assert mix.g_owner("mixe", "ke") == 0
        mark = len(c.log_text())
        dmark = len(mix.dmesg())
        with Timer(report, "test e1: guest unlinks and rmdirs (kernel leaves the domain)", 60):
            mix.g("rm -f /dlm/mixe/* && rmdir /dlm/mixe", timeout=60)
        assert re.search(r"o2dlm: Leaving domain mixe", mix.dmesg()[dmark:]), mix.dmesg()[dmark:]
        with Timer(report, "test e1: our log shows the migration to us and the kernel's exit", 15):
            wait_until(lambda: re.search(r"node 1 now masters ke \(migrated\)", c.log_text()[mark:])
                       and re.search(r"node 0 leaves domain mixe", c.log_text()[mark:]), 15,
                       "our log: 'node 1 now masters ke (migrated)' and 'node 0 leaves domain mixe'")
        # still ours, value intact
        rc, data, _ = c.read_lvb(ctx, "ke", 64)
        assert (rc, data) == (0, lvb("ke-engine"))
        # the kernel comes back: we master ke now, and still hold EX
        mix.g("mkdir /dlm/mixe", timeout=90)
        assert mix.g_nbopen("/dlm/mixe/ke", "ro") == "NBOPEN errno=26 ETXTBSY"
        job = mix.g_hold("/dlm/mixe/ke", "/tmp/rel-e1")
        time.sleep(2)
        assert "GOT" not in job.output()
        assert c.unlock(ctx, "ke") == 0
        with Timer(report, "test e1: rejoined guest gets ke after our unlock", 15):
            m = job.wait_for(r"GOT\n(\S*)\n", 15)
        assert base64.b64decode(m.group(1)) == lvb("ke-engine"), m.group(1)
        assert mix.g_owner("mixe", "ke") == 1, "after the migration we master ke"
        mix.g("touch /tmp/rel-e1")
        job.wait(10)
        assert mix.destroy(ctx) == 0


def test_e2_we_leave_while_kernel_holds_our_lock(mix, report):
    with Timer(report, "test e2: whole test", 90):
        ctx = mix.join("mixf")
        c = mix.engine()
        assert c.lock(ctx, "uf", EX) == 0
        assert c.write_lvb(ctx, "uf", b"uf-engine") == (0, 9)
        assert c.unlock(ctx, "uf") == 0
        job = mix.g_hold("/dlm/mixf/uf", "/tmp/rel-e2", write="uf-kernel")
        m = job.wait_for(r"GOT\n(\S*)\n", 15)
        assert base64.b64decode(m.group(1)) == lvb("uf-engine")
        assert mix.g_owner("mixf", "uf") == 1
        mark = len(c.log_text())
        dmark = len(mix.dmesg())
        with Timer(report, "test e2: o2dlm_destroy (we leave, migrating uf)", 30):
            assert mix.destroy(ctx) == 0
        log = c.log_text()[mark:]
        assert re.search(r"node 1 migrates uf to node 0", log), log[-3000:]
        with Timer(report, "test e2: kernel logs our exit, masters uf", 15):
            wait_until(lambda: re.search(r"o2dlm: Node 1 leaves domain mixf", mix.dmesg()[dmark:]), 15,
                       "kernel: 'Node 1 leaves domain mixf'")
            assert mix.g_owner("mixf", "uf") == 0
        locks = mix.g_locks("mixf", "uf")
        assert locks and all(l.startswith("LOCK:1,0,5,-1,0,") for l in locks), locks  # only the guest's EX
        assert "evicted" not in mix.dmesg()[dmark:]
        # the guest lets go; we come back and read what it wrote
        mix.g("touch /tmp/rel-e2")
        out = job.wait(10)
        assert "CLOSED" in out.stdout and "WRITE-FAILED" not in out.stdout, out
        ctx = mix.join("mixf")
        with Timer(report, "test e2: our PR after rejoining", 15):
            assert c.lock(ctx, "uf", PR) == 0
        rc, data, _ = c.read_lvb(ctx, "uf", 64)
        assert (rc, data) == (0, lvb("uf-kernel")), data
        assert c.unlock(ctx, "uf") == 0
        assert mix.destroy(ctx) == 0


def test_e3_we_exit_while_kernel_holds_our_lock(mix, report):
    """Our process exits (no o2dlm_destroy) while the kernel holds a lock
    we master. The kernel must carry on, the lock stays usable there, and
    (as with destroy) the resource should be migrated on a clean exit."""
    with Timer(report, "test e3: whole test", 90):
        ctx = mix.join("mixg")
        c = mix.engine()
        assert c.lock(ctx, "ug", EX) == 0
        assert c.write_lvb(ctx, "ug", b"ug-engine") == (0, 9)
        assert c.unlock(ctx, "ug") == 0
        assert mix.g_read("/dlm/mixg/ug") == lvb("ug-engine")
        assert mix.g_owner("mixg", "ug") == 1
        job = mix.vm.spawn("exec 3</dlm/mixg/ug; echo GOT; while [ ! -e /tmp/rel-e3 ]; do sleep 0.05; done; exec 3<&-; echo CLOSED")
        job.wait_for("GOT", 15)
        mark = len(c.log_text())
        dmark = len(mix.dmesg())
        with Timer(report, "test e3: our process exits", 30):
            status = c.exit(0)
        assert status == 0, c.log_tail()
        with Timer(report, "test e3: kernel masters ug again", 40):
            wait_until(lambda: mix.g_owner("mixg", "ug") == 0, 40, "kernel owns ug")
        new = mix.dmesg()[dmark:]
        report("test e3: kernel log: " + " | ".join(l.strip() for l in new.splitlines() if "o2" in l))
        # the guest still has its lock and can take EX once it lets go of PR
        mix.g("touch /tmp/rel-e3")
        job.wait(10)
        with Timer(report, "test e3: guest EX after our exit", 20):
            assert mix.g_nbopen("/dlm/mixg/ug", "rw") == "NBOPEN ok"
        got = mix.g_read("/dlm/mixg/ug")
        report(f"test e3: LVB in the guest after our exit: {got.rstrip(bytes(1))!r}")
        log = c.log_text()[mark:]
        # (the value itself is not checked: a kernel that receives a
        # resource whose only lock is its own keeps a zero LVB, after a
        # migration as after a recovery; o2dlm-protocol.md 9.5)
        migrated = re.search(r"node 1 migrates ug to node 0", log)
        assert migrated and "evicted node 1" not in new, (
            "exit without o2dlm_destroy did not leave the domain: the kernel evicted us and recovered "
            f"instead of a migration (our log after exit: {log[-1500:]!r}; kernel: {new[-1500:]!r})")
