"""Node death and recovery between our engine and a real Linux kernel
(issue 5 item 6, the "mixed with the real kernel" tests).

Kernel node 0 runs in a qemu VM (``vm.boot_single_vm``), dlmfs on /dlm;
node 1 is our library with the engine backend in a child process
(``engine_client.EngineClient``), set up as in test_engine_dlm.py, whose
rig (``Mix``) and guest helpers are reused here. Dead threshold 7 (14 s),
idle timeout 10 s, reconnect 2 s.

* ``test_r1_our_node_killed_holding_ex``: we hold EX on a lock we master
  and on one the kernel masters, the guest's opens block; kill -9 our
  process: both opens succeed once the kernel has recovered us, with a
  zeroed LVB (we held EX: o2dlm-protocol.md §9.6).
* ``test_r2_restart_and_rejoin``: kill -9 our process while the kernel holds
  the domain and waits on our EX, start a new one at once and join: the
  join completes only after the kernel has recovered the old incarnation
  (a join that comes earlier gets JOIN_DISALLOW and retries; the test
  reports how many attempts were refused), then both sides use the lock.
* ``test_r3_vm_killed_holding_ex``: the kernel holds EX on a lock it masters
  and on one we master, we wait for both; SIGKILL qemu: our waiters are
  granted after the dead time with zeroed LVBs, and we are not fenced (the
  kernel was node 0, but its heartbeat stopped: a death, not a partition).

After each test the kernel log must hold no error, warning or BUG. Each
test reports the time it allowed and took for every step. Host ports are
in 50000-59999 (``O2DLM_KVM_PORT_BASE``), away from the other kernel tests.
"""

from __future__ import annotations

import base64
import os
import re
import time
from pathlib import Path
from typing import List, Optional

import pytest

import test_engine_dlm as ted
import vm as kvm
from test_engine_dlm import EX, PR, Timer, lvb, wait_until

pytestmark = pytest.mark.kernel

PORT_BASES = range(50016, 59999, 32)

DEAD_S = 14.0  # dead threshold 7 x 2 s
PERIOD_S = 2.0
MARGIN_S = 12.0  # recovery, the guest's polling, qemu under TCG
ZERO_LVB = bytes(64)

# Kernel lines that mean something went wrong. A node death itself makes
# the kernel log evictions, recovery and lost connections at notice level;
# none of those lines contains these words.
BAD_RE = re.compile(r"(?m)^.*(\bERROR\b|\bBUG\b|Call Trace|WARNING:|[Pp]anic|Oops|general protection|"
                    r"[Ff]encing|[Rr]ebooting|\bbad\b).*$")
KERNEL_QUIRK_RE = ted.KERNEL_QUIRK_RE


@pytest.fixture(scope="module")
def report(request):
    tr = request.config.pluginmanager.getplugin("terminalreporter")
    cm = request.config.pluginmanager.getplugin("capturemanager")

    def say(msg: str) -> None:
        line = f"[engine-recovery] {msg}"
        if tr is None or cm is None:
            print(line)
            return
        with cm.global_and_fixture_disabled():
            tr.write_line(line)

    return say


def _boot(state: Path, extra, seed: str) -> kvm.SingleVM:
    """boot_single_vm on a free port block in 5xxxx (a caller's
    O2DLM_KVM_PORT_BASE wins)."""
    kw = dict(seed=seed, extra_files=extra, reconnect_delay_ms=2000)
    if os.environ.get("O2DLM_KVM_PORT_BASE"):
        return kvm.boot_single_vm(state, **kw)
    start = (os.getpid() * 13 + len(seed)) % len(PORT_BASES)
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
        raise kvm.KvmError("no free port block in 50000-59999")
    finally:
        os.environ.pop("O2DLM_KVM_PORT_BASE", None)


