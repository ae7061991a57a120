"""Our ``o2dlm`` binary as the host-side cluster node of a kernel VM.

``vm.boot_single_vm()`` boots kernel node 0 and leaves node 1 to a host
process. This module turns its facts (``vm.HostPeerFacts``) into what our
binary reads (a cluster.conf and environment variables), runs
``o2dlm node`` / ``o2dlm heartbeat`` and gives tests what they observe:

* ``EngineNode``: one ``o2dlm node`` process, its output, stop/kill.
* ``O2netTap``: a transparent TCP relay between our node and the VM's
  forwarded o2net port that decodes the o2net stream in both directions
  (handshakes, message magics, times), so tests see the wire without
  depending on our own log format and without capture privileges.
* ``read_slot()`` / ``decode_slot()``: an independent decoder of a
  heartbeat block (layout and crc32_le from o2hb-disk-heartbeat.md), and
  ``heartbeat_list()``: the parsed output of ``o2dlm heartbeat``.

Addresses. The two nodes see each other at different addresses: the kernel
knows us as 10.0.2.2 (slirp's host address, where every connection from the
host appears to come from) and we reach it at 127.0.0.1:<forwarded port>. Each
side's configuration holds the addresses that side uses: in our cluster.conf
the kernel node is 127.0.0.1:<tap port> and we are ``HOST_IP``:<own port>.
``HOST_IP`` is 127.0.0.2, not 127.0.0.1, because o2net refuses a table in
which two nodes share an address (it identifies accepted peers by source
address); our connect is bound to ``HOST_IP`` as the kernel's would be bound
to its own address, and slirp rewrites the source to 10.0.2.2 anyway.
"""

from __future__ import annotations

import base64
import dataclasses
import mmap
import os
import re
import select
import signal
import socket
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import vm as kvm

REPO = Path(__file__).resolve().parent.parent.parent
HOST_IP = "127.0.0.2"

HB_PERIOD_S = 2.0

# o2net constants (o2net-wire.md sections 4 and 5)
HANDSHAKE_LEN = 32
HEADER_LEN = 24
MAGIC_NAMES = {0xFA55: "request", 0xFA56: "status", 0xFA57: "keepalive_req", 0xFA58: "keepalive_resp"}


def _log(msg: str) -> None:
    kvm._log(msg)


# --------------------------------------------------------------------------
# the binary


_built: Optional[Path] = None


def o2dlm_binary() -> Path:
    """``O2DLM_BIN``, else target/release/o2dlm, brought up to date once
    per process with ``cargo build --release`` (a no-op when current)."""
    global _built
    forced = os.environ.get("O2DLM_BIN")
    if forced:
        return Path(forced)
    if _built is None:
        res = subprocess.run(
            ["cargo", "build", "--release", "--bin", "o2dlm"], cwd=REPO, capture_output=True, text=True
        )
        if res.returncode != 0:
            raise RuntimeError(f"cargo build --release failed:\n{res.stderr[-4000:]}")
        _built = REPO / "target" / "release" / "o2dlm"
    return _built


# --------------------------------------------------------------------------
# configuration from the VM's facts


def geometry_env(facts: kvm.ClusterFacts) -> Dict[str, str]:
    return {
        "O2DLM_HEARTBEAT_DEVICE": str(facts.hb_file),
        "O2DLM_HEARTBEAT_BLOCK_BYTES": str(facts.block_bytes),
        "O2DLM_HEARTBEAT_START_BLOCK": str(facts.start_block),
        "O2DLM_HEARTBEAT_BLOCKS": str(facts.blocks),
        "O2CB_HEARTBEAT_THRESHOLD": str(facts.dead_threshold),
    }


def cluster_conf(facts: kvm.HostPeerFacts, kernel_at: Tuple[str, int], own_port: int) -> str:
    """Our view of the cluster: the kernel node at ``kernel_at`` (the
    forwarded port, or a tap in front of it), ourselves at HOST_IP."""
    guest = facts.node(facts.guest_num)
    peer = facts.node(facts.peer_num)
    out = [f"cluster:\n\tnode_count = 2\n\tname = {facts.cluster_name}\n"]
    for node, ip, port in ((guest, kernel_at[0], kernel_at[1]), (peer, HOST_IP, own_port)):
        out.append(
            f"node:\n\tip_port = {port}\n\tip_address = {ip}\n\tnumber = {node.num}\n"
            f"\tname = {node.name}\n\tcluster = {facts.cluster_name}\n"
        )
    return "\n".join(out)


