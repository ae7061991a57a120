//! Socket driver for [`crate::net::Net`]: one thread, non-blocking sockets
//! and poll(2).
//!
//! The thread owns the `Net`, the listener and every connection. Other
//! threads talk to it through a [`NetHandle`] (a command channel plus a
//! wake-up socket pair). Events of the `Net` are handed to a callback on
//! the driver thread, in order — or to a [`NetApp`], a layer that runs on
//! the driver thread itself with the `Net` at hand, so that a request can
//! be handled and answered without any thread hop (the engine's DLM).

use crate::net::{
    ConnId, IncomingRequest, Input, IoAction, LinkState, Net, NetConfig, NetEvent, RegisterError,
    ReplyToken, RequestId, SendError,
};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// o2net's TCP_USER_TIMEOUT: unacknowledged data never kills the socket;
/// liveness is heartbeat's business.
const TCP_USER_TIMEOUT_MS: libc::c_int = 0x7FFF_FFFF;
/// Bytes read per read(2).
const READ_CHUNK: usize = 64 * 1024;
/// Reads per socket per wake-up, so one busy peer cannot starve the rest.
const READS_PER_WAKE: usize = 16;

enum Cmd {
    NodeUp(u8),
    NodeDown(u8),
    Register {
        msg_type: u16,
        key: u32,
        max_len: u32,
        resp: mpsc::SyncSender<Result<(), RegisterError>>,
    },
    Unregister {
        msg_type: u16,
        key: u32,
        resp: mpsc::SyncSender<bool>,
    },
    Send {
        node: u8,
        msg_type: u16,
        key: u32,
        payload: Vec<u8>,
        resp: mpsc::SyncSender<Result<RequestId, SendError>>,
    },
    Reply {
        token: ReplyToken,
        status: i32,
    },
    Links {
        resp: mpsc::SyncSender<Vec<(u8, LinkState)>>,
    },
    Stop,
}

/// A layer run on the driver thread, given the `Net` to send and reply
/// through directly. Other threads hand it work through their own shared
/// state and [`NetHandle::wake`].
pub trait NetApp: Send {
    /// One event of the `Net`, in order.
    fn on_event(&mut self, net: &mut Net, e: NetEvent);
    /// Called on every turn of the driver loop (after a wake-up, a timer
    /// or socket activity).
    fn on_wake(&mut self, net: &mut Net, now: Instant);
    /// When `on_wake` must run next at the latest.
    fn poll_timeout(&mut self) -> Option<Instant>;
}

/// The plain-callback flavour of [`NetApp`].
struct Callback(Box<dyn FnMut(NetEvent) + Send>);

impl NetApp for Callback {
    fn on_event(&mut self, _net: &mut Net, e: NetEvent) {
        (self.0)(e)
    }
    fn on_wake(&mut self, _net: &mut Net, _now: Instant) {}
    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }
}

/// Talks to the driver thread from anywhere. Cheap to clone.
#[derive(Clone)]
pub struct NetHandle {
    tx: mpsc::Sender<Cmd>,
    waker: Arc<UnixStream>,
}

impl NetHandle {
    fn cmd(&self, c: Cmd) -> bool {
        if self.tx.send(c).is_err() {
            return false;
        }
        // A full wake-up buffer already guarantees a wake-up.
        let _ = (&*self.waker).write(&[1]);
        true
    }

    /// Makes the driver thread run a turn of its loop (and so
    /// `NetApp::on_wake`) soon.
    pub fn wake(&self) {
        // A full wake-up buffer already guarantees a wake-up.
        let _ = (&*self.waker).write(&[1]);
    }

    /// Heartbeat saw `node` come up.
    pub fn node_up(&self, node: u8) {
        self.cmd(Cmd::NodeUp(node));
    }

    /// Heartbeat declared `node` dead.
    pub fn node_down(&self, node: u8) {
        self.cmd(Cmd::NodeDown(node));
    }

