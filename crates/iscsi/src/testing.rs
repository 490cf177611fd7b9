//! In-process support for the connection core's unit tests and the
//! `iscsi_conn` fuzz target: a target node registered without sockets or
//! bdevs, a tiny in-memory LUN that answers the core's SCSI tasks, and a
//! loopback that drives a [`ConnCore`] as the socket driver would.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use rspdk_scsi::{status, Cdb, ScsiCommand, ScsiDev, ScsiResult, Sense};

use crate::conn::{ConnConfig, ConnCore, ScsiTask, OUT_QUEUE_MAX};
use crate::target::{with_registry, Auth, InitiatorGroup, PgIgMap, TargetNode};
use crate::text::TargetLimits;

/// Registers target node `name`, open to every initiator through portal
/// group `pg_tag` (initiator group `pg_tag` too), with `auth` and a SCSI
/// device without LUNs (the loopback's [`MemLun`] answers the commands).
pub fn register_target(name: &str, pg_tag: u32, auth: Auth) -> Arc<TargetNode> {
    with_registry(|r| {
        r.initiator_groups.insert(
            pg_tag,
            InitiatorGroup {
                tag: pg_tag,
                initiators: vec!["ANY".into()],
                netmasks: vec!["ANY".into()],
            },
        );
        let t = Arc::new(TargetNode {
            name: name.to_string(),
            alias: None,
            pg_ig_maps: Mutex::new(vec![PgIgMap {
                pg_tag,
                ig_tag: pg_tag,
            }]),
            dev: ScsiDev::new(name),
            queue_depth: 64,
            auth: Mutex::new(auth),
            dev_id: r.free_dev_id(),
            histogram: Default::default(),
            header_digest: false,
            data_digest: false,
        });
        r.targets.insert(name.to_string(), t.clone());
        t
    })
}

/// A LUN in memory: TEST UNIT READY, INQUIRY, READ CAPACITY(10),
/// READ/WRITE(10) and (16); anything else is an invalid opcode.
#[derive(Debug, Clone)]
pub struct MemLun {
    /// Block size.
    pub block_size: usize,
    /// The blocks.
    pub data: Vec<u8>,
}

impl MemLun {
    /// `blocks` zeroed blocks of `block_size` bytes.
    pub fn new(blocks: usize, block_size: usize) -> MemLun {
        MemLun {
            block_size,
            data: vec![0; blocks * block_size],
        }
    }

    fn good(data: Vec<u8>) -> ScsiResult {
        ScsiResult {
            status: status::GOOD,
            sense: None,
            data: data.into(),
            data_out_len: None,
        }
    }

    /// Executes `cmd`.
    pub fn execute(&mut self, cmd: &ScsiCommand) -> ScsiResult {
        let cdb = match Cdb::new(&cmd.cdb) {
            Ok(c) => c,
            Err(s) => return ScsiResult::check(s),
        };
        let blocks = (self.data.len() / self.block_size) as u64;
        match cdb.opcode() {
            0x00 => Self::good(Vec::new()),
            0x12 => {
                let mut d = vec![0u8; 36];
                d[2] = 6;
                d[3] = 2;
                d[4] = 31;
                d[8..16].copy_from_slice(b"RSPDK   ");
                d.truncate(usize::from(cdb.u16(3)));
                Self::good(d)
            }
            0x25 => {
                let mut d = Vec::with_capacity(8);
                d.extend_from_slice(&(blocks.saturating_sub(1) as u32).to_be_bytes());
                d.extend_from_slice(&(self.block_size as u32).to_be_bytes());
                Self::good(d)
            }
            op @ (0x28 | 0x88 | 0x2a | 0x8a) => {
                let Some((lba, n)) = cdb.lba_len() else {
                    return ScsiResult::check(Sense::INVALID_FIELD_IN_CDB);
                };
                if lba.saturating_add(u64::from(n)) > blocks {
                    return ScsiResult::check(Sense::LBA_OUT_OF_RANGE);
                }
                let (s, e) = (
                    lba as usize * self.block_size,
                    (lba as usize + n as usize) * self.block_size,
                );
                if op == 0x28 || op == 0x88 {
                    return Self::good(self.data[s..e].to_vec());
                }
                let got = cmd.data_out.len().min(e - s);
                self.data[s..s + got].copy_from_slice(&cmd.data_out[..got]);
                ScsiResult {
                    data_out_len: Some((e - s) as u64),
                    ..Self::good(Vec::new())
                }
            }
            _ => ScsiResult::check(Sense::INVALID_OPCODE),
        }
    }
}