def _rig(tmp_path_factory, report, name: str) -> ted.Mix:
    lib = ted.library()
    state = tmp_path_factory.mktemp(name)
    nbopen = ted.build_nbopen(state)
    t0 = time.monotonic()
    single = _boot(state, {"bin/nbopen": nbopen}, f"engine-recovery-{name}")
    report(f"{name}: VM booted in {time.monotonic() - t0:.1f} s; o2net fwd {single.facts.o2net_connect_to}")
    return ted.Mix(single, lib, state / "host", report)


@pytest.fixture(scope="module")
def mix(tmp_path_factory, report):
    """A VM that outlives our node (r1, r2)."""
    m = _rig(tmp_path_factory, report, "rec")
    try:
        yield m
    finally:
        m.close()
        m.single.stop()


def kernel_log_check(m: ted.Mix, mark: int, report, what: str) -> str:
    """The kernel log since ``mark``: its o2 lines are reported, and any
    error/warning/BUG fails the test."""
    new = m.dmesg()[mark:]
    o2 = [l.strip() for l in new.splitlines() if re.search(r"o2|ocfs2|dlm", l)]
    report(f"{what}: kernel log: " + " | ".join(o2[-25:]))
    bad = [x.group(0) for x in BAD_RE.finditer(new) if not KERNEL_QUIRK_RE.search(x.group(0))]
    assert not bad, f"{what}: the kernel complained:\n" + "\n".join(bad)
    return new


def kill_engine(m: ted.Mix) -> float:
    """SIGKILL our process; the contexts it had are gone with it."""
    c = m.client
    assert c is not None and c.alive()
    c.proc.kill()
    t = time.monotonic()
    c.proc.wait()
    m.contexts.clear()
    return t


def got_lvb(job: kvm.GuestJob, timeout: float) -> bytes:
    """Waits for a g_hold job's GOT and returns the LVB it read."""
    mt = job.wait_for(r"GOT\n(\S*)\n", timeout)
    return base64.b64decode(mt.group(1))


def release(m: ted.Mix, jobs: List[kvm.GuestJob], flags: List[str]) -> None:
    for f in flags:
        m.g(f"touch {f}")
    for j in jobs:
        out = j.wait(15)
        assert "CLOSED" in out.stdout, out


# --------------------------------------------------------------------------


def test_r1_our_node_killed_holding_ex(mix, report):
    allowed = DEAD_S + PERIOD_S + MARGIN_S
    with Timer(report, "test r1: whole test", 150):
        mark = len(mix.dmesg())
        ctx = mix.join("rca")
        c = mix.engine()
        # ka: the kernel uses it first (it masters); ua: we do (we master)
        mix.g_write("/dlm/rca/ka", "ka-kernel")
        assert c.lock(ctx, "ka", EX) == 0
        rc, data, _ = c.read_lvb(ctx, "ka", 64)
        assert (rc, data) == (0, lvb("ka-kernel"))
        assert c.write_lvb(ctx, "ka", b"ka-engine") == (0, 9)
        assert c.lock(ctx, "ua", EX) == 0
        assert c.write_lvb(ctx, "ua", b"ua-engine") == (0, 9)
        jk = mix.g_hold("/dlm/rca/ka", "/tmp/rel-r1k")
        ju = mix.g_hold("/dlm/rca/ua", "/tmp/rel-r1u")
        time.sleep(2)
        assert "GOT" not in jk.output() and "GOT" not in ju.output(), "guest got EX while we hold it"
        # (the kernel knows ua only once it asked for it)
        assert mix.g_owner("rca", "ka") == 0 and mix.g_owner("rca", "ua") == 1
        dmark = len(mix.dmesg())
        t0 = kill_engine(mix)
        report("test r1: kill -9 our node (EX on ka, kernel-mastered, and on ua, ours)")
        with Timer(report, "test r1: guest open of ua (we mastered) succeeds after recovery", allowed):
            data_u = got_lvb(ju, allowed)
        took_u = time.monotonic() - t0
        with Timer(report, "test r1: guest open of ka (kernel mastered) succeeds", 10):
            data_k = got_lvb(jk, 10)
        assert took_u >= DEAD_S - 2 * PERIOD_S, f"the kernel granted ua {took_u:.1f} s after the kill: before it could know we died"
        report(f"test r1: LVBs the guest read: ua {data_u.rstrip(bytes(1))!r}, ka {data_k.rstrip(bytes(1))!r}")
        assert data_u == ZERO_LVB, f"ua: we held EX when we died, the LVB must be zeros: {data_u!r}"
        assert data_k == ZERO_LVB, f"ka: we held EX when we died, the LVB must be zeros: {data_k!r}"
        new = mix.dmesg()[dmark:]
        assert re.search(r"End recovery on domain rca", new), new[-2000:]
        assert mix.g_owner("rca", "ua") == 0, "the kernel re-mastered ua"
        release(mix, [jk, ju], ["/tmp/rel-r1k", "/tmp/rel-r1u"])
        # the kernel goes on with both names
        mix.g_write("/dlm/rca/ua", "ua-kernel2")
        assert mix.g_read("/dlm/rca/ua") == lvb("ua-kernel2")
        kernel_log_check(mix, mark, report, "test r1")
        mix.g("rm -f /dlm/rca/* && rmdir /dlm/rca", timeout=60)


