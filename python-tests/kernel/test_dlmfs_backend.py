"""The dlmfs backend against a real kernel dlmfs (issue 2, item 5).

Two kernel nodes run in qemu (conftest ``kernel_cluster``). Each scenario
drives ``dlmfs_check`` (c-tests/guest/dlmfs_check.c) on one or both nodes;
a second node is needed for contention because dlmfs does not exclude the
processes of one node from each other.

Every scenario runs twice: with the program linked against Debian's real
ocfs2-tools ``libo2dlm.a`` ("real") and against ours ("ours"). Both must meet
the absolute expectations written here (from
shared/reference/dlmfs-semantics.md section 10 and libo2dlm-abi.md
section 3), and ours must produce exactly the real one's transcript (every
result code, message, LVB byte and directory entry; times and random names
aside). Set O2DLM_KVM_TRANSCRIPTS=DIR to keep every transcript there.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest

import vm as kvm

pytestmark = pytest.mark.kernel

BUILDS = ("real", "ours")
PRIVATE_RE = re.compile(r"^\.[0-9a-f]{16}$")
RESULT_RE = re.compile(r"^RESULT (.*)$")
FIELD_RE = re.compile(r'(\w+)=("(?:[^"]*)"|\S*)')


# --------------------------------------------------------------------------
# running dlmfs_check in a guest


class Run:
    """Parsed output of one dlmfs_check process."""

    def __init__(self, text: str, rc: Optional[int]) -> None:
        self.text = text
        self.rc = rc
        self.results: List[Dict[str, str]] = []
        self.entries: List[str] = []
        self.listings: List[List[str]] = []  # one per ls step
        self.marks: List[Tuple[str, float]] = []
        pending: List[str] = []
        for line in text.splitlines():
            m = RESULT_RE.match(line)
            if m:
                fields = {k: v.strip('"') for k, v in FIELD_RE.findall(m.group(1))}
                self.results.append(fields)
                if fields["op"] == "ls":
                    self.listings.append(pending)
                    pending = []
            elif line.startswith("ENTRY name="):
                self.entries.append(line[len("ENTRY name="):])
                pending.append(self.entries[-1])
            elif line.startswith("MARK "):
                body, _, t = line[5:].rpartition(" t=")
                self.marks.append((body, float(t)))

    def get(self, op: str, id: Optional[str] = None, nth: int = 0) -> Dict[str, str]:
        found = [r for r in self.results if r["op"] == op and (id is None or r.get("id") == id)]
        if len(found) <= nth:
            raise AssertionError(f"no result #{nth} for op={op} id={id} in:\n{self.text}")
        return found[nth]

    def names(self) -> List[Tuple[str, Optional[str], str]]:
        return [(r["op"], r.get("id"), r["name"]) for r in self.results]

    def normalized(self, build: str) -> List[str]:
        """Lines that must be identical between builds."""
        out = []
        for r in self.results:
            fields = " ".join(f"{k}={v}" for k, v in r.items() if k not in ("t",))
            out.append(fields.replace(f"-{build}", "-B"))
        for listing in self.listings:
            # directory order is not part of the contract
            names = sorted(".<private>" if PRIVATE_RE.match(e) else e for e in listing)
            out.append("listing " + " ".join(names))
        out.append(f"rc={self.rc}")
        return out


def check_cmd(build: str, *steps: str, path: Optional[str] = None) -> str:
    argv = [f"/bin/dlmfs_check-{build}"]
    if path is not None:
        argv += ["-p", path]
    return shlex.join(argv + list(steps))


def run_check(guest: kvm.GuestVM, build: str, *steps: str, path: Optional[str] = None, timeout: float = 120) -> Run:
    res = guest.run(check_cmd(build, *steps, path=path), timeout=timeout)
    return Run(res.stdout + res.stderr, res.rc)


def spawn_check(guest: kvm.GuestVM, build: str, *steps: str) -> kvm.GuestJob:
    return guest.spawn(check_cmd(build, *steps))


def finish(job: kvm.GuestJob, timeout: float = 120) -> Run:
    res = job.wait(timeout)
    return Run(res.stdout, res.rc)


class Outcome:
    """What a scenario observed: parsed runs plus shell observations, and a
    transcript to compare between builds."""

    def __init__(self, build: str) -> None:
        self.build = build
        self.runs: Dict[str, Run] = {}
        self.notes: Dict[str, str] = {}
        self._order: List[str] = []

    def run(self, label: str, run: Run) -> Run:
        self.runs[label] = run
        self._order.append(label)
        return run

    def note(self, label: str, text: str) -> str:
        self.notes[label] = text
        self._order.append(label)
        return text

    def transcript(self) -> str:
        lines = []
        for label in self._order:
            if label in self.runs:
                lines += [f"{label}: {x}" for x in self.runs[label].normalized(self.build)]
            else:
                text = self.notes[label].replace(f"-{self.build}", "-B")
                text = re.sub(r"\.[0-9a-f]{16}\b", ".<private>", text)
                lines += [f"{label}: {x}" for x in text.splitlines()]
        return "\n".join(lines)


def shell(guest: kvm.GuestVM, script: str) -> str:
    res = guest.run(script, timeout=60)
    return res.stdout + res.stderr + (f"[rc={res.rc}]" if res.rc else "")


# --------------------------------------------------------------------------
# scenarios: each takes the cluster and a build and returns an Outcome


def sc_domain(c, b) -> Outcome:
    """Domain directory created by initialize, the private PR lock file,
    and destroy removing everything."""
    o, d = Outcome(b), f"dom-{b}"
    o.note("before", shell(c[0], f"test -e /dlm/{d} && echo present || echo absent"))
    job = spawn_check(c[0], b, f"init:{d}", "ls", "lock:A:ex", "ls", f"touch:/tmp/{d}.r", f"waitfile:120:/tmp/{d}.g", "destroy", "ls")
    job.wait_for("op=touch")
    o.note("held", shell(c[0], f"cd /dlm/{d} && ls -a | sort && stat -c '%n %s %F' * .??*; ls /sys/kernel/debug/o2dlm | grep -x {d}"))
    shell(c[0], f"touch /tmp/{d}.g")
    o.run("n0", finish(job))
    o.note("after", shell(c[0], f"test -e /dlm/{d} && echo present || echo absent"))
    return o


def sc_domain_reuse(c, b) -> Outcome:
    """An existing domain directory is reused; a second context's destroy
    keeps what the first one still holds; the last destroy removes it."""
    o, d = Outcome(b), f"reuse-{b}"
    shell(c[0], f"mkdir /dlm/{d}")
    first = spawn_check(c[0], b, f"init:{d}", "lock:A:pr", f"touch:/tmp/{d}.r", f"waitfile:120:/tmp/{d}.g", "destroy", "ls")
    first.wait_for("op=touch")
    o.run("second", run_check(c[0], b, f"init:{d}", "ls", "lock:B:ex", "unlock:B", "destroy", "ls"))
    o.note("between", shell(c[0], f"ls -a /dlm/{d} | sort"))
    shell(c[0], f"touch /tmp/{d}.g")
    o.run("first", finish(first))
    o.note("after", shell(c[0], f"test -e /dlm/{d} && echo present || echo absent"))
    return o


def sc_names(c, b) -> Outcome:
    """Reserved '.' names, length limits, names dlmfs refuses, bad level,
    unknown locks."""
    o, d = Outcome(b), f"names-{b}"
    o.run("n0", run_check(
        c[0], b, f"init:{d}",
        "lock:.x:pr", "lock:.:ex", "bast:.y:pr",
        "lock:" + "a" * 31 + ":pr", "lock:" + "b" * 32 + ":pr",
        "lock:$dollar:pr", "lock:L:7", "lock:L:-1",
        "unlock:nosuch", "readlvb:nosuch", "writelvb:nosuch:x",
        "drop:never-created",
        "destroy",
    ))
    return o


def sc_initialize(c, b) -> Outcome:
    """o2dlm_initialize failures that depend on the file system."""
    o = Outcome(b)
    o.run("tmp", run_check(c[0], b, "init:x", path="/tmp"))
    o.run("missing", run_check(c[0], b, "init:x", path="/no/such/dir"))
    o.run("file", run_check(c[0], b, "init:x", path="/etc/inittab"))
    o.run("long64", run_check(c[0], b, "init:" + "d" * 63 + b[0] * 1))
    o.run("long255", run_check(c[0], b, "init:" + "e" * 255))
    o.run("ok63", run_check(c[0], b, "init:" + "f" * 59 + "-" + b[:3], "destroy"))
    o.note("dlm", shell(c[0], "ls /dlm | grep -E '^(ddddd|eeeee)' | sort"))
    return o


def sc_recursive(c, b) -> Outcome:
    o, d = Outcome(b), f"recursive-{b}"
    o.run("n0", run_check(
        c[0], b, f"init:{d}", "lock:A:pr", "lock:A:ex", "lock:A:pr", "bast:A:ex",
        "unlock:A", "lock:A:ex", "unlock:A", "unlock:A", "destroy",
    ))
    return o


def sc_trylock(c, b) -> Outcome:
    """O_NONBLOCK trylock against an EX holder on the other node."""
    o, d = Outcome(b), f"try-{b}"
    holder = spawn_check(c[1], b, f"init:{d}", "lock:L:ex", f"touch:/tmp/{d}.r", f"waitfile:120:/tmp/{d}.g", "unlock:L", "destroy")
    holder.wait_for("op=touch")
    o.run("n0", run_check(c[0], b, f"init:{d}", "lock:L:pr:try", "lock:L:ex:try", "lock:U:ex:try", "unlock:U", "destroy"))
    shell(c[1], f"touch /tmp/{d}.g")
    o.run("n1", finish(holder))
    # the other node's destroy unlinked L, which dropped its cached lock
    o.run("n0-after", run_check(c[0], b, f"init:{d}", "lock:L:ex:try", "unlock:L", "destroy"))
    return o


def sc_blocked(c, b) -> Outcome:
    """A blocking request waits while node 1 holds EX and is granted when
    node 1 releases; the LVB node 1 wrote comes along."""
    o, d = Outcome(b), f"block-{b}"
    holder = spawn_check(c[1], b, f"init:{d}", "lock:L:ex", "writelvb:L:from-node1", f"touch:/tmp/{d}.r",
                         f"waitfile:120:/tmp/{d}.g", "unlock:L", "mark:released", f"waitfile:120:/tmp/{d}.g2", "destroy")
    holder.wait_for("op=touch")
    waiter = spawn_check(c[0], b, f"init:{d}", "mark:asking", "lock:L:pr", "readlvb:L", "unlock:L", "destroy")
    waiter.wait_for("^MARK asking")
    time.sleep(3)
    o.note("while-held", "granted" if "op=lock" in waiter.output() else "waiting")
    shell(c[1], f"touch /tmp/{d}.g")
    got = finish(waiter)
    o.run("n0", got)
    shell(c[1], f"touch /tmp/{d}.g2")
    o.run("n1", finish(holder))
    o.waited = got.get("lock", "L").get("t"), got.marks[0][1]
    return o


def sc_bast(c, b) -> Outcome:
    """lock_with_bast: no BAST while uncontended; node 1's request makes the
    fd readable and o2dlm_process_bast runs the callback; node 1 gets the
    lock (and the LVB) after node 0 unlocks."""
    o, d = Outcome(b), f"bast-{b}"
    n0 = spawn_check(c[0], b, f"init:{d}", "bast:L:ex", "writelvb:L:bast-lvb", "waitbast:L:1", f"touch:/tmp/{d}.r",
                     "waitbast:L:90", "processbast:999", "unlock:L", f"waitfile:120:/tmp/{d}.g", "destroy")
    n0.wait_for("op=touch")
    n1 = spawn_check(c[1], b, f"init:{d}", "lock:L:ex", "readlvb:L", "unlock:L", "destroy")
    o.run("n1", finish(n1))
    shell(c[0], f"touch /tmp/{d}.g")
    o.run("n0", finish(n0))
    return o


def sc_lvb(c, b) -> Outcome:
    """LVB written under EX on node 0 is read under PR on node 1; PR cannot
    write; a fresh lock's LVB is 64 zero bytes (o2cb reports it valid)."""
    o, d = Outcome(b), f"lvb-{b}"
    n0 = spawn_check(c[0], b, f"init:{d}", "lock:L:ex", "readlvb:L", "writelvb:L:hello-from-0", "readlvb:L",
                     "readlvb:L:5", "unlock:L", f"touch:/tmp/{d}.r", f"waitfile:120:/tmp/{d}.g", "destroy")
    n0.wait_for("op=touch")
    o.run("n1", run_check(c[1], b, f"init:{d}", "lock:L:pr", "readlvb:L", "writelvb:L:nope", "readlvb:L", "unlock:L", "destroy"))
    shell(c[0], f"touch /tmp/{d}.g")
    o.run("n0", finish(n0))
    return o