def node_env(facts: kvm.HostPeerFacts, conf: Path, log: str = "debug") -> Dict[str, str]:
    env = dict(os.environ)
    # nothing from the caller's own engine setup may leak in
    for k in list(env):
        if k.startswith(("O2DLM_", "O2CB_")) and k != "O2DLM_BIN":
            del env[k]
    env.update(geometry_env(facts))
    env.update(
        O2DLM_CLUSTER_CONF=str(conf),
        O2DLM_NODE=facts.node(facts.peer_num).name,
        O2DLM_O2CB_SYSCONFIG="",
        O2CB_IDLE_TIMEOUT_MS=str(facts.idle_timeout_ms),
        O2CB_KEEPALIVE_DELAY_MS=str(facts.keepalive_delay_ms),
        O2CB_RECONNECT_DELAY_MS=str(facts.reconnect_delay_ms),
        O2DLM_LOG=log,
    )
    return env


# --------------------------------------------------------------------------
# heartbeat blocks


def crc32_le(data: bytes) -> int:
    """The kernel's crc32_le with seed 0 (no inversions), via zlib."""
    return zlib.crc32(data, 0xFFFFFFFF) ^ 0xFFFFFFFF


@dataclasses.dataclass
class Slot:
    seq: int
    node: int
    cksum: int
    generation: int
    dead_ms: int
    crc_ok: bool


def decode_slot(block: bytes) -> Slot:
    seq, node, cksum, gen, dead_ms = struct.unpack_from("<QB3xIQI", block, 0)
    zeroed = block[:12] + b"\0\0\0\0" + block[16:]
    return Slot(seq, node, cksum, gen, dead_ms, crc32_le(zeroed) == cksum)


def read_slot(facts: kvm.ClusterFacts, num: int) -> Slot:
    """Node ``num``'s block, read from the host file (O_DIRECT when the
    file system allows, as qemu may write it with cache=none)."""
    off = facts.hb_offset(num)
    flags = os.O_RDONLY | getattr(os, "O_DIRECT", 0)
    try:
        fd = os.open(facts.hb_file, flags)
    except OSError:
        fd = os.open(facts.hb_file, os.O_RDONLY)
    try:
        # an mmap buffer is page aligned, as O_DIRECT wants
        buf = mmap.mmap(-1, 4096)
        aligned = off - off % 4096
        n = os.preadv(fd, [buf], aligned)
        start = off - aligned
        if n < start + facts.block_bytes:
            raise OSError(f"short read of slot {num}")
        return decode_slot(bytes(buf[start : start + facts.block_bytes]))
    finally:
        os.close(fd)


HB_ROW_RE = re.compile(
    r"^\s*(?P<node>\d+)\s+(?P<seq>\d+)\s+(?P<gen>0x[0-9a-f]+)\s+(?P<age>-?\d+)s\s+(?P<crc>ok|BAD)\s+(?P<state>live|dead)(?P<note>.*)$"
)


def heartbeat_list(facts: kvm.ClusterFacts, once: bool = True, timeout: float = 30) -> Dict[int, Dict[str, object]]:
    """``o2dlm heartbeat [--once] <hb file>``, one dict per used slot."""
    argv = [str(o2dlm_binary()), "heartbeat"] + (["--once"] if once else []) + [str(facts.hb_file)]
    env = dict(os.environ)
    env.update(geometry_env(facts))
    res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr}")
    rows: Dict[int, Dict[str, object]] = {}
    lines = res.stdout.splitlines()
    if not lines or not lines[0].split()[:1] == ["NODE"]:
        raise AssertionError(f"o2dlm heartbeat: no header line in:\n{res.stdout}")
    for line in lines[1:]:
        m = HB_ROW_RE.match(line)
        if not m:
            raise AssertionError(f"o2dlm heartbeat: unparsable line {line!r}")
        rows[int(m["node"])] = {
            "seq": int(m["seq"]),
            "generation": int(m["gen"], 16),
            "age": int(m["age"]),
            "crc_ok": m["crc"] == "ok",
            "live": m["state"] == "live",
            "note": m["note"].strip(),
            "line": line,
        }
    return rows