def test_r2_restart_and_rejoin(mix, report):
    allowed_join = DEAD_S + PERIOD_S + MARGIN_S + 30  # the verdict, recovery, then a normal join
    with Timer(report, "test r2: whole test", 180):
        mark = len(mix.dmesg())
        ctx = mix.join("rcb")
        c = mix.engine()
        assert c.lock(ctx, "ub", EX) == 0
        assert c.write_lvb(ctx, "ub", b"ub-engine") == (0, 9)
        ju = mix.g_hold("/dlm/rcb/ub", "/tmp/rel-r2")
        time.sleep(2)
        assert "GOT" not in ju.output()
        assert mix.g_owner("rcb", "ub") == 1
        dmark = len(mix.dmesg())
        t0 = kill_engine(mix)
        # a new process, at once, joins the domain the kernel still has
        c2 = mix.engine()
        pending = c2.start("initialize", "rcb")
        report("test r2: kill -9 our node (EX on ub, ours); new process started and joining")
        got_at: Optional[float] = None
        with Timer(report, "test r2: new incarnation joined", allowed_join):
            while True:
                if got_at is None and "GOT" in ju.output():
                    got_at = time.monotonic()
                if pending.done():
                    break
                assert time.monotonic() - t0 < allowed_join, "join still pending"
                time.sleep(0.3)
            ans = pending.answer(1)
        rc, ctx2 = ans["result"]
        assert rc == 0, f"rejoin failed: {rc}\n{c2.log_tail()}"
        mix.contexts.append(ctx2)
        joined = ans["end"]
        log = c2.log_text()
        backoffs = len(re.findall(r"join of rcb backs off", log))
        new = mix.dmesg()[dmark:]
        report(f"test r2: join returned {joined - t0:.1f} s after the kill, after {backoffs} refused attempts; "
               f"guest GOT seen at {'%.1f s' % (got_at - t0) if got_at else 'not yet'}")
        # the kernel recovered the old incarnation before letting the new one in
        end = re.search(r"End recovery on domain rcb", new)
        assert end, f"no recovery in the kernel log:\n{new[-3000:]}"
        joins = re.search(r"Node 1 joins domain rcb", new)
        assert joins, f"the kernel did not log our rejoin:\n{new[-3000:]}"
        assert end.start() < joins.start(), f"the kernel let the new incarnation in before recovering the old:\n{new[-3000:]}"
        with Timer(report, "test r2: guest open of ub succeeds", 15):
            data = got_lvb(ju, 15)
        assert data == ZERO_LVB, f"ub: the dead incarnation held EX: zeros expected, got {data!r}"
        # the guest holds EX now: our new incarnation waits, then gets it
        p = c2.start("lock", ctx2, "ub", 0, EX)
        time.sleep(2)
        assert not p.done(), "granted while the guest holds EX"
        mix.g("touch /tmp/rel-r2")
        with Timer(report, "test r2: our EX after the guest closed", 15):
            assert p.wait(15) == 0
        ju.wait(10)
        assert c2.write_lvb(ctx2, "ub", b"ub-again") == (0, 8)
        assert c2.unlock(ctx2, "ub") == 0
        assert mix.g_read("/dlm/rcb/ub") == lvb("ub-again")
        assert mix.destroy(ctx2) == 0
        kernel_log_check(mix, mark, report, "test r2")
        mix.g("rm -f /dlm/rcb/* && rmdir /dlm/rcb", timeout=60)