def sc_lvb_invalid(c, b) -> Outcome:
    """read returning 0 bytes is LVB_INVALID (on o2cb that is a 0-byte read)."""
    o, d = Outcome(b), f"lvbinv-{b}"
    o.run("n0", run_check(c[0], b, f"init:{d}", "lock:L:ex", "readlvb:L:0", "writelvb:L:abc", "readlvb:L:0",
                          "readlvb:L:3", "unlock:L", "destroy"))
    return o


def sc_drop(c, b) -> Outcome:
    """drop_lock: BUSY_LOCK while held in this context, BUSY_LOCK (EBUSY)
    while another process on the node holds it, success when free."""
    o, d = Outcome(b), f"drop-{b}"
    other = spawn_check(c[0], b, f"init:{d}", "lock:L:ex", f"touch:/tmp/{d}.r", f"waitfile:120:/tmp/{d}.g", "unlock:L", "destroy")
    other.wait_for("op=touch")
    o.run("n0", run_check(c[0], b, f"init:{d}", "lock:M:pr", "drop:M", "unlock:M", "drop:M", "drop:L", "ls", "destroy"))
    o.note("files", shell(c[0], f"ls -a /dlm/{d} | sort"))
    shell(c[0], f"touch /tmp/{d}.g")
    o.run("other", finish(other))
    return o


