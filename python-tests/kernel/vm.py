"""Kernel o2cb nodes in qemu, for tests of o2dlm against the real Linux stack.

This is the project's own harness. It boots Debian's stock Linux 6.1 kernel
under qemu (TCG; no KVM needed) with the OCFS2 cluster stack loaded, and
gives Python tests:

* ``boot_single_vm()``: one VM that is kernel node 0 of a two-node cluster
  whose node 1 is meant to be a process on this host. The heartbeat disk is a
  plain file on the host; o2net of node 0 is reachable on 127.0.0.1 through a
  qemu ``hostfwd``. Every fact a host node needs is in ``SingleVM.facts``.
* ``boot_cluster()``: two (or more) VMs that are kernel nodes 0..n-1 of one
  cluster, joined by a private Ethernet link (qemu ``-netdev dgram`` on
  127.0.0.1), sharing one heartbeat file, each with dlmfs on ``/dlm``.
* ``GuestVM.run()`` / ``spawn()``: run shell commands in a guest, with exit
  status and separate stdout/stderr; ``dmesg()``; ``stop()`` / ``kill()``.

Setup is automatic and cached (``O2DLM_KVM_CACHE``, default
``/tmp/o2dlm-kvm-cache``): missing Debian packages are installed with
apt-get (root needed only then), the kernel package is fetched with
``apt-get download`` and unpacked with ``dpkg-deb -x``, and the initramfs is
written by this module (it writes cpio itself).

Environment:
  O2DLM_KVM_CACHE       cache directory
  O2DLM_KVM_KERNEL_PKG  pin the kernel package (default: what
                        linux-image-amd64 depends on, a linux-image-6.1.*-amd64)
  O2DLM_KVM_PORT_BASE   first host port to use (default: derived per test)
  O2DLM_KVM_BOOT_TIMEOUT seconds to wait for a guest (default 240)
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

HERE = Path(__file__).resolve().parent
GUEST_DIR = HERE / "guest"

DEFAULT_CACHE = "/tmp/o2dlm-kvm-cache"

# Modules the guest needs; their dependencies are added in load order.
# virtio and configfs are modules in Debian's 6.1 config, not built in.
# ocfs2_stack_o2cb is loaded explicitly because the guest has no modprobe
# for the stack glue to call.
WANTED_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "configfs",
    "ocfs2_nodemanager",
    "ocfs2_dlm",
    "ocfs2_stackglue",
    "ocfs2_stack_o2cb",
    "ocfs2_dlmfs",
)

# Host packages and how to tell whether each is present.
HOST_PACKAGES = {
    "qemu-system-x86": lambda: shutil.which("qemu-system-x86_64") is not None,
    "busybox-static": lambda: _is_static_elf(Path("/bin/busybox")),
    "gcc": lambda: shutil.which("gcc") is not None,
    "libc6-dev": lambda: Path("/usr/lib/x86_64-linux-gnu/libc.a").exists(),
}

# Guest-side constants of our design.
SLIRP_NET = "10.0.2"
SLIRP_GUEST_IP = "10.0.2.15"
SLIRP_HOST_IP = "10.0.2.2"  # how the guest sees the host (and forwarded peers)
LINK_NET = "10.0.3"
AGENT_GUEST_PORT = 5555
O2NET_PORT = 7777
HB_SERIAL = "o2hb"
READY_RE = re.compile(r"O2T-READY uptime=([0-9.]+)")
FAILED_RE = re.compile(r"O2T-FAILED (\S+)")

# Host ports: each VM uses PORTS_PER_VM consecutive ports from the base.
PORTS_PER_VM = 4
PORT_O2NET, PORT_AGENT, PORT_LINK = 0, 1, 2
PORT_RANGE = (20000, 29999)


class KvmError(RuntimeError):
    """The harness could not set up, boot or talk to a guest."""


# --------------------------------------------------------------------------
# small helpers


def _log(msg: str) -> None:
    # stderr, so pytest shows it with -s or in the captured log of a failure
    print(f"o2dlm-kvm: {msg}", file=sys.stderr, flush=True)


def _is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a PT_INTERP (dynamic loader)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        off = phoff + i * phentsize
        if off + 4 > len(data):
            return False
        if struct.unpack_from("<I", data, off)[0] == 3:  # PT_INTERP
            return False
    return True


def elf_section(path: Path, wanted: str) -> Optional[bytes]:
    """Contents of one section of an ELF64 little-endian file, or None."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise KvmError(f"{path}: not an ELF64 file")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i: int) -> Tuple[int, int, int]:
        base = shoff + i * shentsize
        name = struct.unpack_from("<I", data, base)[0]
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name, offset, size

    _, str_off, str_size = header(shstrndx)
    names = data[str_off : str_off + str_size]
    for i in range(shnum):
        name_off, offset, size = header(i)
        end = names.find(b"\0", name_off)
        if names[name_off:end].decode(errors="replace") == wanted:
            return data[offset : offset + size]
    return None


