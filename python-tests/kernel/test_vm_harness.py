"""Self-test of the harness's single-VM mode: the facts it publishes are
enough for a host process to be cluster node 1.

A minimal stand-in host node written here (disk heartbeat in the shared
file, then an o2net handshake on the forwarded port) checks the facts end
to end; the real host node is the project's embedded engine.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
import zlib

import pytest

import vm as kvm

pytestmark = pytest.mark.kernel


def crc32_le0(data: bytes) -> int:
    """Linux crc32_le with seed 0 and no inversions, via zlib's CRC."""
    return zlib.crc32(data, 0xFFFFFFFF) ^ 0xFFFFFFFF


def read_block(facts, num: int) -> bytes:
    with open(facts.hb_file, "rb") as f:
        f.seek(facts.hb_offset(num))
        return f.read(facts.block_bytes)


def decode_block(block: bytes) -> dict:
    seq, node, cksum, generation, dead_ms = struct.unpack_from("<QB3xIQI", block, 0)
    zeroed = block[:12] + b"\0\0\0\0" + block[16:]
    return dict(seq=seq, node=node, cksum=cksum, crc_ok=crc32_le0(zeroed) == cksum,
                generation=generation, dead_ms=dead_ms)


class HostHeartbeat(threading.Thread):
    """Write node ``num``'s heartbeat block every second until stopped."""

    def __init__(self, facts, num: int) -> None:
        super().__init__(daemon=True)
        self.facts, self.num = facts, num
        self.generation = int.from_bytes(os.urandom(8), "little") | 1
        self.halt = threading.Event()

    def block(self, generation: int) -> bytes:
        body = struct.pack("<QB3xIQI", int(time.time()), self.num, 0, generation, self.facts.dead_ms)
        body += b"\0" * (self.facts.block_bytes - len(body))
        cksum = crc32_le0(body)
        return body[:12] + struct.pack("<I", cksum) + body[16:]

    def write(self, data: bytes) -> None:
        fd = os.open(self.facts.hb_file, os.O_WRONLY)
        try:
            os.pwrite(fd, data, self.facts.hb_offset(self.num))
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def run(self) -> None:
        while not self.halt.is_set():
            self.write(self.block(self.generation))
            self.halt.wait(1.0)
        # a clean stop writes generation 0, as the kernel does
        self.write(self.block(0))


def test_single_vm_facts(single_vm):
    vm, facts = single_vm.vm, single_vm.facts
    assert facts.guest_num == 0 and facts.peer_num == 1
    assert facts.hb_offset(0) == 512 and facts.hb_offset(1) == 1024
    env = facts.as_env()
    assert env["O2KVM_O2NET_CONNECT_TO"] == f"127.0.0.1:{facts.o2net_connect_to[1]}"
    assert 20000 <= facts.o2net_connect_to[1] <= 29999
    assert vm.boot_seconds is not None and vm.boot_seconds < 240

    # the kernel heartbeats into the host file at node 0's offset
    first = decode_block(read_block(facts, 0))
    time.sleep(4.5)
    second = decode_block(read_block(facts, 0))
    assert second["node"] == 0 and second["crc_ok"], second
    assert second["seq"] != first["seq"], (first, second)
    assert second["dead_ms"] == facts.dead_ms and second["generation"] != 0
    assert abs(second["seq"] - time.time()) < 30

    # command channel: status and separate streams
    res = vm.run("echo out; echo err >&2; exit 7")
    assert (res.rc, res.stdout, res.stderr) == (7, "out\n", "err\n")
    assert vm.run("cat /sys/kernel/config/cluster/o2kvm/node/host1/num").stdout.strip() == "1"

    # a host node: heartbeat first, then connect and exchange handshakes
    hb = HostHeartbeat(facts, facts.peer_num)
    hb.start()
    try:
        deadline = time.monotonic() + 30
        while "1" not in vm.run("cat /sys/kernel/debug/o2hb/livenodes").stdout.split():
            assert time.monotonic() < deadline, "guest never saw node 1 heartbeat"
            time.sleep(0.5)
        with socket.create_connection(facts.o2net_connect_to, timeout=15) as s:
            got = b""
            while len(got) < 32:
                chunk = s.recv(32 - len(got))
                assert chunk, f"guest closed after {got!r}"
                got += chunk
            version, _connector, hb_ms, idle, keepalive, reconnect = struct.unpack(">QQIIII", got)
            assert version == facts.o2net_protocol_version
            assert hb_ms == facts.hb_timeout_ms
            assert (idle, keepalive, reconnect) == (
                facts.idle_timeout_ms, facts.keepalive_delay_ms, facts.reconnect_delay_ms)
            s.sendall(got)  # the same timeouts: the guest accepts us
            deadline = time.monotonic() + 15
            while "1" not in vm.run("cat /sys/kernel/debug/o2net/connected_nodes").stdout.split():
                assert time.monotonic() < deadline, "guest did not accept node 1"
                time.sleep(0.3)
            # the next thing the guest sends is a keepalive request (0xfa57)
            s.settimeout(10)
            head = s.recv(2)
            assert head == b"\xfa\x57", head
    finally:
        hb.halt.set()
        hb.join(10)
    assert "Accepted connection from node host1 (num 1)" in vm.dmesg()


def handshake(addr, timeout: float = 15) -> socket.socket:
    """Connect as the host node and echo the kernel's handshake back."""
    s = socket.create_connection(addr, timeout=timeout)
    got = b""
    while len(got) < 32:
        chunk = s.recv(32 - len(got))
        assert chunk, f"{addr} closed after {got!r}"
        got += chunk
    s.sendall(got)
    return s


def test_cluster_with_host_node(tmp_path):
    """Cluster mode with a host node: both kernel nodes accept it."""
    cluster = kvm.boot_cluster(tmp_path, n=2, seed="hostnode", host_node=True)
    try:
        facts = cluster.facts
        assert facts.host_num == 2 and facts.hb_offset(2) == 1536
        assert sorted(facts.o2net_connect_to) == [0, 1]
        # the kernel nodes are connected to each other, not yet to the host
        for i in (0, 1):
            table = cluster[i].run("ls /sys/kernel/config/cluster/o2kvm/node").stdout.split()
            assert table == ["host2", "kvm0", "kvm1"]
        hb = HostHeartbeat(facts, 2)
        hb.start()
        socks = []
        try:
            for i in (0, 1):
                deadline = time.monotonic() + 30
                while "2" not in cluster[i].run("cat /sys/kernel/debug/o2hb/livenodes").stdout.split():
                    assert time.monotonic() < deadline, f"node {i} never saw node 2 heartbeat"
                    time.sleep(0.5)
            for i in (0, 1):
                socks.append(handshake(facts.o2net_connect_to[i]))
            for i in (0, 1):
                deadline = time.monotonic() + 15
                while True:
                    have = cluster[i].run("cat /sys/kernel/debug/o2net/connected_nodes").stdout.split()
                    if sorted(have) == sorted({"0", "1", "2"} - {str(i)}):
                        break
                    assert time.monotonic() < deadline, f"node {i} connected to {have}"
                    time.sleep(0.3)
        finally:
            for s in socks:
                s.close()
            hb.halt.set()
            hb.join(10)
    finally:
        cluster.kill()
