//! iSCSI connections (SPDK: lib/iscsi/conn.c and iscsi.c). The protocol
//! is the sans-I/O [`ConnCore`] (`core/`: PDU I/O, login and negotiation,
//! the full feature phase dispatcher, SCSI tasks with Data-Out/R2T
//! sequencing, task management); [`Conn`] is its driver on a non-blocking
//! socket, polled on one poll group thread, that runs the core's SCSI tasks
//! on the target's device. Sessions and the tables the RPCs read are in
//! `session.rs`.

mod core;
mod session;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::rc::Rc;

use rspdk_scsi::ScsiResult;

use crate::IscsiError;

pub use self::core::{ConnConfig, ConnCore, ScsiTask, State};
pub use session::{connections, kill_target_sessions, request_logout, stats, ConnInfo};

/// Largest data segment accepted during login (RFC 7143 6.1).
pub(crate) const LOGIN_MAX_DATA: usize = 8192;
/// Seconds a connection has to complete its login before it is closed
/// (SPDK's `ISCSI_LOGIN_TIMEOUT`).
pub const LOGIN_TIMEOUT_SECS: u64 = 30;
/// Seconds an initiator asked to log out (`iscsi_target_node_request_logout`)
/// has before the connection is closed (SPDK's `ISCSI_LOGOUT_REQUEST_TIMEOUT`).
pub const LOGOUT_REQUEST_TIMEOUT_SECS: u16 = 30;
/// Bytes of responses a connection queues for an initiator that does not
/// read them; above this it takes no new PDUs until the queue drains.
pub const OUT_QUEUE_MAX: usize = 4 << 20;
/// Output queue capacity a connection keeps once drained.
pub(crate) const OUT_KEEP_MAX: usize = 64 << 20;
/// Bytes of received, unprocessed input above which the socket is not read.
pub(crate) const IN_QUEUE_MAX: usize = 512 << 10;
/// Tasks a connection has executing (bdev I/O issued, response not yet
/// queued) at once, per unit of queue depth: above this it takes no new
/// SCSI commands until some complete. Tasks waiting for Data-Out do not
/// count: their data may sit behind the next command in the stream.
pub(crate) const TASKS_PER_QUEUE_DEPTH: usize = 2;
pub(crate) const NO_TAG: u32 = 0xffff_ffff;
/// WRITE data bytes a connection solicits with R2Ts and holds before the
/// commands execute. RFC 7143 lets a target pace its R2Ts: an initiator
/// that leaves bursts unfinished on many commands cannot make the target
/// hold more than this (or one command's data, when larger), where without
/// a cap 64 commands of 64 MiB would pin 4 GiB.
pub(crate) const SOLICIT_BUDGET: usize = 32 << 20;

/// One connection: a [`ConnCore`] driven by a non-blocking socket.
pub struct Conn {
    sock: TcpStream,
    core: ConnCore,
    /// Receive scratch buffer (allocated once, not zeroed per poll).
    scratch: Box<[u8]>,
    /// Results of the SCSI tasks, as the SCSI layer completes them (at once
    /// or later, on this thread).
    completions: Rc<RefCell<VecDeque<(u32, ScsiResult)>>>,
    /// The socket was shut down (once the core closed).
    shut: bool,
}