# --------------------------------------------------------------------------
# o2net tap


@dataclasses.dataclass
class Frame:
    t: float  # time.monotonic() when the frame was complete
    direction: str  # "out" (our node -> kernel) or "in" (kernel -> our node)
    kind: str  # handshake, request, status, keepalive_req, keepalive_resp, bad
    fields: Tuple[int, ...] = ()


class _StreamDecoder:
    """Splits one direction of an o2net stream into frames."""

    def __init__(self, direction: str, sink: List[Frame], lock: threading.Lock) -> None:
        self.direction = direction
        self.buf = b""
        self.shaken = False
        self.sink = sink
        self.lock = lock
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        self.buf += data
        while True:
            now = time.monotonic()
            if not self.shaken:
                if len(self.buf) < HANDSHAKE_LEN:
                    return
                fields = struct.unpack(">QQIIII", self.buf[:HANDSHAKE_LEN])
                self._add(Frame(now, self.direction, "handshake", fields))
                self.buf = self.buf[HANDSHAKE_LEN:]
                self.shaken = True
                continue
            if len(self.buf) < HEADER_LEN:
                return
            head = struct.unpack(">HHHHiiII", self.buf[:HEADER_LEN])
            magic, data_len = head[0], head[1]
            kind = MAGIC_NAMES.get(magic)
            if kind is None:
                self._add(Frame(now, self.direction, "bad", head))
                self.broken = True
                return
            if len(self.buf) < HEADER_LEN + data_len:
                return
            self._add(Frame(now, self.direction, kind, head))
            self.buf = self.buf[HEADER_LEN + data_len :]

    def _add(self, f: Frame) -> None:
        with self.lock:
            self.sink.append(f)


class O2netTap:
    """Relays every connection on 127.0.0.1:<port> to ``upstream`` and
    records the o2net frames of both directions. An end-of-stream or error
    on one side is passed on to the other (half close, then close), so the
    kernel sees our node's connection end as it would without the tap.
    ``in_delay`` adds latency to the kernel -> our node direction: the two
    keepalive timers then fire in turn, so each side's keepalive requests
    (and the other's answers) are exercised, not only the faster one's."""

    def __init__(self, upstream: Tuple[str, int], port: int) -> None:
        self.upstream = upstream
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", port))
        self.lsock.listen(4)
        self.port = port
        self.frames: List[Frame] = []
        # seconds to hold kernel -> our node bytes (latency on that path)
        self.in_delay = 0.0
        self.events: List[Tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        t = threading.Thread(target=self._accept_loop, name="o2net-tap", daemon=True)
        t.start()
        self._threads.append(t)

    def _event(self, what: str) -> None:
        with self._lock:
            self.events.append((time.monotonic(), what))

    def _accept_loop(self) -> None:
        self.lsock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                down, addr = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream, timeout=5)
            except OSError as e:
                self._event(f"upstream connect failed: {e}")
                down.close()
                continue
            self._event(f"connection from {addr[0]}:{addr[1]}")
            t = threading.Thread(target=self._relay, args=(down, up), name="o2net-tap-relay", daemon=True)
            t.start()
            self._threads.append(t)

    def _relay(self, down: socket.socket, up: socket.socket) -> None:
        decoders = {
            down: (up, _StreamDecoder("out", self.frames, self._lock)),
            up: (down, _StreamDecoder("in", self.frames, self._lock)),
        }
        # bytes waiting for their due time, per receiving socket; an end of
        # stream is queued as b"" so that it follows the data before it
        queues: Dict[socket.socket, List[Tuple[float, bytes]]] = {down: [], up: []}
        open_in = {down, up}
        try:
            while (open_in or queues[down] or queues[up]) and not self._stop.is_set():
                now = time.monotonic()
                for s, q in queues.items():
                    other, dec = decoders[s]
                    while q and q[0][0] <= now:
                        _, data = q.pop(0)
                        try:
                            if data:
                                other.sendall(data)
                            else:
                                other.shutdown(socket.SHUT_WR)
                        except OSError as e:
                            self._event(f"{dec.direction}: forwarding failed: {e}")
                            return
                due = [q[0][0] for q in queues.values() if q]
                wait = min([0.2] + [max(0.0, d - now) for d in due])
                ready, _, _ = select.select(list(open_in), [], [], wait)
                for s in ready:
                    other, dec = decoders[s]
                    try:
                        data = s.recv(65536)
                    except OSError as e:
                        self._event(f"{dec.direction}: {e}")
                        return
                    if not data:
                        self._event(f"{dec.direction}: end of stream")
                        open_in.discard(s)
                    else:
                        dec.feed(data)
                    delay = self.in_delay if dec.direction == "in" else 0.0
                    queues[s].append((time.monotonic() + delay, data))
        finally:
            down.close()
            up.close()
            self._event("closed")

    def frames_of(self, direction: str, kind: str, since: float = 0.0) -> List[Frame]:
        with self._lock:
            return [f for f in self.frames if f.direction == direction and f.kind == kind and f.t >= since]

    def close(self) -> None:
        self._stop.set()
        self.lsock.close()
        for t in self._threads:
            t.join(timeout=2)