def module_depends(ko: Path) -> List[str]:
    """The ``depends=`` list of a kernel module's .modinfo section."""
    info = elf_section(ko, ".modinfo") or b""
    for field in info.split(b"\0"):
        if field.startswith(b"depends="):
            value = field[len(b"depends=") :].decode()
            return [d.replace("-", "_") for d in value.split(",") if d]
    return []


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(cmd: Sequence[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, **kw)


# --------------------------------------------------------------------------
# cpio (newc) writer: the kernel unpacks concatenated archives in order, so a
# small per-VM archive appended to the shared one adds or replaces files.


class Cpio:
    def __init__(self, first_ino: int = 1) -> None:
        self._parts: List[bytes] = []
        self._ino = first_ino
        self._dirs: set = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1, rdev: Tuple[int, int] = (0, 0)) -> None:
        raw_name = name.encode() + b"\0"
        fields = (
            self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(raw_name), 0,
        )
        self._ino += 1
        head = b"070701" + b"".join(b"%08X" % v for v in fields) + raw_name
        head += b"\0" * (-len(head) % 4)
        self._parts.append(head + data + b"\0" * (-len(data) % 4))

    def dir(self, name: str, mode: int = 0o755) -> None:
        name = name.strip("/")
        if not name or name in self._dirs:
            return
        parent = os.path.dirname(name)
        if parent:
            self.dir(parent)
        self._dirs.add(name)
        self._entry(name, 0o040000 | mode, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        self.dir(os.path.dirname(name))
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        self.dir(os.path.dirname(name))
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        name = name.strip("/")
        self.dir(os.path.dirname(name))
        self._entry(name, 0o020000 | mode, rdev=(major, minor))

    def bytes(self) -> bytes:
        trailer = Cpio(first_ino=0)
        trailer._entry("TRAILER!!!", 0)
        out = b"".join(self._parts) + trailer._parts[0]
        return out + b"\0" * (-len(out) % 512)


# --------------------------------------------------------------------------
# host setup and the kernel/initramfs cache


def cache_dir() -> Path:
    return Path(os.environ.get("O2DLM_KVM_CACHE", DEFAULT_CACHE))


def ensure_host_packages(extra: Iterable[str] = ()) -> None:
    """apt-get install what is missing (only then root is needed)."""
    missing = [pkg for pkg, present in HOST_PACKAGES.items() if not present()]
    missing += [p for p in extra if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return
    if os.geteuid() != 0:
        raise KvmError(f"missing packages {missing} and not root to install them")
    _log(f"installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=600"]
    if subprocess.run(install + missing, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        res = subprocess.run(install + missing, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise KvmError(f"apt-get install {missing} failed: {res.stderr[-2000:]}")


def kernel_package_name() -> str:
    pinned = os.environ.get("O2DLM_KVM_KERNEL_PKG")
    if pinned:
        return pinned
    for attempt in range(2):
        res = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True)
        m = re.search(r"Depends: (linux-image-6\.1\.\S+-amd64)\s", res.stdout)
        if m:
            return m.group(1)
        if attempt == 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
    raise KvmError("cannot resolve linux-image-amd64 to a linux-image-6.1.*-amd64 package (apt-cache depends)")


@dataclasses.dataclass
class Kernel:
    release: str  # e.g. 6.1.0-56-amd64
    package: str  # e.g. linux-image-6.1.0-56-amd64
    version: str  # Debian version of the package
    vmlinuz: Path
    modules: List[Path]  # .ko files in load order


def ensure_kernel() -> Kernel:
    """Download and unpack the kernel package once; keep only what we use."""
    root = cache_dir()
    with _file_lock(root / ".lock"):
        pkg = kernel_package_name()
        kdir = root / pkg
        meta = kdir / "meta"
        if not meta.exists():
            _fetch_kernel(pkg, kdir)
        release, version, order = meta.read_text().split("\n", 2)
        mods = [kdir / "modules" / f"{m}.ko" for m in order.split()]
        return Kernel(release, pkg, version, kdir / "vmlinuz", mods)


def _fetch_kernel(pkg: str, kdir: Path) -> None:
    _log(f"fetching {pkg}")
    kdir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=kdir.parent, prefix=".dl-") as tmp:
        res = subprocess.run(["apt-get", "download", pkg], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob("*.deb"))
        if res.returncode != 0 or not debs:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
            res = subprocess.run(["apt-get", "download", pkg], cwd=tmp, capture_output=True, text=True)
            debs = list(Path(tmp).glob("*.deb"))
        if not debs:
            raise KvmError(f"apt-get download {pkg} failed: {res.stderr[-2000:]}")
        deb = debs[0]
        version = _run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()
        tree = Path(tmp) / "x"
        _run(["dpkg-deb", "-x", str(deb), str(tree)])
        releases = sorted(p.name for p in (tree / "lib/modules").iterdir())
        if len(releases) != 1:
            raise KvmError(f"{deb.name}: expected one module tree, found {releases}")
        release = releases[0]
        mtree = tree / "lib/modules" / release
        order = resolve_modules(mtree, WANTED_MODULES)
        staging = Path(tmp) / "keep"
        (staging / "modules").mkdir(parents=True)
        shutil.copy2(tree / "boot" / f"vmlinuz-{release}", staging / "vmlinuz")
        shutil.copy2(tree / "boot" / f"config-{release}", staging / "config")
        for name, path in order:
            _copy_module(path, staging / "modules" / f"{name}.ko")
        (staging / "meta").write_text(f"{release}\n{version}\n{' '.join(n for n, _ in order)}\n")
        if kdir.exists():
            shutil.rmtree(kdir)
        staging.rename(kdir)
    _log(f"kernel {release} ({pkg}={version}) cached in {kdir}")


def _copy_module(src: Path, dst: Path) -> None:
    if src.suffix == ".ko":
        shutil.copy2(src, dst)
    elif src.name.endswith(".ko.xz"):
        import lzma

        dst.write_bytes(lzma.decompress(src.read_bytes()))
    else:
        raise KvmError(f"unsupported module compression: {src}")


def resolve_modules(mtree: Path, wanted: Iterable[str]) -> List[Tuple[str, Path]]:
    """Modules in load order (dependencies first); built-ins are skipped."""
    files: Dict[str, Path] = {}
    for p in (mtree / "kernel").rglob("*.ko*"):
        base = p.name.split(".ko")[0].replace("-", "_")
        files.setdefault(base, p)
    builtin = set()
    bfile = mtree / "modules.builtin"
    if bfile.exists():
        for line in bfile.read_text().split():
            builtin.add(Path(line).name.split(".ko")[0].replace("-", "_"))
    order: List[Tuple[str, Path]] = []
    seen: set = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name not in files:
            if name in builtin:
                return
            raise KvmError(f"kernel module {name} neither found nor built in")
        path = files[name]
        if path.suffix != ".ko":
            with tempfile.NamedTemporaryFile(suffix=".ko") as t:
                _copy_module(path, Path(t.name))
                deps = module_depends(Path(t.name))
        else:
            deps = module_depends(path)
        for dep in deps:
            visit(dep)
        order.append((name, path))

    for name in wanted:
        visit(name)
    return order


def ensure_base_initramfs(kernel: Kernel) -> Path:
    """busybox + guest scripts + modules; cached by content."""
    busybox = Path("/bin/busybox")
    guest_files = sorted(p for p in GUEST_DIR.iterdir() if p.is_file())
    key = hashlib.sha256()
    key.update(kernel.release.encode())
    key.update(hashlib.sha256(busybox.read_bytes()).digest())
    for p in guest_files + kernel.modules:
        key.update(p.name.encode())
        key.update(hashlib.sha256(p.read_bytes()).digest())
    out = cache_dir() / f"initrd-{key.hexdigest()[:16]}.cpio"
    with _file_lock(cache_dir() / ".lock"):
        if out.exists():
            return out
        cpio = Cpio()
        for d in ("bin", "dev", "proc", "sys", "run", "tmp", "etc/o2t", "lib/modules/o2t", "dlm", "root"):
            cpio.dir(d)
        cpio.symlink("sbin", "bin")
        cpio.chardev("dev/console", 5, 1)
        cpio.chardev("dev/null", 1, 3, 0o666)
        cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
        applets = _run([str(busybox), "--list"]).stdout.split()
        for applet in applets:
            if applet != "busybox":
                cpio.symlink(f"bin/{applet}", "busybox")
        cpio.symlink("init", "bin/busybox")
        cpio.file("etc/inittab", (GUEST_DIR / "inittab").read_bytes())
        cpio.file("etc/o2t/boot", (GUEST_DIR / "boot").read_bytes(), 0o755)
        for name in ("o2t-agent", "o2t-agentd", "o2t-node"):
            cpio.file(f"bin/{name}", (GUEST_DIR / name).read_bytes(), 0o755)
        names = []
        for ko in kernel.modules:
            cpio.file(f"lib/modules/o2t/{ko.name}", ko.read_bytes())
            names.append(ko.stem)
        cpio.file("etc/o2t/modules", ("\n".join(names) + "\n").encode())
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(cpio.bytes())
        tmp.rename(out)
        _log(f"initramfs {out.name}: {out.stat().st_size // 1024} KiB, modules {' '.join(names)}")
        return out


def prepare(extra_packages: Iterable[str] = ()) -> Tuple[Kernel, Path]:
    """Everything a boot needs: host packages, kernel, base initramfs."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    ensure_host_packages(extra_packages)
    kernel = ensure_kernel()
    return kernel, ensure_base_initramfs(kernel)


# --------------------------------------------------------------------------
# host ports


def _port_free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        finally:
            s.close()
    return True


class PortBlock:
    """``count`` consecutive free 127.0.0.1 ports in 20000-29999, held by a
    lock file so two harness sessions never pick the same block."""

    def __init__(self, count: int, seed: str = "") -> None:
        self.count = count
        forced = os.environ.get("O2DLM_KVM_PORT_BASE")
        lo, hi = PORT_RANGE
        span = ((hi - lo + 1) // 32) - 1
        if forced:
            candidates = [int(forced)]
        else:
            digest = hashlib.sha256(f"{seed}:{os.getpid()}".encode()).digest()
            first = int.from_bytes(digest[:4], "little") % span
            candidates = [lo + 32 * ((first + i) % span) for i in range(span)]
        lockdir = Path(tempfile.gettempdir()) / "o2dlm-kvm-ports"
        lockdir.mkdir(exist_ok=True)
        for base in candidates:
            if count > 32 and not forced:
                raise KvmError("port block too large")
            f = open(lockdir / f"{base}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            if all(_port_free(base + i) for i in range(count)):
                self.base = base
                self._lock = f
                return
            f.close()
        raise KvmError(f"no free block of {count} ports in {PORT_RANGE}")

    def release(self) -> None:
        if getattr(self, "_lock", None):
            self._lock.close()
            self._lock = None


# --------------------------------------------------------------------------
# facts


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    num: int
    name: str
    ip: str  # o2net address as configured in configfs (guest view)
    port: int


@dataclasses.dataclass
class ClusterFacts:
    """The o2cb configuration every node (kernel or host) must share."""

    cluster_name: str = "o2kvm"
    nodes: Tuple[NodeInfo, ...] = ()
    region: str = "4F32444C4D4B564D0000000000000001"
    hb_file: Path = Path()
    block_bytes: int = 512
    start_block: int = 1  # the kernel rejects 0
    blocks: int = 255
    dead_threshold: int = 7  # heartbeat iterations of 2 s
    idle_timeout_ms: int = 10000
    keepalive_delay_ms: int = 1000
    reconnect_delay_ms: int = 1000
    fence_method: str = "reset"
    dlmfs_mount: str = "/dlm"
    o2net_protocol_version: int = 11
    heartbeat_mode: str = "local"

    @property
    def dead_ms(self) -> int:
        return self.dead_threshold * 2000

    @property
    def hb_timeout_ms(self) -> int:
        """The o2hb timeout a node announces in its o2net handshake."""
        return (self.dead_threshold - 1) * 2000

    def hb_offset(self, num: int) -> int:
        """Byte offset of node ``num``'s heartbeat block in the hb file."""
        return (self.start_block + num) * self.block_bytes

    def write_env(self, path: Path) -> Path:
        """KEY=VALUE lines of ``as_env()``, for programs that are not Python."""
        path.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(self.as_env().items())))
        return path

    def node(self, num: int) -> NodeInfo:
        for n in self.nodes:
            if n.num == num:
                return n
        raise KeyError(num)

    def as_env(self) -> Dict[str, str]:
        env = {
            "O2KVM_CLUSTER": self.cluster_name,
            "O2KVM_REGION": self.region,
            "O2KVM_HB_FILE": str(self.hb_file),
            "O2KVM_HB_BLOCK_BYTES": str(self.block_bytes),
            "O2KVM_HB_START_BLOCK": str(self.start_block),
            "O2KVM_HB_BLOCKS": str(self.blocks),
            "O2KVM_HB_DEAD_THRESHOLD": str(self.dead_threshold),
            "O2KVM_HB_DEAD_MS": str(self.dead_ms),
            "O2KVM_HB_TIMEOUT_MS": str(self.hb_timeout_ms),
            "O2KVM_IDLE_TIMEOUT_MS": str(self.idle_timeout_ms),
            "O2KVM_KEEPALIVE_DELAY_MS": str(self.keepalive_delay_ms),
            "O2KVM_RECONNECT_DELAY_MS": str(self.reconnect_delay_ms),
            "O2KVM_NODES": " ".join(f"{n.name}:{n.num}:{n.ip}:{n.port}" for n in self.nodes),
        }
        return env


