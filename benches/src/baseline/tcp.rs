//! Loopback TCP ping-pong of 24 bytes between two processes: the physical
//! floor for anything that needs one message and its answer.

use crate::cpu::{self, Placement};
use crate::procs::Server;
use crate::report::Outcome;
use crate::stats::Latencies;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const MSG_LEN: usize = 24;

pub struct TcpConfig {
    pub placement: Placement,
    pub warmup: usize,
    pub samples: usize,
}

/// Round-trip latencies, or why there are none.
pub fn ping_pong(cfg: &TcpConfig) -> Result<Latencies, Outcome> {
    let (client_cpu, server_cpu) = match (cfg.placement.client_cpu(), cfg.placement.server_cpu()) {
        (Ok(c), Ok(s)) => (c, s),
        (Err(e), _) | (_, Err(e)) => return Err(Outcome::Unavailable(e.to_string())),
    };
    let failed = |what: &str, e: std::io::Error| Outcome::Failed(format!("{what}: {e}"));
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| failed("bind", e))?;
    let port = listener.local_addr().map_err(|e| failed("bind", e))?.port();
    let exe = std::env::current_exe().map_err(|e| failed("current_exe", e))?;
    let mut cmd = Command::new(exe);
    cmd.args(["__echo", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cpu::pin_command(&mut cmd, server_cpu);
    let mut echo = Server::new("echo", cmd.spawn().map_err(|e| failed("spawn echo", e))?);
    listener
        .set_nonblocking(true)
        .map_err(|e| failed("listen", e))?;
    let end = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < end => {
                echo.check_running().map_err(Outcome::Failed)?;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(failed("accept", e)),
        }
    };
    let (warmup, samples) = (cfg.warmup, cfg.samples);
    let measured = std::thread::spawn(move || -> std::io::Result<Vec<u64>> {
        cpu::pin_current_thread(client_cpu)?;
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        let mut s = stream;
        let mut buf = [0u8; MSG_LEN];
        let mut out = Vec::with_capacity(samples);
        for i in 0..warmup + samples {
            buf[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let t0 = Instant::now();
            s.write_all(&buf)?;
            s.read_exact(&mut buf)?;
            let dt = t0.elapsed().as_nanos() as u64;
            if i >= warmup {
                out.push(dt);
            }
        }
        Ok(out)
    })
    .join();
    echo.stop(Duration::from_secs(2));
    match measured {
        Ok(Ok(v)) => Ok(Latencies::new(v)),
        Ok(Err(e)) => Err(failed("ping-pong", e)),
        Err(_) => Err(Outcome::Failed("ping-pong thread panicked".into())),
    }
}

/// The echo process (`o2dlm-bench __echo PORT`): sends every 24-byte
/// message back until the connection closes.
pub fn echo_main(port: &str) -> std::process::ExitCode {
    let Ok(port) = port.parse::<u16>() else {
        return std::process::ExitCode::from(2);
    };
    let Ok(mut s) = TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)) else {
        return std::process::ExitCode::from(1);
    };
    let _ = s.set_nodelay(true);
    let mut buf = [0u8; MSG_LEN];
    while s.read_exact(&mut buf).is_ok() {
        if s.write_all(&buf).is_err() {
            break;
        }
    }
    std::process::ExitCode::SUCCESS
}
