//! A polled NVMe/TCP host (initiator): the fabrics Connect of an admin
//! queue and I/O queues, properties, Identify, and pipelined reads and
//! writes (in-capsule up to the controller's IOCCSZ, else R2T/H2CData),
//! with header and data digests when asked.
//!
//! It is the load generator of `rspdk_nvmf_perf` and the test host of the
//! target until the NVMe driver (`rspdk_nvme`) grows its TCP transport,
//! which this code is meant to move into. Sockets are non-blocking after
//! the handshake; [`TcpQpair::process_completions`] writes queued PDUs,
//! reads what arrived and completes commands, without blocking.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use rspdk_nvme::spec::{Cqe, Sqe};
use rspdk_nvme::{TransportId, TransportType};

use crate::error::{NvmfError, Result};
use crate::pdu::{self, DataHeader, Digests, IcReq, Pdu};

/// What a host connection is asked for.
#[derive(Debug, Clone)]
pub struct HostOpts {
    /// Host NQN sent in Connect.
    pub hostnqn: String,
    /// Header digests.
    pub header_digest: bool,
    /// Data digests.
    pub data_digest: bool,
    /// Entries per I/O queue.
    pub io_queue_size: u16,
    /// Handshake and admin command timeout.
    pub timeout: Duration,
}