    /// See [`Net::register_handler`]. Requests arrive as
    /// `NetEvent::Request` through the driver's event callback.
    pub fn register_handler(
        &self,
        msg_type: u16,
        key: u32,
        max_len: u32,
    ) -> Result<(), RegisterError> {
        let (resp, rx) = mpsc::sync_channel(1);
        if !self.cmd(Cmd::Register {
            msg_type,
            key,
            max_len,
            resp,
        }) {
            return Err(RegisterError::Stopped);
        }
        rx.recv().unwrap_or(Err(RegisterError::Stopped))
    }

    pub fn unregister_handler(&self, msg_type: u16, key: u32) -> bool {
        let (resp, rx) = mpsc::sync_channel(1);
        self.cmd(Cmd::Unregister {
            msg_type,
            key,
            resp,
        }) && rx.recv().unwrap_or(false)
    }

    /// See [`Net::send_request`]; the result comes as
    /// `NetEvent::Response` with the returned id.
    pub fn send_request(
        &self,
        node: u8,
        msg_type: u16,
        key: u32,
        payload: &[u8],
    ) -> Result<RequestId, SendError> {
        let (resp, rx) = mpsc::sync_channel(1);
        if !self.cmd(Cmd::Send {
            node,
            msg_type,
            key,
            payload: payload.to_vec(),
            resp,
        }) {
            return Err(SendError::Stopped);
        }
        rx.recv().unwrap_or(Err(SendError::Stopped))
    }

    /// Answers a request received as `NetEvent::Request`.
    pub fn reply(&self, token: ReplyToken, status: i32) {
        self.cmd(Cmd::Reply { token, status });
    }

    /// Convenience: answer `req` (consumes it).
    pub fn reply_to(&self, req: IncomingRequest, status: i32) {
        self.reply(req.token, status);
    }

    /// The state of every peer's link; empty once the driver stopped.
    pub fn links(&self) -> Vec<(u8, LinkState)> {
        let (resp, rx) = mpsc::sync_channel(1);
        if !self.cmd(Cmd::Links { resp }) {
            return Vec::new();
        }
        rx.recv().unwrap_or_default()
    }
}

/// The running driver thread.
pub struct NetDriver {
    handle: NetHandle,
    thread: Option<JoinHandle<()>>,
    local: SocketAddrV4,
}

impl NetDriver {
    /// Binds the listener on our configured address and port (so that a
    /// port clash is reported here) and starts the thread.
    pub fn start(
        cfg: NetConfig,
        on_event: Box<dyn FnMut(NetEvent) + Send>,
    ) -> io::Result<NetDriver> {
        Self::start_app(cfg, Box::new(Callback(on_event)))
    }

    /// Like `start`, with a layer that runs on the driver thread.
    pub fn start_app(cfg: NetConfig, app: Box<dyn NetApp>) -> io::Result<NetDriver> {
        let me = cfg.local_node().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "local node not configured")
        })?;
        let local = SocketAddrV4::new(me.ip, me.port);
        let net = Net::new(cfg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // std sets SO_REUSEADDR on listeners, as the kernel does.
        let listener = TcpListener::bind(local)
            .map_err(|e| io::Error::new(e.kind(), format!("o2net listen on {local}: {e}")))?;
        listener.set_nonblocking(true)?;
        let (wake_rx, wake_tx) = UnixStream::pair()?;
        wake_rx.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        let (tx, cmds) = mpsc::channel();
        log::info!("o2net: listening on {local}");
        let mut w = Worker {
            net,
            listener,
            wake_rx,
            cmds,
            socks: HashMap::new(),
            dirty: Vec::new(),
            app,
            buf: vec![0u8; READ_CHUNK],
        };
        let thread = std::thread::Builder::new()
            .name("o2net".into())
            .spawn(move || w.run())?;
        Ok(NetDriver {
            handle: NetHandle {
                tx,
                waker: Arc::new(wake_tx),
            },
            thread: Some(thread),
            local,
        })
    }

    pub fn handle(&self) -> NetHandle {
        self.handle.clone()
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local
    }

    /// Closes every connection and the listener, then joins the thread.
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(t) = self.thread.take() {
            self.handle.cmd(Cmd::Stop);
            let _ = t.join();
        }
    }
}

