//! Starting and stopping `rspdk_tgt` for the process tests (nvmf, iscsi,
//! nvme_tcp): a temporary directory with the RPC socket, the JSON config
//! and the target's stderr, and free loopback ports.

#![allow(dead_code, reason = "each test binary uses a subset")]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::common::wait_started;

/// A running `rspdk_tgt`, killed when dropped.
pub struct Tgt {
    /// The process.
    pub child: Child,
    /// Its RPC socket.
    pub sock: PathBuf,
    /// Its stderr.
    pub log: PathBuf,
    /// The port its config listens on.
    pub port: u16,
    dir: Option<tempfile::TempDir>,
}

impl Tgt {
    /// Starts `rspdk_tgt --no-huge -r DIR/spdk.sock -c DIR/cfg.json ARGS`
    /// with `cfg` as its config in `dir`, and waits for its RPC socket.
    pub fn spawn(dir: tempfile::TempDir, port: u16, cfg: &Value, args: &[&str]) -> Tgt {
        Tgt::spawn_env(dir, port, cfg, args, &[])
    }

    /// [`Tgt::spawn`] with `envs` added to the target's environment.
    pub fn spawn_env(
        dir: tempfile::TempDir,
        port: u16,
        cfg: &Value,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Tgt {
        let sock = dir.path().join("spdk.sock");
        let _ = std::fs::remove_file(&sock);
        let log = dir.path().join("stderr.log");
        let cfg_path = dir.path().join("cfg.json");
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rspdk_tgt"))
            .arg("-r")
            .arg(&sock)
            .arg("--no-huge")
            .arg("-c")
            .arg(&cfg_path)
            .args(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let t = Tgt {
            child,
            sock,
            log,
            port,
            dir: Some(dir),
        };
        wait_started(&t.sock);
        t
    }

    /// Kills the target (SIGKILL: no goodbye to hosts) and hands back its
    /// directory, to start another on the same socket and config.
    pub fn crash(&mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dir.take().expect("not crashed before")
    }

    /// What the target wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback TCP port free at the time of the call.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