@dataclasses.dataclass
class HostPeerFacts(ClusterFacts):
    """Single-VM mode: how a host process acts as the cluster's other node."""

    guest_num: int = 0
    peer_num: int = 1
    # where a host process connects to reach the guest's o2net listener
    o2net_connect_to: Tuple[str, int] = ("127.0.0.1", 0)
    # with the host as the higher-numbered node it connects; when the host is
    # the lower node, the guest connects to 10.0.2.2:peer port, which slirp
    # hands to 127.0.0.1:<that port> on the host
    peer_listen_on: Optional[Tuple[str, int]] = None

    def as_env(self) -> Dict[str, str]:
        env = super().as_env()
        env.update(
            O2KVM_GUEST_NUM=str(self.guest_num),
            O2KVM_PEER_NUM=str(self.peer_num),
            O2KVM_O2NET_CONNECT_TO="%s:%d" % self.o2net_connect_to,
            O2KVM_HB_GUEST_OFFSET=str(self.hb_offset(self.guest_num)),
            O2KVM_HB_PEER_OFFSET=str(self.hb_offset(self.peer_num)),
        )
        if self.peer_listen_on:
            env["O2KVM_PEER_LISTEN_ON"] = "%s:%d" % self.peer_listen_on
        return env


# --------------------------------------------------------------------------
# one guest