# --------------------------------------------------------------------------
# our node process


class EngineNode:
    """``o2dlm node`` in its own session, output in ``workdir``."""

    def __init__(self, facts: kvm.HostPeerFacts, workdir: Path, kernel_at: Tuple[str, int], own_port: int,
                 log: str = "debug", tag: str = "node") -> None:
        self.facts = facts
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "cluster.conf"
        self.conf.write_text(cluster_conf(facts, kernel_at, own_port))
        self.env = node_env(facts, self.conf, log)
        self.out_path = workdir / f"{tag}.out"
        self.proc: Optional[subprocess.Popen] = None
        self.started: Optional[float] = None
        self.direct = False  # set by the caller: no tap between us and the kernel

    def start(self) -> None:
        out = open(self.out_path, "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(o2dlm_binary()), "node"], env=self.env, stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        out.close()
        _log(f"o2dlm node started (pid {self.proc.pid}), output {self.out_path}")

    def output(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_for(self, pattern: str, timeout: float, after: int = 0) -> re.Match:
        """Until ``pattern`` (regex, multi-line) appears in the output past
        character ``after``; fails at once if the process ended."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            text = self.output()
            m = rx.search(text, after)
            if m:
                return m
            if not self.alive():
                raise AssertionError(f"o2dlm node exited ({self.proc.returncode}) without /{pattern}/:\n{text[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"o2dlm node: no /{pattern}/ within {timeout:.0f} s:\n{text[-4000:]}")
            time.sleep(0.1)

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Best-effort end (fixture teardown): SIGTERM, then SIGKILL."""
        if not self.alive():
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------
# guest-side observations


def guest_nums(vm: kvm.GuestVM, path: str) -> List[int]:
    """Node numbers listed in a debugfs file such as o2hb/livenodes."""
    res = vm.run(f"cat {path}", timeout=20)
    if res.rc != 0:
        raise AssertionError(f"guest: cat {path} failed: {res.output}")
    return [int(x) for x in res.stdout.split() if x.isdigit()]


def guest_slot(vm: kvm.GuestVM, facts: kvm.ClusterFacts, num: int) -> Slot:
    """Node ``num``'s block as the guest reads it from its heartbeat disk
    (O_DIRECT, past the guest's page cache)."""
    script = (
        f"for b in /sys/block/vd*; do [ \"$(cat $b/serial 2>/dev/null)\" = {kvm.HB_SERIAL} ] && d=/dev/${{b##*/}}; done\n"
        f"dd if=$d bs={facts.block_bytes} skip={facts.start_block + num} count=1 iflag=direct 2>/dev/null | base64\n"
    )
    res = vm.run(script, timeout=20).check()
    data = base64.b64decode(res.stdout)
    if len(data) != facts.block_bytes:
        raise AssertionError(f"guest read {len(data)} bytes of slot {num}")
    return decode_slot(data)