def sc_destroy(c, b) -> Outcome:
    """destroy closes every lock (held, BAST-registered), unlinks every file
    and removes the directory; node 1 can then take EX at once."""
    o, d = Outcome(b), f"destroy-{b}"
    o.run("n0", run_check(c[0], b, f"init:{d}", "lock:A:ex", "lock:B:pr", "unlock:B", "bast:C:pr", "destroy", "ls"))
    o.note("dlm", shell(c[0], f"test -e /dlm/{d} && echo present || echo absent"))
    o.run("n1", run_check(c[1], b, f"init:{d}", "lock:A:ex:try", "lock:C:ex:try", "destroy"))
    return o


def sc_caps(c, b) -> Outcome:
    o = Outcome(b)
    o.note("file", shell(c[0], "cat /sys/module/ocfs2_dlmfs/parameters/capabilities"))
    o.run("n0", run_check(c[0], b, "caps"))
    return o


# --------------------------------------------------------------------------
# running a scenario once per build, and comparing


_outcomes: Dict[Tuple[str, str], object] = {}


@pytest.fixture(params=BUILDS)
def build(request) -> str:
    return request.param


@pytest.fixture
def outcome(kernel_cluster, dlmfs_check_bins, build):

    def get(scenario: Callable, b: str = build) -> Outcome:
        key = (scenario.__name__, b)
        if key not in _outcomes:
            binary = dlmfs_check_bins[b]
            if not isinstance(binary, Path):
                _outcomes[key] = RuntimeError(f"no {b} build of dlmfs_check: {binary}")
            else:
                try:
                    _outcomes[key] = scenario(kernel_cluster, b)
                except Exception as e:
                    _outcomes[key] = e
                keep = os.environ.get("O2DLM_KVM_TRANSCRIPTS")
                if keep and isinstance(_outcomes[key], Outcome):
                    Path(keep).mkdir(parents=True, exist_ok=True)
                    (Path(keep) / f"{scenario.__name__[3:]}-{b}.txt").write_text(_outcomes[key].transcript() + "\n")
        value = _outcomes[key]
        if isinstance(value, Exception):
            raise value
        return value

    def check(scenario: Callable) -> Outcome:
        mine = get(scenario)
        if build != "real":
            ref = get(scenario, "real")
            if mine.transcript() != ref.transcript():
                diff = difflib.unified_diff(
                    ref.transcript().splitlines(), mine.transcript().splitlines(), "real", build, lineterm="", n=2
                )
                pytest.fail(f"{build} differs from the real libo2dlm:\n" + "\n".join(diff), pytrace=False)
        return mine

    return check