@dataclasses.dataclass
class GuestResult:
    rc: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def check(self) -> "GuestResult":
        if self.rc != 0:
            raise KvmError(f"guest command failed (rc={self.rc}): {self.output[-3000:]}")
        return self


FileSpec = Union[Path, str, bytes]

_live_vms: List["GuestVM"] = []
_live_lock = threading.Lock()


@atexit.register
def _kill_leftovers() -> None:
    # never leave a qemu behind when the test process ends
    for vm in live_vms():
        vm.kill()


def live_vms() -> List["GuestVM"]:
    """VMs started by this process and not yet stopped (for log collection)."""
    with _live_lock:
        return list(_live_vms)


class GuestVM:
    """One qemu guest: a kernel o2cb node."""

    def __init__(
        self,
        name: str,
        state: Path,
        kernel: Kernel,
        base_initrd: Path,
        config: Dict[str, str],
        agent_port: int,
        hostfwds: Sequence[str] = (),
        link: Optional[str] = None,
        link_mac: Optional[str] = None,
        hb_file: Optional[Path] = None,
        hb_shared: bool = False,
        block_bytes: int = 512,
        extra_files: Optional[Dict[str, FileSpec]] = None,
        restrict: bool = True,
        mem_mb: int = 256,
    ) -> None:
        self.name = name
        self.state = state
        self.kernel = kernel
        self.agent_port = agent_port
        self.console = state / "console.log"
        self.proc: Optional[subprocess.Popen] = None
        self._jobs = 0
        self.boot_seconds: Optional[float] = None
        state.mkdir(parents=True, exist_ok=True)

        overlay = Cpio(first_ino=1_000_000)
        text = "".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(config.items()))
        overlay.file("etc/o2t/config", text.encode())
        for guest_path, spec in (extra_files or {}).items():
            if isinstance(spec, bytes):
                data, mode = spec, 0o644
            else:
                data, mode = Path(spec).read_bytes(), 0o755
            overlay.file(guest_path, data, mode)
        initrd = state / "initrd.cpio"
        with open(initrd, "wb") as out, open(base_initrd, "rb") as base:
            shutil.copyfileobj(base, out)
            out.write(overlay.bytes())

        cache = "none" if hb_file and _odirect_ok(hb_file) else "writethrough"
        slirp = f"user,id=slirp,net={SLIRP_NET}.0/24,host={SLIRP_HOST_IP},restrict={'on' if restrict else 'off'}"
        slirp += f",hostfwd=tcp:127.0.0.1:{agent_port}-{SLIRP_GUEST_IP}:{AGENT_GUEST_PORT}"
        for fwd in hostfwds:
            slirp += f",hostfwd={fwd}"
        self.argv = [
            "qemu-system-x86_64",
            "-name", f"o2dlm-kvm-{name}",
            "-machine", "pc", "-accel", "tcg", "-m", str(mem_mb), "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none", "-no-reboot",
            "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=1 loglevel=5",
            "-serial", f"file:{self.console}",
            "-netdev", slirp,
            "-device", f"virtio-net-pci,netdev=slirp,mac={config['O2T_SLIRP_MAC']}",
        ]
        if hb_file:
            share = ",share-rw=on" if hb_shared else ""
            self.argv += [
                "-drive", f"file={hb_file},format=raw,if=none,id=hb,cache={cache}",
                "-device",
                f"virtio-blk-pci,drive=hb,serial={HB_SERIAL},logical_block_size={block_bytes},"
                f"physical_block_size={block_bytes}{share}",
            ]
        if link:
            self.argv += ["-netdev", f"{link},id=link", "-device", f"virtio-net-pci,netdev=link,mac={link_mac}"]
        (state / "qemu.argv").write_text(" ".join(shlex.quote(a) for a in self.argv) + "\n")

    # -- life cycle

    def start(self) -> None:
        self.console.unlink(missing_ok=True)
        self._t0 = time.monotonic()
        err = open(self.state / "qemu.stderr", "wb")
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True
        )
        err.close()
        with _live_lock:
            _live_vms.append(self)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: Optional[float] = None) -> float:
        """Wait for the guest's O2T-READY line; returns seconds since start."""
        if timeout is None:
            timeout = float(os.environ.get("O2DLM_KVM_BOOT_TIMEOUT", "240"))
        deadline = time.monotonic() + timeout
        while True:
            text = self.console_text()
            if READY_RE.search(text):
                break
            failed = FAILED_RE.search(text)
            if failed:
                raise KvmError(f"{self.name}: guest setup failed at {failed.group(1)}\n{text[-4000:]}")
            if not self.alive():
                err = (self.state / "qemu.stderr").read_text(errors="replace")
                raise KvmError(f"{self.name}: qemu exited ({self.proc.returncode}) during boot: {err[-2000:]}\n{text[-3000:]}")
            if time.monotonic() > deadline:
                raise KvmError(f"{self.name}: not ready after {timeout:.0f} s\n{text[-4000:]}")
            time.sleep(0.2)
        self.run("true", timeout=30).check()
        self.boot_seconds = time.monotonic() - self._t0
        return self.boot_seconds

    def stop(self, timeout: float = 30.0) -> None:
        """Clean leave (dlmfs domains, heartbeat), power off; kill if stuck."""
        if self.alive():
            try:
                self.run("/bin/o2t-node down; (sleep 0.3; poweroff -f) >/dev/null 2>&1 &", timeout=timeout)
                self.proc.wait(timeout=timeout)
            except (KvmError, subprocess.TimeoutExpired, OSError):
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL qemu: the node vanishes without a clean leave."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with _live_lock:
            if self in _live_vms:
                _live_vms.remove(self)

    # -- command channel

    def run(self, script: str, timeout: float = 120.0, tries: int = 5) -> GuestResult:
        """Run ``script`` with sh in the guest; returns status and output.

        The guest-side ``timeout`` ends the command after ``timeout`` s
        (status 143); the host waits a little longer for the answer."""
        payload = script.encode()
        head = b"O2T %d %d\n" % (len(payload), max(1, int(timeout)))
        last: Optional[Exception] = None
        for attempt in range(tries):
            if not self.alive():
                raise KvmError(f"{self.name}: qemu is not running")
            try:
                return self._request(head + payload, timeout + 15)
            except _NotRun as e:
                last = e
                time.sleep(0.3 * (attempt + 1))
        raise KvmError(f"{self.name}: command channel on port {self.agent_port} not answering: {last}")

    def _request(self, data: bytes, timeout: float) -> GuestResult:
        try:
            sock = socket.create_connection(("127.0.0.1", self.agent_port), timeout=10)
        except OSError as e:
            raise _NotRun(str(e))
        with sock:
            sock.settimeout(timeout)
            try:
                sock.sendall(data)
            except OSError as e:
                raise _NotRun(str(e))
            buf = b""
            started = False
            while True:
                try:
                    chunk = sock.recv(65536)
                except socket.timeout:
                    raise KvmError(f"{self.name}: no answer within {timeout:.0f} s")
                except OSError as e:
                    if not started:
                        raise _NotRun(str(e))
                    raise KvmError(f"{self.name}: connection lost: {e}")
                if not chunk:
                    break
                buf += chunk
                if not started and b"\x01O2T-RUN\n" in buf:
                    started = True
        if not buf.startswith(b"\x01O2T-RUN\n"):
            raise _NotRun(f"no start marker (got {buf[:60]!r})")
        rest = buf[len(b"\x01O2T-RUN\n") :]
        m = re.match(rb"\x01O2T-RC (\d+) (\d+) (\d+)\n", rest)
        if not m:
            raise KvmError(f"{self.name}: malformed answer {rest[:200]!r}")
        rc, nout, nerr = (int(x) for x in m.groups())
        body = rest[m.end() :]
        if len(body) != nout + nerr:
            raise KvmError(f"{self.name}: answer truncated ({len(body)} of {nout + nerr} bytes)")
        return GuestResult(rc, body[:nout].decode(errors="replace"), body[nout:].decode(errors="replace"))

    def spawn(self, script: str, name: Optional[str] = None) -> "GuestJob":
        """Start ``script`` in the background in its own session."""
        self._jobs += 1
        job_id = name or f"job{self._jobs}"
        d = "/tmp/o2t-jobs"
        b64 = base64.b64encode(script.encode()).decode()
        inner = f"sh {d}/{job_id}.sh >{d}/{job_id}.out 2>&1; echo $? >{d}/{job_id}.rc.new; mv {d}/{job_id}.rc.new {d}/{job_id}.rc"
        self.run(
            f"set -e\nmkdir -p {d}\nrm -f {d}/{job_id}.*\necho {b64} | base64 -d >{d}/{job_id}.sh\n"
            f"setsid sh -c {shlex.quote(inner)} </dev/null >/dev/null 2>&1 &\necho $! >{d}/{job_id}.pid\n",
            timeout=30,
        ).check()
        return GuestJob(self, job_id)

    def put_file(self, guest_path: str, spec: FileSpec, mode: int = 0o755) -> None:
        data = spec if isinstance(spec, bytes) else Path(spec).read_bytes()
        b64 = base64.b64encode(data).decode()
        q = shlex.quote(guest_path)
        self.run(f"base64 -d >{q}.new <<'O2T_EOF'\n{b64}\nO2T_EOF\nchmod {mode:o} {q}.new && mv {q}.new {q}").check()

    def dmesg(self) -> str:
        """Kernel log: from the guest, or the serial console once it is gone."""
        if self.alive():
            try:
                return self.run("dmesg", timeout=20, tries=2).stdout
            except KvmError:
                pass
        return self.console_text()