/// A [`ConnCore`] driven in process: bytes in, bytes out, its SCSI tasks
/// answered by a [`MemLun`] at once (or held, to test what waits for them).
pub struct Loopback {
    /// The connection.
    pub core: ConnCore,
    /// The LUN behind every task.
    pub lun: MemLun,
    /// The time, ns (tests move it on).
    pub now_ns: u64,
    /// Hold tasks instead of executing them.
    pub hold_tasks: bool,
    /// Tasks held.
    pub held: Vec<ScsiTask>,
}

impl Loopback {
    /// A connection from 10.0.0.2 on portal group `pg_tag`, with default
    /// limits and no NOP-In pings, and a 64 KiB LUN of 512-byte blocks.
    pub fn new(pg_tag: u32) -> Loopback {
        Loopback::with_limits(pg_tag, TargetLimits::default(), 0, 0)
    }

    /// As [`Loopback::new`], with `limits` and the NOP-In timers.
    pub fn with_limits(
        pg_tag: u32,
        limits: TargetLimits,
        nop_in_interval: u32,
        nop_timeout: u32,
    ) -> Loopback {
        let cfg = ConnConfig {
            peer: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 40000),
            local: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 3260),
            pg_tag,
            limits,
            nop_in_interval,
            nop_timeout,
            lcore_id: 0,
            thread_name: "loopback".into(),
        };
        Loopback {
            core: ConnCore::new(cfg, 1),
            lun: MemLun::new(128, 512),
            now_ns: 1,
            hold_tasks: false,
            held: Vec::new(),
        }
    }

    /// Feeds `bytes` and runs the connection as the driver's poll does.
    /// Returns what the connection sent in answer.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.core.receive(bytes);
        self.run()
    }

    /// One poll without new bytes: handles the input queued, runs tasks,
    /// timers, task management; returns (and consumes) the output.
    pub fn run(&mut self) -> Vec<u8> {
        if !matches!(self.core.state(), crate::conn::State::Closed) {
            if self.core.kill_requested() {
                self.core.close();
            } else if !self.core.is_closing() {
                loop {
                    self.core.process_input(self.now_ns);
                    if !self.core.has_task() {
                        break;
                    }
                    self.run_tasks();
                }
                self.core.tick(self.now_ns, false);
            }
            self.core.service();
        }
        let out = self.core.output().to_vec();
        self.core.consume_output(out.len());
        self.core.close_if_flushed();
        out
    }

    /// Executes (or holds) the tasks the core handed out.
    pub fn run_tasks(&mut self) {
        while let Some(t) = self.core.next_task() {
            if self.hold_tasks {
                self.held.push(t);
                continue;
            }
            self.finish(t);
        }
    }

    /// Executes task `t` now and feeds its result back.
    pub fn finish(&mut self, t: ScsiTask) {
        let r = self.lun.execute(&t.cmd);
        let itt = t.itt;
        self.core.recycle(t.cmd);
        self.core.task_done(itt, r, self.now_ns);
    }

    /// Executes the held tasks; returns the output.
    pub fn release_held(&mut self) -> Vec<u8> {
        for t in std::mem::take(&mut self.held) {
            self.finish(t);
        }
        self.core.service();
        let out = self.core.output().to_vec();
        self.core.consume_output(out.len());
        out
    }

    /// True if the connection would read now; a driver that does not
    /// feed it otherwise keeps the input bounded.
    pub fn wants_input(&self) -> bool {
        self.core.wants_input()
    }
}

/// The most a connection queues for sending before it stops taking
/// input (bounded-memory checks use it).
pub const OUTPUT_BOUND: usize = OUT_QUEUE_MAX;