impl Drop for NetDriver {
    fn drop(&mut self) {
        self.finish();
    }
}

struct Sock {
    conn: ConnId,
    node: u8,
    stream: TcpStream,
    connecting: bool,
    out: Vec<u8>,
}

struct Worker {
    net: Net,
    listener: TcpListener,
    wake_rx: UnixStream,
    cmds: mpsc::Receiver<Cmd>,
    socks: HashMap<ConnId, Sock>,
    /// Connections with queued bytes not yet written this turn.
    dirty: Vec<ConnId>,
    app: Box<dyn NetApp>,
    buf: Vec<u8>,
}

impl Worker {
    fn run(&mut self) {
        loop {
            if !self.commands() {
                break;
            }
            let now = Instant::now();
            if self.net.poll_timeout().is_some_and(|t| t <= now) {
                self.net.handle_timeout(now);
            }
            self.flush();
            self.app.on_wake(&mut self.net, now);
            self.flush();

            let deadline = match (self.net.poll_timeout(), self.app.poll_timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout_ms = match deadline {
                None => 1000,
                Some(t) => {
                    let d = t.saturating_duration_since(Instant::now());
                    // Round up so we do not wake just before the deadline.
                    (d.as_micros().div_ceil(1000)).min(1000) as libc::c_int
                }
            };
            let mut fds: Vec<libc::pollfd> = Vec::with_capacity(2 + self.socks.len());
            let mut ids: Vec<ConnId> = Vec::with_capacity(self.socks.len());
            fds.push(pollfd(self.wake_rx.as_raw_fd(), libc::POLLIN));
            fds.push(pollfd(self.listener.as_raw_fd(), libc::POLLIN));
            for s in self.socks.values() {
                let mut ev = libc::POLLIN;
                if s.connecting || !s.out.is_empty() {
                    ev |= libc::POLLOUT;
                }
                fds.push(pollfd(s.stream.as_raw_fd(), ev));
                ids.push(s.conn);
            }
            // SAFETY: `fds` is a valid, initialised array of `fds.len()`
            // pollfd structures that lives across the call.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("o2net: poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            if fds[0].revents != 0 {
                let mut b = [0u8; 64];
                while matches!((&self.wake_rx).read(&mut b), Ok(n) if n > 0) {}
            }
            if fds[1].revents != 0 {
                self.accept_all();
            }
            for (i, id) in ids.iter().enumerate() {
                let re = fds[i + 2].revents;
                if re != 0 {
                    self.ready(*id, re);
                }
            }
        }
        for (_, s) in self.socks.drain() {
            let _ = s.stream.shutdown(Shutdown::Both);
        }
        log::info!("o2net: stopped");
    }

    /// Applies queued commands; false when asked to stop.
    fn commands(&mut self) -> bool {
        loop {
            let cmd = match self.cmds.try_recv() {
                Ok(c) => c,
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            };
            let now = Instant::now();
            match cmd {
                Cmd::Stop => return false,
                Cmd::NodeUp(n) => self.net.handle_event(now, Input::NodeUp(n)),
                Cmd::NodeDown(n) => self.net.handle_event(now, Input::NodeDown(n)),
                Cmd::Register {
                    msg_type,
                    key,
                    max_len,
                    resp,
                } => {
                    let _ = resp.send(self.net.register_handler(msg_type, key, max_len));
                }
                Cmd::Unregister {
                    msg_type,
                    key,
                    resp,
                } => {
                    let _ = resp.send(self.net.unregister_handler(msg_type, key));
                }
                Cmd::Send {
                    node,
                    msg_type,
                    key,
                    payload,
                    resp,
                } => {
                    let _ = resp.send(self.net.send_request(node, msg_type, key, &payload));
                }
                Cmd::Reply { token, status } => self.net.reply(token, status),
                Cmd::Links { resp } => {
                    let v = self
                        .net
                        .config()
                        .nodes
                        .iter()
                        .filter(|n| n.number != self.net.config().local)
                        .map(|n| (n.number, self.net.link_state(n.number)))
                        .collect();
                    let _ = resp.send(v);
                }
            }
            self.flush();
        }
    }