class _NotRun(Exception):
    """The request did not reach the guest's shell: safe to retry."""


class GuestJob:
    """A background command in a guest (see ``GuestVM.spawn``)."""

    def __init__(self, vm: GuestVM, job_id: str) -> None:
        self.vm = vm
        self.id = job_id
        self.path = f"/tmp/o2t-jobs/{job_id}"

    def output(self) -> str:
        return self.vm.run(f"cat {self.path}.out", timeout=20).stdout

    def returncode(self) -> Optional[int]:
        res = self.vm.run(f"cat {self.path}.rc 2>/dev/null", timeout=20)
        return int(res.stdout) if res.stdout.strip() else None

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match:
        """Poll the job's output until ``pattern`` (a regex) appears."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern, re.M)
        while True:
            res = self.vm.run(f"cat {self.path}.out; test -e {self.path}.rc", timeout=20)
            m = rx.search(res.stdout)
            if m:
                return m
            if res.rc == 0:
                raise KvmError(f"{self.vm.name}/{self.id} ended without {pattern!r}:\n{res.stdout[-3000:]}")
            if time.monotonic() > deadline:
                raise KvmError(f"{self.vm.name}/{self.id}: no {pattern!r} within {timeout:.0f} s:\n{res.stdout[-3000:]}")
            time.sleep(0.25)

    def wait(self, timeout: float = 60.0) -> GuestResult:
        deadline = time.monotonic() + timeout
        while True:
            rc = self.returncode()
            if rc is not None:
                return GuestResult(rc, self.output(), "")
            if time.monotonic() > deadline:
                raise KvmError(f"{self.vm.name}/{self.id} still running after {timeout:.0f} s:\n{self.output()[-3000:]}")
            time.sleep(0.25)

    def kill(self) -> None:
        self.vm.run(f"kill -KILL -- -$(cat {self.path}.pid) 2>/dev/null; true", timeout=20)


def _odirect_ok(path: Path) -> bool:
    """qemu cache=none needs O_DIRECT on the hb file's file system."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
    except OSError:
        return False
    os.close(fd)
    return True


