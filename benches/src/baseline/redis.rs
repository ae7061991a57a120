//! Redis as a lock service: `SET key token NX PX 30000` to lock, `DEL key`
//! to unlock (the pattern most users write), over RESP on a plain socket.

use super::{LockClient, ServiceConfig, ServiceResult};
use crate::cpu;
use crate::procs::{self, Server, TempDir};
use crate::report::Outcome;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Starts a private redis-server (loopback, free port, no persistence),
/// measures, stops it.
pub fn measure(cfg: &ServiceConfig) -> ServiceResult {
    match run(cfg) {
        Ok(r) => r,
        Err(why) => ServiceResult::unavailable(&why),
    }
}

fn run(cfg: &ServiceConfig) -> Result<ServiceResult, Outcome> {
    let Some(bin) = procs::which("redis-server") else {
        return Err(Outcome::Unavailable(
            "redis-server not installed (apt-get install redis-server)".into(),
        ));
    };
    let (client_cpu, server_cpu) = match (cfg.placement.client_cpu(), cfg.placement.server_cpu()) {
        (Ok(c), Ok(s)) => (c, s),
        (Err(e), _) | (_, Err(e)) => return Err(Outcome::Unavailable(e.to_string())),
    };
    let fail =
        |what: &str, e: &dyn std::fmt::Display| Outcome::Failed(format!("redis {what}: {e}"));
    let dir = TempDir::new("redis").map_err(|e| fail("temp dir", &e))?;
    let port = procs::free_port().map_err(|e| fail("port", &e))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args([
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            "",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cpu::pin_command(&mut cmd, server_cpu);
    let mut server = Server::new("redis-server", cmd.spawn().map_err(|e| fail("spawn", &e))?);
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    // Wait until it answers PING.
    let mut probe = RedisClient::connect(addr, "probe").map_err(|e| {
        let _ = server.check_running();
        fail("connect", &e)
    })?;
    probe.command(&[b"PING"]).map_err(|e| fail("PING", &e))?;
    let latency = super::measure_latency(
        Box::new(RedisClient::connect(addr, "lat").map_err(|e| fail("connect", &e))?),
        client_cpu,
        cfg.warmup,
        cfg.samples,
    );
    let mut clients: Vec<Box<dyn LockClient>> = Vec::new();
    for i in 0..cfg.clients {
        let c = RedisClient::connect(addr, &format!("tp{i}")).map_err(|e| fail("connect", &e))?;
        clients.push(Box::new(c));
    }
    let throughput = super::measure_throughput(clients, client_cpu, cfg.duration);
    // SHUTDOWN NOSAVE ends it at once; the drop below reaps it either way.
    let _ = probe.send(&[b"SHUTDOWN", b"NOSAVE"]);
    server.stop(Duration::from_secs(3));
    Ok(ServiceResult {
        latency,
        throughput,
    })
}

struct RedisClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    key: Vec<u8>,
    token: Vec<u8>,
    line: String,
}

impl RedisClient {
    fn connect(addr: SocketAddrV4, name: &str) -> std::io::Result<RedisClient> {
        let s = procs::connect_retry(addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(RedisClient {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
            key: format!("o2dlm-bench:lock:{name}").into_bytes(),
            token: format!("{}:{name}", std::process::id()).into_bytes(),
            line: String::new(),
        })
    }

    /// Sends one command as a RESP array of bulk strings.
    fn send(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
        let mut msg = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            msg.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            msg.extend_from_slice(a);
            msg.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&msg)
    }

    /// Sends and returns the first reply line (without CRLF). Bulk replies
    /// are read in full so the stream stays in step.
    fn command(&mut self, args: &[&[u8]]) -> Result<String, String> {
        self.send(args).map_err(|e| e.to_string())?;
        self.line.clear();
        self.reader
            .read_line(&mut self.line)
            .map_err(|e| e.to_string())?;
        let reply = self.line.trim_end().to_string();
        if let Some(len) = reply.strip_prefix('$') {
            if let Ok(n) = len.parse::<usize>() {
                let mut body = vec![0u8; n + 2];
                std::io::Read::read_exact(&mut self.reader, &mut body)
                    .map_err(|e| e.to_string())?;
            }
        }
        if reply.starts_with('-') {
            return Err(format!("redis error {reply}"));
        }
        Ok(reply)
    }
}

impl LockClient for RedisClient {
    fn lock(&mut self) -> Result<(), String> {
        let (key, token) = (self.key.clone(), self.token.clone());
        let r = self.command(&[b"SET", &key, &token, b"NX", b"PX", b"30000"])?;
        // "+OK" = acquired; "$-1" (nil) = someone holds it, which cannot
        // happen with one client per key: report it rather than spin.
        if r == "+OK" {
            Ok(())
        } else {
            Err(format!("SET NX answered {r}"))
        }
    }

    fn unlock(&mut self) -> Result<(), String> {
        let key = self.key.clone();
        let r = self.command(&[b"DEL", &key])?;
        if r == ":1" {
            Ok(())
        } else {
            Err(format!("DEL answered {r}"))
        }
    }
}