def codes(run: Run) -> List[Tuple[str, Optional[str], str]]:
    return run.names()


def test_domain_directory_and_private_lock(outcome):
    o = outcome(sc_domain)
    assert o.notes["before"].strip() == "absent"
    r = o.runs["n0"]
    assert r.get("init")["name"] == "OK"
    # right after initialize: only the private PR lock file, ".<16 hex>"
    assert len(r.listings[0]) == 1 and PRIVATE_RE.match(r.listings[0][0]), r.text
    assert r.get("ls", nth=0)["count"] == "1"
    assert sorted(r.listings[1]) == sorted(r.listings[0] + ["A"])
    held = o.notes["held"].split()
    private = sorted({x for x in held if PRIVATE_RE.match(x)})
    assert len(private) == 1, o.notes["held"]
    assert "A" in held
    # lock files are regular files of 64 bytes (the LVB size)
    assert f"{private[0]} 64 regular file" in o.notes["held"] and "A 64 regular file" in o.notes["held"]
    assert f"dom-{o.build}" in held, "the kernel joined the DLM domain (debugfs o2dlm)"
    assert r.get("destroy")["name"] == "OK"
    assert r.get("ls", nth=2)["exists"] == "0"
    assert o.notes["after"].strip() == "absent"


def test_domain_directory_reuse(outcome):
    o = outcome(sc_domain_reuse)
    s, f = o.runs["second"], o.runs["first"]
    assert s.get("init")["name"] == "OK"
    assert s.get("ls", nth=0)["count"] == "3"
    assert sum(1 for e in s.listings[0] if PRIVATE_RE.match(e)) == 2, s.text
    assert "A" in s.listings[0]
    assert s.get("destroy")["name"] == "OK"
    # the first context's files (busy) and the directory stay
    after_second = s.get("ls", nth=1)
    assert after_second["exists"] == "1"
    between = o.notes["between"].split()
    assert "A" in between and sum(1 for x in between if PRIVATE_RE.match(x)) == 1
    assert f.get("destroy")["name"] == "OK" and f.get("ls")["exists"] == "0"
    assert o.notes["after"].strip() == "absent"