def _make_hb_file(path: Path, facts: ClusterFacts) -> None:
    size = (facts.start_block + facts.blocks) * facts.block_bytes
    size = (size + 4095) // 4096 * 4096
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(0)
        f.write(b"\0" * size)


def _guest_config(facts: ClusterFacts, local: NodeInfo, slirp_mac: str, autostart: bool) -> Dict[str, str]:
    return {
        "O2T_CLUSTER": facts.cluster_name,
        "O2T_LOCAL": local.name,
        "O2T_NODES": " ".join(f"{n.name}:{n.num}:{n.ip}:{n.port}" for n in facts.nodes),
        "O2T_KEEPALIVE_MS": str(facts.keepalive_delay_ms),
        "O2T_IDLE_MS": str(facts.idle_timeout_ms),
        "O2T_RECONNECT_MS": str(facts.reconnect_delay_ms),
        "O2T_FENCE": facts.fence_method,
        "O2T_DEAD_THRESHOLD": str(facts.dead_threshold),
        "O2T_REGION": facts.region,
        "O2T_BLOCK_BYTES": str(facts.block_bytes),
        "O2T_START_BLOCK": str(facts.start_block),
        "O2T_BLOCKS": str(facts.blocks),
        "O2T_HB_SERIAL": HB_SERIAL,
        "O2T_DLMFS": facts.dlmfs_mount,
        "O2T_AUTOSTART": "1" if autostart else "0",
        "O2T_AGENT_PORT": str(AGENT_GUEST_PORT),
        "O2T_SLIRP_MAC": slirp_mac,
        "O2T_SLIRP_IP": SLIRP_GUEST_IP,
        "O2T_SLIRP_GW": SLIRP_HOST_IP,
    }


