//! An in-process host and disk around a connection core, shared by the
//! core's unit tests and the `nvmf_conn` fuzz target: it sets up a target
//! with one subsystem, feeds the core bytes at a fake clock, serves the
//! core's bdev requests from a small in-memory disk (what the bdev bridge
//! does with real bdevs) and parses what the core sends back.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rspdk_nvme::spec::fabrics::{Connect, ConnectData, Property};
use rspdk_nvme::spec::status::{generic, media};
use rspdk_nvme::spec::{cc, reg, Cqe, IoOpcode, SglDescriptor, Sqe};
use rspdk_thread::{Thread, ThreadHandle, ThreadOpts};

use super::{Conn, ConnParams, HeapBufs, Request};
use crate::pdu::{self, DataHeader, Digests, IcReq, IcResp, Pdu};
use crate::target::{target, ListenAddress, PollGroupStats, TransportOpts};

/// The subsystem every harness target has.
pub const NQN: &str = "nqn.2016-06.io.rspdk:harness";
/// The host NQN the harness connects as.
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:harness";
/// Block size of the in-memory disk.
pub const BLOCK_SIZE: usize = 512;
/// Blocks of the in-memory disk.
pub const BLOCKS: u64 = 64;
/// The listener address of the harness subsystem (nothing binds it).
pub const LOCAL: &str = "127.0.0.1:4420";

/// Connection ids of harness cores: far above the target's own.
static NEXT_ID: AtomicU64 = AtomicU64::new(1 << 48);

thread_local! {
    /// The lightweight thread admin queues name for their AERs.
    static ADMIN_THREAD: RefCell<Option<Thread>> = const { RefCell::new(None) };
}

fn admin_thread() -> Option<ThreadHandle> {
    ADMIN_THREAD.with(|t| {
        let mut t = t.borrow_mut();
        if t.is_none() {
            *t = Thread::new(ThreadOpts::named("nvmf_harness"), 0).ok();
        }
        t.as_ref().map(|t| t.handle())
    })
}

/// A PDU from the core, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPdu {
    /// ICResp.
    IcResp(IcResp),
    /// A response capsule.
    Resp(Cqe),
    /// C2HData with its data.
    C2hData {
        /// Header fields.
        hdr: DataHeader,
        /// LAST_PDU.
        last: bool,
        /// SUCCESS (no response follows).
        success: bool,
        /// The data.
        data: Vec<u8>,
    },
    /// An R2T.
    R2t(DataHeader),
    /// A C2HTermReq.
    TermReq {
        /// Fatal Error Status.
        fes: u16,
        /// Fatal Error Information.
        fei: u32,
    },
    /// Anything else (a PDU a controller does not send), by type.
    Other(u8),
}

/// A connection core with a host's view of it (see the module docs).
pub struct Harness {
    /// The core under test.
    pub conn: Conn<HeapBufs>,
    /// The fake clock, ns.
    pub now: u64,
    /// Digests the host negotiated (set by [`Harness::icreq`]).
    pub digests: Digests,
    /// Output not parsed yet.
    out: Vec<u8>,
    disk: Vec<u8>,
}

/// Creates target `tgt` with the harness subsystem (allow any host,
/// listening on [`LOCAL`]) if it does not exist.
pub fn setup_target(tgt: &str) {
    let mut t = target();
    if t.tgt(Some(tgt)).is_err() {
        t.create_tgt(tgt, 0).expect("a fresh target name");
        let g = t.tgt(Some(tgt)).expect("just made");
        g.create_subsystem(NQN, "RSPDK0001", "rspdk harness", 0, true, 1, 0xffef)
            .expect("a fresh subsystem");
        let s = g.find(NQN).expect("just made");
        crate::target::lock(&s.listeners).push(ListenAddress {
            trtype: "TCP".into(),
            adrfam: "IPv4".into(),
            traddr: "127.0.0.1".into(),
            trsvcid: "4420".into(),
        });
    }
}

/// SPDK's default transport options.
pub fn default_opts() -> TransportOpts {
    serde_json::from_value(serde_json::json!({ "trtype": "TCP" })).expect("defaults")
}

impl Harness {
    /// A core accepted by target `tgt` (made if needed) at time 0.
    pub fn new(tgt: &str) -> Harness {
        Harness::with_opts(tgt, default_opts())
    }

