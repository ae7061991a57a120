//! etcd as a lock service: the v3 lock API (`/v3/lock/lock` holding a lease
//! from `/v3/lease/grant`, then `/v3/lock/unlock`) through etcd's HTTP/JSON
//! gateway on a plain socket. etcd runs as it ships: one member, its WAL
//! fsync'd to a temporary data dir.

use super::http::{base64, json_str, HttpConn};
use super::{LockClient, ServiceConfig, ServiceResult};
use crate::cpu;
use crate::procs::{self, Server, TempDir};
use crate::report::Outcome;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn measure(cfg: &ServiceConfig) -> ServiceResult {
    match run(cfg) {
        Ok(r) => r,
        Err(why) => ServiceResult::unavailable(&why),
    }
}

fn run(cfg: &ServiceConfig) -> Result<ServiceResult, Outcome> {
    let Some(bin) = procs::which("etcd") else {
        return Err(Outcome::Unavailable(
            "etcd not installed (apt-get install etcd-server)".into(),
        ));
    };
    let (client_cpu, server_cpu) = match (cfg.placement.client_cpu(), cfg.placement.server_cpu()) {
        (Ok(c), Ok(s)) => (c, s),
        (Err(e), _) | (_, Err(e)) => return Err(Outcome::Unavailable(e.to_string())),
    };
    let fail = |what: &str, e: &dyn std::fmt::Display| Outcome::Failed(format!("etcd {what}: {e}"));
    let dir = TempDir::new("etcd").map_err(|e| fail("temp dir", &e))?;
    let client_port = procs::free_port().map_err(|e| fail("port", &e))?;
    let peer_port = procs::free_port().map_err(|e| fail("port", &e))?;
    let curl = format!("http://127.0.0.1:{client_port}");
    let purl = format!("http://127.0.0.1:{peer_port}");
    let log = std::fs::File::create(dir.path().join("etcd.log")).map_err(|e| fail("log", &e))?;
    let mut cmd = Command::new(bin);
    cmd.args(["--name", "bench", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &curl,
            "--advertise-client-urls",
            &curl,
        ])
        .args([
            "--listen-peer-urls",
            &purl,
            "--initial-advertise-peer-urls",
            &purl,
        ])
        .args(["--initial-cluster", &format!("bench={purl}")])
        .args(["--initial-cluster-state", "new"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    cpu::pin_command(&mut cmd, server_cpu);
    let mut server = Server::new("etcd", cmd.spawn().map_err(|e| fail("spawn", &e))?);
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, client_port);
    wait_healthy(&mut server, addr).map_err(|e| fail("start", &e))?;
    let latency = super::measure_latency(
        Box::new(EtcdClient::new(addr, "lat").map_err(|e| fail("client", &e))?),
        client_cpu,
        cfg.warmup,
        cfg.samples,
    );
    let mut clients: Vec<Box<dyn LockClient>> = Vec::new();
    for i in 0..cfg.clients {
        clients.push(Box::new(
            EtcdClient::new(addr, &format!("tp{i}")).map_err(|e| fail("client", &e))?,
        ));
    }
    let throughput = super::measure_throughput(clients, client_cpu, cfg.duration);
    server.stop(Duration::from_secs(5));
    Ok(ServiceResult {
        latency,
        throughput,
    })
}

/// Polls /health until the member has a leader (it elects itself).
fn wait_healthy(server: &mut Server, addr: SocketAddrV4) -> Result<(), String> {
    let end = Instant::now() + Duration::from_secs(30);
    let mut last = String::from("no answer");
    while Instant::now() < end {
        server.check_running()?;
        if let Ok(mut c) = HttpConn::connect(addr) {
            match c.request("GET", "/health", "") {
                Ok((200, body)) if body.contains("true") => return Ok(()),
                Ok((s, body)) => last = format!("{s} {body}"),
                Err(e) => last = e,
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("not healthy after 30 s: {last}"))
}

struct EtcdClient {
    conn: HttpConn,
    name_b64: String,
    lease: String,
    held_key: Option<String>,
}

impl EtcdClient {
    fn new(addr: SocketAddrV4, name: &str) -> Result<EtcdClient, String> {
        let mut conn = HttpConn::connect(addr).map_err(|e| e.to_string())?;
        let (status, body) = conn.request("POST", "/v3/lease/grant", r#"{"TTL":"30"}"#)?;
        if status == 404 {
            return Err("the JSON gateway is not served (/v3/lease/grant: 404)".into());
        }
        let lease = json_str(&body, "ID")
            .ok_or_else(|| format!("lease grant answered {status} {body}"))?
            .to_string();
        Ok(EtcdClient {
            conn,
            name_b64: base64(format!("o2dlm-bench/{name}").as_bytes()),
            lease,
            held_key: None,
        })
    }
}

impl LockClient for EtcdClient {
    fn lock(&mut self) -> Result<(), String> {
        let body = format!(r#"{{"name":"{}","lease":"{}"}}"#, self.name_b64, self.lease);
        let (status, reply) = self.conn.request("POST", "/v3/lock/lock", &body)?;
        let key =
            json_str(&reply, "key").ok_or_else(|| format!("lock answered {status} {reply}"))?;
        self.held_key = Some(key.to_string());
        Ok(())
    }

    fn unlock(&mut self) -> Result<(), String> {
        let key = self.held_key.take().ok_or("unlock without a lock")?;
        let (status, reply) =
            self.conn
                .request("POST", "/v3/lock/unlock", &format!(r#"{{"key":"{key}"}}"#))?;
        if status == 200 {
            Ok(())
        } else {
            Err(format!("unlock answered {status} {reply}"))
        }
    }
}