# --------------------------------------------------------------------------
# (a) one kernel node + a host peer


class SingleVM:
    def __init__(self, vm: GuestVM, facts: HostPeerFacts, ports: PortBlock) -> None:
        self.vm = vm
        self.facts = facts
        self._ports = ports

    def stop(self) -> None:
        self.vm.stop()
        self._ports.release()

    def kill(self) -> None:
        self.vm.kill()
        self._ports.release()


def boot_single_vm(
    state: Path,
    seed: str = "",
    extra_files: Optional[Dict[str, FileSpec]] = None,
    guest_num: int = 0,
    peer_num: int = 1,
    autostart: bool = True,
    **fact_overrides,
) -> SingleVM:
    """Boot kernel node ``guest_num``; node ``peer_num`` is left for a host
    process (its hb slot in ``facts.hb_file``, its o2net at
    ``facts.o2net_connect_to`` or, when it is the lower number, listening on
    ``facts.peer_listen_on``)."""
    if guest_num == peer_num:
        raise KvmError("guest and peer need different node numbers")
    kernel, base = prepare()
    ports = PortBlock(PORTS_PER_VM, seed)
    try:
        fwd_port = ports.base + PORT_O2NET
        peer_port = O2NET_PORT
        listen = None
        if peer_num < guest_num:
            # the guest connects out to the peer: slirp maps 10.0.2.2:P to the
            # host's 127.0.0.1:P, so the peer's configured port is a host port
            peer_port = ports.base + PORT_LINK
            listen = ("127.0.0.1", peer_port)
        nodes = sorted(
            (NodeInfo(guest_num, f"kvm{guest_num}", SLIRP_GUEST_IP, O2NET_PORT),
             NodeInfo(peer_num, f"host{peer_num}", SLIRP_HOST_IP, peer_port)),
            key=lambda n: n.num,
        )
        facts = HostPeerFacts(
            nodes=tuple(nodes), hb_file=state / "hb.img", guest_num=guest_num, peer_num=peer_num,
            o2net_connect_to=("127.0.0.1", fwd_port), peer_listen_on=listen, **fact_overrides,
        )
        _make_hb_file(facts.hb_file, facts)
        local = facts.node(guest_num)
        vm = GuestVM(
            "single", state / "vm", kernel, base,
            _guest_config(facts, local, "52:54:00:4b:56:01", autostart),
            agent_port=ports.base + PORT_AGENT,
            hostfwds=[f"tcp:127.0.0.1:{fwd_port}-{SLIRP_GUEST_IP}:{O2NET_PORT}"],
            hb_file=facts.hb_file, block_bytes=facts.block_bytes, extra_files=extra_files,
            # the guest only needs to reach out when it is the connecting node
            restrict=guest_num < peer_num,
        )
        vm.start()
        try:
            secs = vm.wait_ready()
        except BaseException:
            vm.kill()
            raise
        facts.write_env(state / "facts.env")
        _log(f"single VM ready in {secs:.1f} s (agent 127.0.0.1:{vm.agent_port}, o2net 127.0.0.1:{fwd_port})")
        return SingleVM(vm, facts, ports)
    except BaseException:
        ports.release()
        raise


# --------------------------------------------------------------------------
# (b) a cluster of kernel nodes