def test_lock_names_and_levels(outcome):
    o = outcome(sc_names)
    r = o.runs["n0"]
    assert r.get("init")["name"] == "OK"
    assert r.get("lock", ".x")["name"] == "O2DLM_ET_INVALID_LOCK_NAME"
    assert r.get("lock", ".")["name"] == "O2DLM_ET_INVALID_LOCK_NAME"
    assert r.get("bast", ".y")["name"] == "O2DLM_ET_INVALID_LOCK_NAME"
    assert r.get("lock", "a" * 31)["name"] == "OK"
    assert r.get("lock", "b" * 32)["name"] == "O2DLM_ET_INVALID_LOCK_NAME"
    # dlmfs refuses to create a name starting with '$': a plain open failure
    assert r.get("lock", "$dollar")["name"] == "O2DLM_ET_LOCKING"
    assert r.get("lock", "L", nth=0)["name"] == "O2DLM_ET_INVALID_LOCK_LEVEL"
    assert r.get("lock", "L", nth=1)["name"] == "O2DLM_ET_INVALID_LOCK_LEVEL"
    assert r.get("unlock", "nosuch")["name"] == "O2DLM_ET_UNKNOWN_LOCK"
    assert r.get("readlvb", "nosuch")["name"] == "O2DLM_ET_UNKNOWN_LOCK"
    assert r.get("writelvb", "nosuch")["name"] == "O2DLM_ET_UNKNOWN_LOCK"
    assert r.get("drop", "never-created")["name"] == "O2DLM_ET_UNLINK"
    assert r.get("destroy")["name"] == "OK"