    /// As [`Harness::new`], with transport options `opts`.
    pub fn with_opts(tgt: &str, opts: TransportOpts) -> Harness {
        setup_target(tgt);
        let stats = Arc::new(PollGroupStats::default());
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let p = ConnParams {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            tgt: tgt.to_string(),
            local: LOCAL.parse::<SocketAddr>().expect("an address"),
            peer: "127.0.0.1:50000".parse().expect("an address"),
            opts,
            stats,
            pg_name: "nvmf_harness".into(),
            admin_thread: admin_thread(),
        };
        Harness {
            conn: Conn::new(p, HeapBufs, 0),
            now: 0,
            digests: Digests::default(),
            out: Vec::new(),
            disk: vec![0; BLOCK_SIZE * BLOCKS as usize],
        }
    }

    /// Feeds `bytes` to the core and serves the requests they made.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.conn.feed(bytes, self.now);
        self.serve();
    }

    /// Sends `p` with the negotiated digests.
    pub fn send(&mut self, p: &Pdu<'_>) {
        let mut b = Vec::new();
        p.emit(&mut b, self.digests);
        self.feed(&b);
    }

    /// Moves the clock on by `ns` and runs the core's timers.
    pub fn advance(&mut self, ns: u64) {
        self.now += ns;
        self.conn.on_tick(self.now);
    }

    /// Serves the core's bdev requests from the in-memory disk, each
    /// completed at once.
    pub fn serve(&mut self) {
        while let Some(r) = self.conn.next_request() {
            match r {
                Request::Io { slot } => self.serve_io(slot),
                Request::CompareAndWrite { first, second } => {
                    // The disk does not compare: both succeed.
                    self.conn
                        .stats()
                        .pending_bdev_io
                        .fetch_add(1, Ordering::Relaxed);
                    self.conn
                        .compare_and_write_done(first, second, generic::SUCCESS);
                }
            }
        }
    }

    fn serve_io(&mut self, slot: usize) {
        let sqe = self.conn.sqe(slot);
        let op = IoOpcode::from(sqe.opcode());
        if sqe.nsid() != 1 {
            return self.conn.complete(slot, generic::INVALID_NS, 0);
        }
        let (slba, nlb) = (sqe.slba(), sqe.nlb() as u64);
        let range = match slba.checked_add(nlb) {
            Some(end) if end <= BLOCKS => {
                slba as usize * BLOCK_SIZE..(slba + nlb) as usize * BLOCK_SIZE
            }
            _ => return self.conn.complete(slot, generic::LBA_OUT_OF_RANGE, 0),
        };
        let st = match op {
            IoOpcode::Read | IoOpcode::Write | IoOpcode::Compare => {
                let bytes = range.len();
                if self.conn.xfer_len(slot) != bytes {
                    return self.conn.complete(slot, generic::SGL_LENGTH_INVALID, 0);
                }
                if !self.conn.ensure_buf(slot, bytes) {
                    return self.conn.complete(slot, generic::INTERNAL, 0);
                }
                let b = &mut self.conn.buf_mut(slot).expect("ensured")[..bytes];
                match op {
                    IoOpcode::Read => {
                        b.copy_from_slice(&self.disk[range]);
                        generic::SUCCESS
                    }
                    IoOpcode::Write => {
                        self.disk[range].copy_from_slice(b);
                        generic::SUCCESS
                    }
                    _ if self.disk[range] == *b => generic::SUCCESS,
                    _ => media::COMPARE_FAILURE,
                }
            }
            IoOpcode::Flush | IoOpcode::WriteZeroes | IoOpcode::DatasetManagement => {
                generic::SUCCESS
            }
            _ => return self.conn.complete(slot, generic::INVALID_OPCODE, 0),
        };
        self.conn.io_submitted(slot);
        self.conn.io_done(slot, st);
    }

    /// Every whole PDU the core sent since the last call.
    pub fn pdus(&mut self) -> Vec<HostPdu> {
        self.conn.take_output(&mut self.out);
        let mut v = Vec::new();
        let mut off = 0;
        while let Ok(Some((p, n))) = pdu::parse(&self.out[off..], self.digests, u32::MAX) {
            v.push(match p {
                Pdu::IcResp(r) => HostPdu::IcResp(r),
                Pdu::CapsuleResp(c) => HostPdu::Resp(c),
                Pdu::C2hData {
                    hdr,
                    last,
                    success,
                    data,
                } => HostPdu::C2hData {
                    hdr,
                    last,
                    success,
                    data: data.to_vec(),
                },
                Pdu::R2t(h) => HostPdu::R2t(h),
                Pdu::C2hTermReq { fes, fei, .. } => HostPdu::TermReq { fes, fei },
                Pdu::Unknown { ch, .. } => HostPdu::Other(ch.pdu_type),
                _ => HostPdu::Other(self.out[off]),
            });
            off += n;
        }
        self.out.drain(..off);
        v
    }

    /// Output bytes not parsed as whole PDUs (taken from the core).
    pub fn pending_output(&mut self) -> usize {
        self.conn.take_output(&mut self.out);
        self.out.len()
    }

    /// Drops the output taken so far (fuzzing: the host reads and
    /// discards).
    pub fn discard_output(&mut self) -> usize {
        self.conn.take_output(&mut self.out);
        let n = self.out.len();
        self.out.clear();
        n
    }

    /// ICReq with the digests asked; returns the ICResp and uses its
    /// digests from then on.
    pub fn icreq(&mut self, hdgst: bool, ddgst: bool) -> Option<IcResp> {
        self.send(&Pdu::IcReq(IcReq {
            pfv: 0,
            hpda: 0,
            hdgst,
            ddgst,
            maxr2t: 0,
        }));
        let r = match self.pdus().first() {
            Some(HostPdu::IcResp(r)) => *r,
            _ => return None,
        };
        self.digests = Digests {
            header: r.hdgst,
            data: r.ddgst,
        };
        Some(r)
    }

    /// Sends command `sqe` with `data` in the capsule and returns the
    /// PDUs it got back.
    pub fn command(&mut self, sqe: Sqe, data: &[u8]) -> Vec<HostPdu> {
        self.send(&Pdu::CapsuleCmd { sqe, data });
        self.pdus()
    }

    /// Connect to [`NQN`] on queue `qid` (`cntlid` 0xffff for an admin
    /// queue); returns the response.
    pub fn fabric_connect(&mut self, qid: u16, sqsize: u16, cntlid: u16, kato: u32) -> Option<Cqe> {
        let mut sqe = Sqe::default();
        sqe.set_cid(0x100 + qid);
        Connect {
            recfmt: 0,
            qid,
            sqsize,
            cattr: 0,
            kato,
        }
        .emit(&mut sqe);
        let mut d = ConnectData::default();
        d.set_hostid(&[0x42; 16]);
        d.set_cntlid(cntlid);
        d.set_subnqn(NQN);
        d.set_hostnqn(HOSTNQN);
        in_capsule(&mut sqe, ConnectData::SIZE);
        self.command(sqe, &d.bytes)
            .into_iter()
            .find_map(|p| match p {
                HostPdu::Resp(c) => Some(c),
                _ => None,
            })
    }

    /// Sets CC.EN (Property Set) so that I/O queues may connect.
    pub fn enable(&mut self) -> Option<Cqe> {
        let mut sqe = Sqe::default();
        sqe.set_cid(0x200);
        Property {
            eight_bytes: false,
            offset: reg::CC as u32,
            value: cc::EN as u64,
        }
        .emit(&mut sqe, true);
        self.command(sqe, &[]).into_iter().find_map(|p| match p {
            HostPdu::Resp(c) => Some(c),
            _ => None,
        })
    }
}

/// Points `sqe`'s SGL at `len` bytes of in-capsule data.
pub fn in_capsule(sqe: &mut Sqe, len: usize) {
    sqe.dw[8] = len as u32;
    sqe.dw[9] = (SglDescriptor::ID_DATA_BLOCK_OFFSET as u32) << 24;
}

/// Points `sqe`'s SGL at `len` bytes the transport moves (R2T or C2HData).
pub fn transport_data(sqe: &mut Sqe, len: usize) {
    sqe.dw[8] = len as u32;
    sqe.dw[9] = (SglDescriptor::ID_TRANSPORT_DATA_BLOCK as u32) << 24;
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.conn.close("harness done");
    }
}