    /// Drains everything the `Net` wants done, until it wants nothing.
    fn flush(&mut self) {
        loop {
            let mut progress = false;
            while let Some(t) = self.net.poll_transmit() {
                progress = true;
                if let Some(s) = self.socks.get_mut(&t.conn) {
                    s.out.extend_from_slice(&t.data);
                    if !s.connecting && !self.dirty.contains(&t.conn) {
                        self.dirty.push(t.conn);
                    }
                }
            }
            while let Some(a) = self.net.poll_io() {
                progress = true;
                match a {
                    IoAction::Connect {
                        conn,
                        node,
                        local,
                        remote,
                    } => match connect_from(local, remote) {
                        Ok(stream) => {
                            self.socks.insert(
                                conn,
                                Sock {
                                    conn,
                                    node,
                                    stream,
                                    connecting: true,
                                    out: Vec::new(),
                                },
                            );
                        }
                        Err(e) => {
                            let why = format!("{e}");
                            self.net
                                .handle_event(Instant::now(), Input::ConnectFailed(conn, &why));
                        }
                    },
                    IoAction::Close { conn, node } => {
                        if let Some(mut s) = self.socks.remove(&conn) {
                            log::debug!("o2net: closing connection {conn} of node {node}");
                            // Best effort: what was queued before the close
                            // (e.g. our handshake) still goes out first.
                            if !s.connecting && !s.out.is_empty() {
                                let _ = write_out(&mut s);
                            }
                            let _ = s.stream.shutdown(Shutdown::Both);
                        }
                    }
                }
            }
            while let Some(e) = self.net.poll_event() {
                progress = true;
                self.app.on_event(&mut self.net, e);
            }
            if progress {
                continue;
            }
            // Everything this turn produced (a reply and the next request,
            // say) goes out in one write per socket: on a loaded machine
            // each write to loopback can cost a context switch.
            let mut failed: Vec<(ConnId, String)> = Vec::new();
            let mut dirty = std::mem::take(&mut self.dirty);
            for conn in dirty.drain(..) {
                if let Some(s) = self.socks.get_mut(&conn) {
                    if !s.connecting && !s.out.is_empty() {
                        if let Err(e) = write_out(s) {
                            failed.push((conn, format!("write failed: {e}")));
                        }
                    }
                }
            }
            self.dirty = dirty;
            if failed.is_empty() {
                break;
            }
            for (conn, why) in failed {
                self.net
                    .handle_event(Instant::now(), Input::Closed(conn, &why));
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            let (stream, addr) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("o2net: accept failed: {e}");
                    return;
                }
            };
            let SocketAddr::V4(from) = addr else {
                log::warn!("o2net: refused a non-IPv4 connection from {addr}");
                continue;
            };
            if let Err(e) = tune(&stream) {
                log::warn!("o2net: cannot set up the socket from {from}: {e}");
                continue;
            }
            match self.net.accept(Instant::now(), from) {
                Ok((node, conn)) => {
                    self.socks.insert(
                        conn,
                        Sock {
                            conn,
                            node,
                            stream,
                            connecting: false,
                            out: Vec::new(),
                        },
                    );
                }
                // Net logged why; dropping the stream closes it unanswered.
                Err(_) => drop(stream),
            }
            self.flush();
        }
    }

    fn ready(&mut self, id: ConnId, revents: libc::c_short) {
        let Some(s) = self.socks.get_mut(&id) else {
            return;
        };
        if s.connecting {
            if revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) == 0 {
                return;
            }
            let outcome = match s.stream.take_error() {
                Ok(Some(e)) | Err(e) => Err(e),
                Ok(None) => s.stream.peer_addr().map(|_| ()),
            };
            match outcome {
                Ok(()) => {
                    s.connecting = false;
                    log::debug!("o2net: connection {id} to node {} is up", s.node);
                    self.net.handle_event(Instant::now(), Input::Connected(id));
                }
                Err(e) => {
                    let why = e.to_string();
                    self.net
                        .handle_event(Instant::now(), Input::ConnectFailed(id, &why));
                }
            }
            self.flush();
            return;
        }
        if revents & libc::POLLOUT != 0 && !s.out.is_empty() {
            if let Err(e) = write_out(s) {
                let why = format!("write failed: {e}");
                self.net
                    .handle_event(Instant::now(), Input::Closed(id, &why));
                self.flush();
                return;
            }
        }
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
            return;
        }
        for _ in 0..READS_PER_WAKE {
            let Some(s) = self.socks.get_mut(&id) else {
                return;
            };
            match s.stream.read(&mut self.buf) {
                Ok(0) => {
                    self.net
                        .handle_event(Instant::now(), Input::Closed(id, "end of file"));
                    self.flush();
                    return;
                }
                Ok(n) => {
                    self.net
                        .handle_event(Instant::now(), Input::Data(id, &self.buf[..n]));
                    self.flush();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let why = e.to_string();
                    self.net
                        .handle_event(Instant::now(), Input::Closed(id, &why));
                    self.flush();
                    return;
                }
            }
        }
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Writes as much of the queue as the socket takes now.
fn write_out(s: &mut Sock) -> io::Result<()> {
    let mut done = 0;
    let res = loop {
        if done == s.out.len() {
            break Ok(());
        }
        match s.stream.write(&s.out[done..]) {
            Ok(0) => break Err(io::Error::new(io::ErrorKind::WriteZero, "wrote nothing")),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        }
    };
    s.out.drain(..done);
    res
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `v` is a live c_int and we pass its exact size; the kernel
    // only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Non-blocking, TCP_NODELAY and o2net's TCP_USER_TIMEOUT.
fn tune(stream: &TcpStream) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    stream.set_nodelay(true)?;
    setsockopt_int(
        stream.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        TCP_USER_TIMEOUT_MS,
    )
}