impl Default for HostOpts {
    fn default() -> Self {
        HostOpts {
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:7273706b-0000-4000-8000-686f73740001".into(),
            header_digest: false,
            data_digest: false,
            io_queue_size: 128,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A completed command.
#[derive(Debug)]
pub struct HostCompletion {
    /// The caller's context.
    pub ctx: u64,
    /// The completion entry (status in DW3).
    pub cqe: Cqe,
    /// The command's buffer, back to the caller (read data filled in).
    pub buf: Vec<u8>,
}

impl HostCompletion {
    /// (status code type, status code).
    pub fn status(&self) -> (u8, u8) {
        let st = self.cqe.dw[3] >> 17;
        (((st >> 8) & 7) as u8, (st & 0xff) as u8)
    }
}

struct Cmd {
    busy: bool,
    ctx: u64,
    buf: Vec<u8>,
    /// Bytes of `buf` the command transfers.
    len: usize,
    write: bool,
    recvd: usize,
}

/// One NVMe/TCP queue pair of the host.
pub struct TcpQpair {
    s: TcpStream,
    dg: Digests,
    maxh2cdata: usize,
    /// In-capsule data this queue may send.
    pub icd: usize,
    rbuf: Vec<u8>,
    rlen: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    cmds: Vec<Cmd>,
    free: Vec<u16>,
    /// Queue ID.
    pub qid: u16,
    /// Controller ID.
    pub cntlid: u16,
}

fn io_err(what: &str, e: std::io::Error) -> NvmfError {
    NvmfError::Io {
        what: what.to_string(),
        source: e,
    }
}

impl TcpQpair {
    /// TCP connect, ICReq/ICResp, and a fabrics Connect of queue `qid` of
    /// `subnqn` (controller `cntlid`, 0xffff for a new admin queue).
    pub fn connect(
        addr: SocketAddr,
        subnqn: &str,
        qid: u16,
        cntlid: u16,
        size: u16,
        opts: &HostOpts,
    ) -> Result<TcpQpair> {
        let s = TcpStream::connect_timeout(&addr, opts.timeout)
            .map_err(|e| io_err(&format!("connect to {addr}"), e))?;
        let _ = s.set_nodelay(true);
        s.set_nonblocking(true)
            .map_err(|e| io_err("make the socket non-blocking", e))?;
        let mut q = TcpQpair {
            s,
            dg: Digests::default(),
            maxh2cdata: 0,
            icd: if qid == 0 { 8192 } else { 0 },
            rbuf: vec![0; 256 * 1024],
            rlen: 0,
            wbuf: Vec::with_capacity(64 * 1024),
            wpos: 0,
            cmds: (0..size.max(2) as usize + 4)
                .map(|_| Cmd {
                    busy: false,
                    ctx: 0,
                    buf: Vec::new(),
                    len: 0,
                    write: false,
                    recvd: 0,
                })
                .collect(),
            free: Vec::new(),
            qid,
            cntlid,
        };
        q.free = (0..q.cmds.len() as u16).rev().collect();
        Pdu::IcReq(IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: opts.header_digest,
            ddgst: opts.data_digest,
            maxr2t: 0,
        })
        .emit(&mut q.wbuf, Digests::default());
        let t0 = Instant::now();
        loop {
            q.flush()?;
            q.fill()?;
            match pdu::parse(&q.rbuf[..q.rlen], Digests::default(), 1 << 20)? {
                Some((Pdu::IcResp(r), n)) => {
                    if r.hdgst != opts.header_digest || r.ddgst != opts.data_digest {
                        return Err(NvmfError::param(format!(
                            "the controller granted digests header {} data {}, asked {} {}",
                            r.hdgst, r.ddgst, opts.header_digest, opts.data_digest
                        )));
                    }
                    q.maxh2cdata = r.maxh2cdata.max(4096) as usize;
                    q.consume(n);
                    break;
                }
                Some((other, _)) => {
                    return Err(NvmfError::pdu(
                        pdu::fes::PDU_SEQUENCE_ERROR,
                        0,
                        format!("expected ICResp, got {other:?}"),
                    ))
                }
                None if t0.elapsed() > opts.timeout => {
                    return Err(io_err(
                        "ICResp",
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "no ICResp"),
                    ))
                }
                None => std::thread::sleep(Duration::from_micros(50)),
            }
        }
        q.dg = Digests {
            header: opts.header_digest,
            data: opts.data_digest,
        };
        let mut sqe = Sqe::new(0x7f, 0x01);
        sqe.dw[10] = (qid as u32) << 16;
        sqe.dw[11] = (size as u32).saturating_sub(1);
        let mut d = vec![0u8; 1024];
        d[0..16].copy_from_slice(&hostid(&opts.hostnqn));
        d[16..18].copy_from_slice(&cntlid.to_le_bytes());
        let put = |d: &mut [u8], at: usize, s: &str| {
            let n = s.len().min(255);
            d[at..at + n].copy_from_slice(&s.as_bytes()[..n]);
        };
        put(&mut d, 256, subnqn);
        put(&mut d, 512, &opts.hostnqn);
        let icd = q.icd;
        q.icd = 8192;
        let c = q.sync(sqe, d, true, opts.timeout)?;
        q.icd = icd;
        if c.status() != (0, 0) {
            return Err(NvmfError::param(format!(
                "Connect of queue {qid} to {subnqn} failed: status {:?}, DW0 {:#x}",
                c.status(),
                c.cqe.dw[0]
            )));
        }
        q.cntlid = c.cqe.dw[0] as u16;
        Ok(q)
    }

    fn consume(&mut self, n: usize) {
        self.rbuf.copy_within(n..self.rlen, 0);
        self.rlen -= n;
    }

    fn fill(&mut self) -> Result<usize> {
        if self.rlen == self.rbuf.len() {
            let n = self.rbuf.len() * 2;
            self.rbuf.resize(n, 0);
        }
        match self.s.read(&mut self.rbuf[self.rlen..]) {
            Ok(0) => Err(NvmfError::Closed),
            Ok(n) => {
                self.rlen += n;
                Ok(n)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(io_err("read", e)),
        }
    }

    fn flush(&mut self) -> Result<()> {
        while self.wpos < self.wbuf.len() {
            match self.s.write(&self.wbuf[self.wpos..]) {
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("write", e)),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        Ok(())
    }

    /// Commands in flight.
    pub fn outstanding(&self) -> usize {
        self.cmds.len() - self.free.len()
    }

    /// Queues `sqe` with `buf`: written to the controller if `write`, else
    /// filled with `buf.len()` bytes of read data (empty: no data). Sent by
    /// the next [`TcpQpair::process_completions`].
    pub fn submit(&mut self, mut sqe: Sqe, buf: Vec<u8>, write: bool, ctx: u64) -> Result<()> {
        let Some(cid) = self.free.pop() else {
            return Err(NvmfError::param(format!(
                "queue {} is full ({} commands)",
                self.qid,
                self.cmds.len()
            )));
        };
        sqe.set_cid(cid);
        sqe.set_psdt(1);
        let len = buf.len();
        sqe.dw[8] = len as u32;
        let in_capsule = write && len > 0 && len <= self.icd;
        if len > 0 {
            sqe.dw[9] = if in_capsule { 0x01 } else { 0x5a } << 24;
        }
        let data: &[u8] = if in_capsule { &buf } else { &[] };
        Pdu::CapsuleCmd { sqe, data }.emit(&mut self.wbuf, self.dg);
        let c = &mut self.cmds[cid as usize];
        c.busy = true;
        c.ctx = ctx;
        c.buf = buf;
        c.len = len;
        c.write = write;
        c.recvd = 0;
        Ok(())
    }

    /// Sends what is queued, reads what arrived, calls `f` per completion.
    /// Returns the number completed.
    pub fn process_completions(&mut self, mut f: impl FnMut(HostCompletion)) -> Result<usize> {
        self.flush()?;
        self.fill()?;
        let mut done = 0;
        let mut off = 0;
        loop {
            let (kind, n) = match pdu::parse(&self.rbuf[off..self.rlen], self.dg, 1 << 24)? {
                None => break,
                Some((p, n)) => (
                    match p {
                        Pdu::CapsuleResp(cqe) => Some(Ok(cqe)),
                        Pdu::C2hData {
                            hdr,
                            last,
                            success,
                            data,
                        } => {
                            let c = self
                                .cmds
                                .get_mut(hdr.cccid as usize)
                                .filter(|c| c.busy && !c.write);
                            let Some(c) = c else {
                                return Err(NvmfError::param(format!(
                                    "C2HData for unknown CID {}",
                                    hdr.cccid
                                )));
                            };
                            let end = hdr.datao as usize + data.len();
                            if end > c.len {
                                return Err(NvmfError::param(format!(
                                    "C2HData beyond the buffer: offset {} length {} of {}",
                                    hdr.datao,
                                    data.len(),
                                    c.len
                                )));
                            }
                            c.buf[hdr.datao as usize..end].copy_from_slice(data);
                            c.recvd += data.len();
                            if last && success {
                                let mut cqe = Cqe::default();
                                cqe.dw[3] = hdr.cccid as u32;
                                Some(Ok(cqe))
                            } else {
                                None
                            }
                        }
                        Pdu::R2t(h) => Some(Err(h)),
                        Pdu::C2hTermReq { fes, fei, .. } => {
                            return Err(NvmfError::pdu(
                                fes as u8,
                                fei,
                                "the controller terminated the connection",
                            ))
                        }
                        other => {
                            return Err(NvmfError::param(format!(
                                "unexpected PDU from the controller: {other:?}"
                            )))
                        }
                    },
                    n,
                ),
            };
            off += n;
            match kind {
                Some(Ok(cqe)) => {
                    let cid = cqe.cid() as usize;
                    let Some(c) = self.cmds.get_mut(cid).filter(|c| c.busy) else {
                        return Err(NvmfError::param(format!(
                            "completion for unknown CID {cid}"
                        )));
                    };
                    c.busy = false;
                    let buf = std::mem::take(&mut c.buf);
                    let ctx = c.ctx;
                    self.free.push(cid as u16);
                    done += 1;
                    f(HostCompletion { ctx, cqe, buf });
                }
                Some(Err(r2t)) => self.answer_r2t(&r2t)?,
                None => {}
            }
        }
        if off > 0 {
            self.consume(off);
        }
        self.flush()?;
        Ok(done)
    }

    fn answer_r2t(&mut self, h: &DataHeader) -> Result<()> {
        let Some(c) = self
            .cmds
            .get(h.cccid as usize)
            .filter(|c| c.busy && c.write)
        else {
            return Err(NvmfError::param(format!("R2T for unknown CID {}", h.cccid)));
        };
        let (o, l) = (h.datao as usize, h.datal as usize);
        if o + l > c.len {
            return Err(NvmfError::param(format!("R2T beyond the data: {h:?}")));
        }
        let mut off = o;
        while off < o + l {
            let n = (o + l - off).min(self.maxh2cdata);
            let c = &self.cmds[h.cccid as usize];
            Pdu::H2cData {
                hdr: DataHeader {
                    cccid: h.cccid,
                    ttag: h.ttag,
                    datao: off as u32,
                    datal: n as u32,
                },
                last: off + n == o + l,
                data: &c.buf[off..off + n],
            }
            .emit(&mut self.wbuf, self.dg);
            off += n;
        }
        Ok(())
    }

    /// Submits and waits for one command.
    pub fn sync(
        &mut self,
        sqe: Sqe,
        buf: Vec<u8>,
        write: bool,
        timeout: Duration,
    ) -> Result<HostCompletion> {
        self.submit(sqe, buf, write, u64::MAX)?;
        let t0 = Instant::now();
        let mut out = None;
        while out.is_none() {
            self.process_completions(|c| out = Some(c))?;
            if out.is_none() {
                if t0.elapsed() > timeout {
                    return Err(io_err(
                        "wait for a completion",
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "command timed out"),
                    ));
                }
                std::thread::sleep(Duration::from_micros(20));
            }
        }
        Ok(out.expect("set above"))
    }
}

/// A host identifier derived from the host NQN (FNV-1a).
fn hostid(nqn: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut h = 0xcbf29ce484222325u64;
    for (i, b) in nqn.bytes().chain(*b"rspdk-host-id-xx").enumerate() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
        out[i % 16] ^= (h >> 24) as u8;
    }
    out
}

/// A controller reached over NVMe/TCP: its admin queue and Identify data.
pub struct TcpController {
    /// The admin queue.
    pub admin: TcpQpair,
    /// Identify Controller (4096 bytes).
    pub id: Vec<u8>,
    addr: SocketAddr,
    subnqn: String,
    opts: HostOpts,
    next_qid: u16,
}

impl TcpController {
    /// Connects the admin queue of the controller at `trid`
    /// (`trtype:TCP adrfam:IPv4 traddr:... trsvcid:... subnqn:...`),
    /// enables it, reads Identify Controller and asks for I/O queues.
    pub fn connect(trid: &TransportId, opts: &HostOpts) -> Result<TcpController> {
        if trid.trtype != TransportType::Tcp {
            return Err(NvmfError::param(format!(
                "trtype {} (only TCP here)",
                trid.trtype.as_str()
            )));
        }
        let port = trid.trsvcid.as_deref().unwrap_or("4420");
        let addr = (
            trid.traddr.as_str(),
            port.parse::<u16>()
                .map_err(|_| NvmfError::param(format!("trsvcid '{port}' is not a port")))?,
        )
            .to_socket_addrs()
            .map_err(|e| io_err(&format!("resolve {}", trid.traddr), e))?
            .next()
            .ok_or_else(|| {
                NvmfError::param(format!("traddr '{}' resolves to nothing", trid.traddr))
            })?;
        let subnqn = trid
            .subnqn
            .clone()
            .unwrap_or_else(|| crate::target::DISCOVERY_NQN.to_string());
        let mut admin = TcpQpair::connect(addr, &subnqn, 0, 0xffff, 32, opts)?;
        // CC: EN, IOSQES 6, IOCQES 4.
        let mut sqe = Sqe::new(0x7f, 0x00);
        sqe.dw[11] = 0x14;
        sqe.dw[12] = 1 | (6 << 16) | (4 << 20);
        let c = admin.sync(sqe, Vec::new(), false, opts.timeout)?;
        if c.status() != (0, 0) {
            return Err(NvmfError::param(format!(
                "Property Set CC failed: {:?}",
                c.status()
            )));
        }
        let t0 = Instant::now();
        loop {
            let mut sqe = Sqe::new(0x7f, 0x04);
            sqe.dw[11] = 0x1c;
            let c = admin.sync(sqe, Vec::new(), false, opts.timeout)?;
            if c.cqe.dw[0] & 1 == 1 {
                break;
            }
            if t0.elapsed() > opts.timeout {
                return Err(NvmfError::param("CSTS.RDY did not come up"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // CAP.MQES bounds the I/O queue size.
        let mut sqe = Sqe::new(0x7f, 0x04);
        sqe.dw[10] = 1;
        sqe.dw[11] = 0x00;
        let c = admin.sync(sqe, Vec::new(), false, opts.timeout)?;
        let mqes = (c.cqe.dw[0] & 0xffff) as u16;
        let mut opts = opts.clone();
        opts.io_queue_size = opts.io_queue_size.min(mqes.saturating_add(1)).max(2);
        let mut sqe = Sqe::new(0x06, 0);
        sqe.dw[10] = 1;
        let c = admin.sync(sqe, vec![0; 4096], false, opts.timeout)?;
        if c.status() != (0, 0) {
            return Err(NvmfError::param(format!(
                "Identify Controller failed: {:?}",
                c.status()
            )));
        }
        let id = c.buf;
        let ioccsz = u32::from_le_bytes(id[1792..1796].try_into().expect("4 bytes")) as usize;
        admin.icd = 8192;
        let ctrlr = TcpController {
            admin,
            id,
            addr,
            subnqn,
            opts,
            next_qid: 1,
        };
        if ioccsz < 4 && ctrlr.id[111] != 2 {
            return Err(NvmfError::param(format!("IOCCSZ {ioccsz} < 4")));
        }
        Ok(ctrlr)
    }

    /// In-capsule data an I/O queue may send (from IOCCSZ).
    pub fn io_icd(&self) -> usize {
        let ioccsz = u32::from_le_bytes(self.id[1792..1796].try_into().expect("4 bytes")) as usize;
        (ioccsz * 16).saturating_sub(64)
    }

    /// Serial number.
    pub fn serial(&self) -> String {
        String::from_utf8_lossy(&self.id[4..24])
            .trim_end()
            .to_string()
    }

    /// Model number.
    pub fn model(&self) -> String {
        String::from_utf8_lossy(&self.id[24..64])
            .trim_end()
            .to_string()
    }

    /// Identify (CNS `cns`, NSID `nsid`).
    pub fn identify(&mut self, cns: u8, nsid: u32) -> Result<Vec<u8>> {
        let mut sqe = Sqe::new(0x06, nsid);
        sqe.dw[10] = cns as u32;
        let c = self
            .admin
            .sync(sqe, vec![0; 4096], false, self.opts.timeout)?;
        if c.status() != (0, 0) {
            return Err(NvmfError::param(format!(
                "Identify CNS {cns} NSID {nsid}: status {:?}",
                c.status()
            )));
        }
        Ok(c.buf)
    }

    /// Active namespaces and their (blocks, block size).
    pub fn namespaces(&mut self) -> Result<Vec<(u32, u64, u32)>> {
        let list = self.identify(2, 0)?;
        let mut out = Vec::new();
        for ch in list.chunks(4) {
            let id = u32::from_le_bytes(ch.try_into().expect("4 bytes"));
            if id == 0 {
                break;
            }
            let ns = self.identify(0, id)?;
            let nsze = u64::from_le_bytes(ns[0..8].try_into().expect("8 bytes"));
            let lbads = ns[130 + (ns[26] as usize & 0xf) * 4];
            out.push((id, nsze, 1u32 << lbads));
        }
        Ok(out)
    }

    /// A new I/O queue pair of `size` entries.
    pub fn alloc_io_qpair(&mut self) -> Result<TcpQpair> {
        let qid = self.next_qid;
        self.next_qid += 1;
        let mut q = TcpQpair::connect(
            self.addr,
            &self.subnqn,
            qid,
            self.admin.cntlid,
            self.opts.io_queue_size,
            &self.opts,
        )?;
        q.icd = self.io_icd();
        Ok(q)
    }
}

/// A read command.
pub fn read_cmd(nsid: u32, lba: u64, nlb: u32) -> Sqe {
    let mut s = Sqe::new(0x02, nsid);
    s.set_slba(lba);
    s.dw[12] = nlb - 1;
    s
}

/// A write command.
pub fn write_cmd(nsid: u32, lba: u64, nlb: u32) -> Sqe {
    let mut s = Sqe::new(0x01, nsid);
    s.set_slba(lba);
    s.dw[12] = nlb - 1;
    s
}