@dataclasses.dataclass
class ClusterWithHostFacts(ClusterFacts):
    """Cluster mode with an extra node for a host process (the highest
    number, so it is the side that opens every o2net connection)."""

    host_num: Optional[int] = None
    # kernel node number -> where a host process connects to reach it
    o2net_connect_to: Dict[int, Tuple[str, int]] = dataclasses.field(default_factory=dict)

    def as_env(self) -> Dict[str, str]:
        env = super().as_env()
        if self.host_num is not None:
            env["O2KVM_HOST_NUM"] = str(self.host_num)
            env["O2KVM_HB_HOST_OFFSET"] = str(self.hb_offset(self.host_num))
        for num, (h, p) in sorted(self.o2net_connect_to.items()):
            env[f"O2KVM_O2NET_CONNECT_TO_NODE{num}"] = f"{h}:{p}"
        return env


class KernelCluster:
    def __init__(self, vms: List[GuestVM], facts: ClusterFacts, ports: PortBlock) -> None:
        self.vms = vms
        self.facts = facts
        self._ports = ports

    def __getitem__(self, i: int) -> GuestVM:
        return self.vms[i]

    def stop(self) -> None:
        # highest node first: the survivors keep quorum (lowest node lives)
        for vm in reversed(self.vms):
            vm.stop()
        self._ports.release()

    def kill(self) -> None:
        for vm in self.vms:
            vm.kill()
        self._ports.release()


def boot_cluster(
    state: Path,
    n: int = 2,
    seed: str = "",
    extra_files: Optional[Dict[str, FileSpec]] = None,
    connect_timeout: float = 120.0,
    host_node: bool = False,
    **fact_overrides,
) -> KernelCluster:
    """Boot kernel nodes 0..n-1 (n = 2 here: a direct point-to-point link).

    With ``host_node``, node n (name ``host<n>``, address 10.0.2.2, which is
    where forwarded host connections come from in every guest) is in every
    node table for a host process; ``facts.o2net_connect_to[k]`` is where it
    reaches kernel node k, and its heartbeat slot is ``facts.hb_offset(n)``."""
    if n != 2:
        raise KvmError("only 2-node clusters are wired (a direct UDP link)")
    kernel, base = prepare()
    ports = PortBlock(PORTS_PER_VM * n, seed)
    vms: List[GuestVM] = []
    try:
        kernel_nodes = tuple(NodeInfo(i, f"kvm{i}", f"{LINK_NET}.{i + 1}", O2NET_PORT) for i in range(n))
        nodes = kernel_nodes
        if host_node:
            nodes += (NodeInfo(n, f"host{n}", SLIRP_HOST_IP, O2NET_PORT),)

        def port(i: int, which: int) -> int:
            return ports.base + PORTS_PER_VM * i + which

        facts = ClusterWithHostFacts(
            nodes=nodes, hb_file=state / "hb.img", host_num=n if host_node else None,
            o2net_connect_to={i: ("127.0.0.1", port(i, PORT_O2NET)) for i in range(n)} if host_node else {},
            **fact_overrides,
        )
        _make_hb_file(facts.hb_file, facts)

        for i, node in enumerate(kernel_nodes):
            other = 1 - i
            link = (
                f"dgram,local.type=inet,local.host=127.0.0.1,local.port={port(i, PORT_LINK)},"
                f"remote.type=inet,remote.host=127.0.0.1,remote.port={port(other, PORT_LINK)}"
            )
            cfg = _guest_config(facts, node, f"52:54:00:4b:56:{0x10 + i:02x}", True)
            cfg["O2T_LINK_MAC"] = f"52:54:00:4b:4c:{0x10 + i:02x}"
            cfg["O2T_LINK_IP"] = node.ip
            vms.append(
                GuestVM(
                    f"node{i}", state / f"node{i}", kernel, base, cfg,
                    agent_port=port(i, PORT_AGENT),
                    # o2net of each node, for a future host node
                    hostfwds=[f"tcp:127.0.0.1:{port(i, PORT_O2NET)}-{node.ip}:{O2NET_PORT}"],
                    link=link, link_mac=cfg["O2T_LINK_MAC"],
                    hb_file=facts.hb_file, hb_shared=True, block_bytes=facts.block_bytes,
                    extra_files=extra_files,
                )
            )
        for vm in vms:
            vm.start()
        for vm in vms:
            secs = vm.wait_ready()
            _log(f"{vm.name} ready in {secs:.1f} s (agent 127.0.0.1:{vm.agent_port})")
        _wait_connected(vms, kernel_nodes, connect_timeout)
        facts.write_env(state / "facts.env")
        return KernelCluster(vms, facts, ports)
    except BaseException:
        for vm in vms:
            vm.kill()
        ports.release()
        raise


def _wait_connected(vms: List[GuestVM], nodes: Sequence[NodeInfo], timeout: float) -> None:
    """Until every node's o2net lists every other node as connected."""
    deadline = time.monotonic() + timeout
    pending = list(range(len(vms)))
    while pending:
        i = pending[0]
        want = {n.num for n in nodes if n.num != nodes[i].num}
        res = vms[i].run("cat /sys/kernel/debug/o2net/connected_nodes", timeout=20)
        have = {int(x) for x in res.stdout.split() if x.isdigit()}
        if want <= have:
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            raise KvmError(f"{vms[i].name}: o2net connected to {sorted(have)}, want {sorted(want)}")
        time.sleep(0.5)