def test_r3_vm_killed_holding_ex(tmp_path_factory, report):
    allowed = DEAD_S + PERIOD_S + MARGIN_S
    m = _rig(tmp_path_factory, report, "reckill")
    try:
        with Timer(report, "test r3: whole test", 150):
            ctx = m.join("rcc")
            c = m.engine()
            # uc: ours first (we master); kc: the kernel's
            assert c.lock(ctx, "uc", EX) == 0
            assert c.write_lvb(ctx, "uc", b"uc-engine") == (0, 9)
            assert c.unlock(ctx, "uc") == 0
            m.g_write("/dlm/rcc/kc", "kc-kernel")
            ju = m.g_hold("/dlm/rcc/uc", "/tmp/never", write="uc-kernel")
            jk = m.g_hold("/dlm/rcc/kc", "/tmp/never", write="kc-kernel2")
            ju.wait_for("GOT", 20)
            jk.wait_for("GOT", 20)
            assert m.g_owner("rcc", "uc") == 1 and m.g_owner("rcc", "kc") == 0
            pu = c.start("lock", ctx, "uc", 0, PR)
            pk = c.start("lock", ctx, "kc", 0, EX)
            time.sleep(2)
            assert not pu.done() and not pk.done(), "granted while the guest holds EX"
            lmark = len(c.log_text())
            m.single.vm.kill()
            t0 = time.monotonic()
            report("test r3: SIGKILL qemu (the guest holds EX on uc, ours, and kc, its own)")
            with Timer(report, "test r3: our PR on uc granted", allowed):
                ans_u = pu.answer(allowed)
            with Timer(report, "test r3: our EX on kc granted", 5):
                ans_k = pk.answer(5)
            assert ans_u["result"] == 0 and ans_k["result"] == 0, (ans_u, ans_k, c.log_tail())
            took = ans_u["end"] - t0
            assert took >= DEAD_S - 2 * PERIOD_S, f"granted {took:.1f} s after the kill: before node 0 could be declared dead"
            for name, ans in (("uc", ans_u), ("kc", ans_k)):
                rc, data, _ = c.read_lvb(ctx, name, 64)
                assert rc == 0
                report(f"test r3: {name} granted {ans['end'] - t0:.1f} s after the kill; LVB {data.rstrip(bytes(1))!r}")
                assert data == ZERO_LVB, f"{name}: the dead kernel held EX: zeros expected, got {data!r}"
            log = c.log_text()[lmark:]
            assert "FENCED" not in log, f"we fenced ourselves after the kernel died:\n{log[-3000:]}"
            assert re.search(r"end recovery of node 0", log), log[-3000:]
            # we go on alone with both names
            assert c.unlock(ctx, "uc") == 0
            assert c.lock(ctx, "uc", EX) == 0 and c.unlock(ctx, "uc") == 0
            assert c.unlock(ctx, "kc") == 0
            assert c.lock(ctx, "new", EX) == 0 and c.unlock(ctx, "new") == 0
            assert m.destroy(ctx) == 0
            # the kernel's log up to its death (serial console)
            bad = [x.group(0) for x in BAD_RE.finditer(m.single.vm.console_text())
                   if not KERNEL_QUIRK_RE.search(x.group(0))]
            assert not bad, "the kernel complained before it was killed:\n" + "\n".join(bad)
    finally:
        m.close()
        m.single.kill()