/// Starts a non-blocking connect from `local` (ephemeral port) to
/// `remote`. Peers identify us by source address, so binding to our
/// configured address first is required.
pub fn connect_from(local: Ipv4Addr, remote: SocketAddrV4) -> io::Result<TcpStream> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let me = sockaddr(SocketAddrV4::new(local, 0));
    // SAFETY: `me` is a valid sockaddr_in and we pass its size.
    let rc = unsafe {
        libc::bind(
            fd,
            (&me as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("bind to {local}: {e}")));
    }
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    setsockopt_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        TCP_USER_TIMEOUT_MS,
    )?;
    let them = sockaddr(remote);
    // SAFETY: `them` is a valid sockaddr_in and we pass its size.
    let rc = unsafe {
        libc::connect(
            fd,
            (&them as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(TcpStream::from(owned))
}

/// Blocking variant of [`connect_from`] with a timeout (tests and tools).
pub fn connect_from_blocking(
    local: Ipv4Addr,
    remote: SocketAddrV4,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let s = connect_from(local, remote)?;
    let mut fds = [pollfd(s.as_raw_fd(), libc::POLLOUT)];
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd, length 1.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if rc == 0 {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
    }
    if let Some(e) = s.take_error()? {
        return Err(e);
    }
    s.peer_addr()?;
    s.set_nonblocking(false)?;
    Ok(s)
}