def test_initialize_errors(outcome):
    o = outcome(sc_initialize)
    assert o.runs["tmp"].get("init")["name"] == "O2DLM_ET_NO_FS"
    assert o.runs["missing"].get("init")["name"] == "O2DLM_ET_OPEN_DLM_DIR"
    assert o.runs["file"].get("init")["name"] != "OK"
    # dlmfs refuses domain names of 64 characters or more at mkdir
    assert o.runs["long64"].get("init")["name"] == "O2DLM_ET_DOMAIN_CREATE"
    assert o.runs["long255"].get("init")["name"] == "O2DLM_ET_NAME_TOO_LONG"
    assert o.runs["ok63"].get("init")["name"] == "OK" and o.runs["ok63"].get("destroy")["name"] == "OK"
    # failed initializes leave no directory behind
    assert o.notes["dlm"].split() == [], o.notes["dlm"]


def test_recursive_lock(outcome):
    r = outcome(sc_recursive).runs["n0"]
    assert codes(r) == [
        ("init", None, "OK"),
        ("lock", "A", "OK"),
        ("lock", "A", "O2DLM_ET_RECURSIVE_LOCK"),
        ("lock", "A", "O2DLM_ET_RECURSIVE_LOCK"),
        ("bast", "A", "O2DLM_ET_RECURSIVE_LOCK"),
        ("unlock", "A", "OK"),
        ("lock", "A", "OK"),
        ("unlock", "A", "OK"),
        ("unlock", "A", "O2DLM_ET_UNKNOWN_LOCK"),
        ("destroy", None, "OK"),
    ]


def test_trylock_refused_by_other_node(outcome):
    o = outcome(sc_trylock)
    assert o.runs["n1"].get("lock", "L")["name"] == "OK"
    n0 = o.runs["n0"]
    assert n0.get("lock", "L", nth=0)["name"] == "O2DLM_ET_TRYLOCK_FAILED"
    assert n0.get("lock", "L", nth=1)["name"] == "O2DLM_ET_TRYLOCK_FAILED"
    assert n0.get("lock", "U")["name"] == "OK"
    assert n0.get("destroy")["name"] == "OK"
    assert o.runs["n1"].get("destroy")["name"] == "OK"
    assert o.runs["n0-after"].get("lock", "L")["name"] == "OK"


def test_blocked_lock_granted_on_release(outcome):
    o = outcome(sc_blocked)
    assert o.notes["while-held"] == "waiting"
    n0 = o.runs["n0"]
    assert n0.get("lock", "L")["name"] == "OK"
    lock_t, asked_t = o.waited
    assert float(lock_t) - asked_t >= 2.5, "granted before node 1 released"
    lvb = n0.get("readlvb", "L")
    assert lvb["name"] == "OK" and lvb["bytes"] == "64" and lvb["text"] == "from-node1"
    assert o.runs["n1"].get("writelvb", "L")["bytes"] == "10"