impl Conn {
    /// A new connection accepted on portal group `pg_tag`.
    pub fn new(sock: TcpStream, pg_tag: u32) -> Result<Conn, IscsiError> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source| IscsiError::Io { what, source }
        };
        sock.set_nonblocking(true).map_err(io("set_nonblocking"))?;
        let _ = sock.set_nodelay(true);
        // sock_impl_set_options (posix): buffer sizes, quick ack.
        if let Err(e) = rspdk_sock::apply_server(std::os::fd::AsRawFd::as_raw_fd(&sock)) {
            tracing::warn!(error = %e, "iscsi: cannot apply the sock options to a connection");
        }
        let peer = sock.peer_addr().map_err(io("peer_addr"))?;
        let local = sock.local_addr().map_err(io("local_addr"))?;
        let mut cfg = ConnConfig::from_options(peer, local, pg_tag);
        cfg.lcore_id = rspdk_event::current_cpu().unwrap_or(0);
        cfg.thread_name = rspdk_thread::get_thread()
            .map(|t| t.name().to_string())
            .unwrap_or_default();
        Ok(Conn {
            sock,
            core: ConnCore::new(cfg, rspdk_thread::now_ns()),
            scratch: vec![0u8; 65536].into_boxed_slice(),
            completions: Rc::new(RefCell::new(VecDeque::new())),
            shut: false,
        })
    }

    /// True once the connection is finished and can be dropped.
    pub fn is_closed(&self) -> bool {
        self.core.state() == State::Closed
    }

    /// Reads, handles PDUs and completions, writes. Returns true if it did work.
    pub fn poll(&mut self) -> bool {
        if self.is_closed() {
            return false;
        }
        if self.core.kill_requested() {
            self.close();
            return true;
        }
        let mut busy = false;
        if !self.core.is_closing() {
            // Backpressure: an initiator that does not read its responses
            // gets no new PDUs processed (and its socket is not read)
            // until they drain; the kernel's socket buffers then fill and
            // stop it sending.
            let got = self.core.wants_input() && self.read_socket();
            busy |= got;
            let now = rspdk_thread::now_ns();
            // Each task goes to the SCSI layer before the next PDU is handled.
            loop {
                busy |= self.core.process_input(now);
                if !self.core.has_task() {
                    break;
                }
                self.run_tasks();
            }
            self.core.tick(now, got);
        }
        busy |= self.drain_completions();
        busy |= self.core.service();
        busy |= self.flush();
        self.core.close_if_flushed();
        if self.is_closed() {
            self.shutdown();
        }
        busy
    }

    /// Runs the SCSI tasks the core handed out, on the target's device;
    /// their results come back through `completions`.
    fn run_tasks(&mut self) {
        while let Some(ScsiTask { itt, lun, cmd }) = self.core.next_task() {
            let q = self.completions.clone();
            // Stored inline (an `Rc` and the ITT): no allocation.
            let done = rspdk_scsi::Done::new(move |r| q.borrow_mut().push_back((itt, r)));
            match self.core.target() {
                Some(tg) => {
                    let dev = tg.dev.clone();
                    dev.execute(lun, &cmd, done);
                }
                None => done.call(ScsiResult::check(rspdk_scsi::Sense::LUN_NOT_SUPPORTED)),
            }
            self.core.recycle(cmd);
        }
    }

    fn drain_completions(&mut self) -> bool {
        let mut busy = false;
        loop {
            let next = self.completions.borrow_mut().pop_front();
            let Some((itt, r)) = next else {
                break;
            };
            busy = true;
            self.core.task_done(itt, r, rspdk_thread::now_ns());
        }
        busy
    }

    fn read_socket(&mut self) -> bool {
        let mut busy = false;
        for _ in 0..8 {
            let buf = &mut self.scratch;
            match self.sock.read(buf) {
                Ok(0) => {
                    self.close();
                    return true;
                }
                Ok(n) => {
                    busy = true;
                    self.core.receive(&buf[..n]);
                    if n < buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close();
                    return true;
                }
            }
        }
        busy
    }

    fn flush(&mut self) -> bool {
        let mut busy = false;
        while !self.core.output().is_empty() {
            match self.sock.write(self.core.output()) {
                Ok(0) => break,
                Ok(n) => {
                    self.core.consume_output(n);
                    busy = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close();
                    return true;
                }
            }
        }
        busy
    }

    fn close(&mut self) {
        self.core.close();
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if !self.shut {
            self.shut = true;
            let _ = self.sock.shutdown(std::net::Shutdown::Both);
        }
    }
}