def test_bast_fires(outcome):
    o = outcome(sc_bast)
    n0, n1 = o.runs["n0"], o.runs["n1"]
    assert n0.get("bast", "L")["name"] == "OK" and n0.get("bast", "L")["fd_valid"] == "1"
    quiet = n0.get("waitbast", "L", nth=0)
    assert quiet["readable"] == "0" and quiet["calls"] == "0"
    fired = n0.get("waitbast", "L", nth=1)
    assert fired["readable"] == "1", n0.text
    assert fired["calls_before"] == "0" and fired["calls"] == "1"
    # an fd that is not a BAST fd is ignored
    assert n0.get("processbast")["calls"] == "1"
    assert n0.get("unlock", "L")["name"] == "OK"
    assert n1.get("lock", "L")["name"] == "OK"
    assert n1.get("readlvb", "L")["text"] == "bast-lvb"
    assert float(n1.get("lock", "L")["t"]) >= 0


def test_lvb_crosses_nodes(outcome):
    o = outcome(sc_lvb)
    n0, n1 = o.runs["n0"], o.runs["n1"]
    fresh = n0.get("readlvb", "L", nth=0)
    assert fresh["name"] == "OK" and fresh["bytes"] == "64" and fresh["hex"] == "00" * 64
    assert n0.get("writelvb", "L")["bytes"] == str(len("hello-from-0"))
    assert n0.get("readlvb", "L", nth=1)["text"] == "hello-from-0"
    five = n0.get("readlvb", "L", nth=2)
    assert five["bytes"] == "5" and five["text"] == "hello"
    got = n1.get("readlvb", "L", nth=0)
    assert got["name"] == "OK" and got["bytes"] == "64" and got["text"] == "hello-from-0"
    # a PR holder's descriptor is read-only
    assert n1.get("writelvb", "L")["name"] == "O2DLM_ET_LVB_WRITE"
    assert n1.get("readlvb", "L", nth=1)["text"] == "hello-from-0"


def test_lvb_read_zero_bytes_is_invalid(outcome):
    r = outcome(sc_lvb_invalid).runs["n0"]
    assert r.get("readlvb", "L", nth=0)["name"] == "O2DLM_ET_LVB_INVALID"
    assert r.get("readlvb", "L", nth=1)["name"] == "O2DLM_ET_LVB_INVALID"
    three = r.get("readlvb", "L", nth=2)
    assert three["name"] == "OK" and three["bytes"] == "3" and three["text"] == "abc"


def test_drop_lock(outcome):
    o = outcome(sc_drop)
    r = o.runs["n0"]
    assert r.get("drop", "M", nth=0)["name"] == "O2DLM_ET_BUSY_LOCK"
    assert r.get("drop", "M", nth=1)["name"] == "OK"
    # held by another process of this node: unlink says EBUSY
    assert r.get("drop", "L")["name"] == "O2DLM_ET_BUSY_LOCK"
    assert "L" in r.listings[0] and "M" not in r.listings[0]
    assert o.runs["other"].get("destroy")["name"] == "OK"


def test_destroy_releases_everything(outcome):
    o = outcome(sc_destroy)
    r = o.runs["n0"]
    assert [x[2] for x in codes(r)][:-1] == ["OK"] * 6
    assert r.get("ls")["exists"] == "0"
    assert o.notes["dlm"].strip() == "absent"
    n1 = o.runs["n1"]
    assert n1.get("lock", "A")["name"] == "OK" and n1.get("lock", "C")["name"] == "OK"


def test_capabilities(outcome):
    o = outcome(sc_caps)
    assert o.notes["file"].strip() == "bast stackglue"
    r = o.runs["n0"]
    assert r.get("supports_bast")["name"] == "OK" and r.get("supports_bast")["value"] == "1"
    assert r.get("supports_stackglue")["name"] == "OK" and r.get("supports_stackglue")["value"] == "1"
