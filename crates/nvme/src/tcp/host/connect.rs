//! Opening an NVMe/TCP queue: the TCP connection, ICReq/ICResp, and the
//! fabrics Connect command (NVMe-oF 1.1, figures 19-20).

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::queue::{terr, TcpQpair, MAX_PLEN};
use super::{fctype, FABRICS_OPCODE};
use crate::error::{NvmeError, Result};
use crate::queue::{Payload, Request};
use crate::spec::Sqe;
use crate::tcp::pdu::{self, Digests, IcReq, Pdu};

/// What a queue connects with.
pub(crate) struct QueueParams<'a> {
    pub addr: SocketAddr,
    pub subnqn: &'a str,
    pub hostnqn: &'a str,
    pub qid: u16,
    pub cntlid: u16,
    /// Entries (SQSIZE + 1).
    pub size: u16,
    /// Request objects (in flight plus waiting).
    pub requests: usize,
    pub header_digest: bool,
    pub data_digest: bool,
    pub kato_ms: u32,
    pub timeout: Duration,
}

/// A host identifier derived from the host NQN (FNV-1a), stable per NQN.
fn hostid(nqn: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for (i, b) in nqn.bytes().chain(*b"rspdk-host-id-xx").enumerate() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
        out[i % 16] ^= (h >> 24) as u8;
    }
    out
}

impl TcpQpair {
    /// TCP connect, ICReq/ICResp and the fabrics Connect of queue `p.qid`.
    pub(crate) fn connect(p: &QueueParams<'_>) -> Result<TcpQpair> {
        let addr = p.addr;
        let sock = TcpStream::connect_timeout(&addr, p.timeout).map_err(|e| {
            terr(
                &addr,
                format!("connect: {e} (is the target listening there? check traddr and trsvcid)"),
            )
        })?;
        let _ = sock.set_nodelay(true);
        // sock_impl_set_options (posix): buffer sizes, quick ack.
        if let Err(e) = rspdk_sock::apply_client(std::os::fd::AsRawFd::as_raw_fd(&sock)) {
            tracing::warn!(%addr, error = %e, "nvme/tcp: cannot apply the sock options to a connection");
        }
        sock.set_nonblocking(true)
            .map_err(|e| terr(&addr, format!("making the socket non-blocking: {e}")))?;
        let mut q = TcpQpair::new(sock, p);
        Pdu::IcReq(IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: p.header_digest,
            ddgst: p.data_digest,
            maxr2t: 0,
        })
        .emit(&mut q.wbuf, Digests::default());
        let end = Instant::now() + p.timeout;
        loop {
            q.flush()?;
            q.fill()?;
            match pdu::parse(&q.rbuf[q.rstart..q.rend], Digests::default(), MAX_PLEN)
                .map_err(|e| terr(&addr, format!("ICResp: {e}")))?
            {
                Some((Pdu::IcResp(r), n)) => {
                    if r.pfv != 0 {
                        return Err(terr(&addr, format!("ICResp PFV {} (only 0)", r.pfv)));
                    }
                    if r.cpda != 0 {
                        return Err(NvmeError::NotSupported(format!(
                            "controller PDU data alignment CPDA {} (only 0)",
                            r.cpda
                        )));
                    }
                    if (r.hdgst && !p.header_digest) || (r.ddgst && !p.data_digest) {
                        return Err(terr(
                            &addr,
                            "the controller enabled a digest the host did not ask for",
                        ));
                    }
                    if r.hdgst != p.header_digest || r.ddgst != p.data_digest {
                        tracing::warn!(%addr, hdgst = r.hdgst, ddgst = r.ddgst,
                            "the controller did not enable every digest asked for");
                    }
                    q.dg = Digests {
                        header: r.hdgst,
                        data: r.ddgst,
                    };
                    q.maxh2cdata = (r.maxh2cdata as usize).max(4096);
                    q.rstart += n;
                    break;
                }
                Some((Pdu::C2hTermReq { fes, fei, .. }, _)) => {
                    return Err(terr(
                        &addr,
                        format!(
                            "the controller refused the connection (FES {fes:#x}, FEI {fei:#x})"
                        ),
                    ))
                }
                Some((other, _)) => {
                    return Err(terr(&addr, format!("expected ICResp, got {other:?}")))
                }
                None if Instant::now() > end => {
                    return Err(terr(
                        &addr,
                        format!("no ICResp within {} ms", p.timeout.as_millis()),
                    ))
                }
                None => std::thread::sleep(Duration::from_micros(50)),
            }
        }
        // Fabrics Connect (NVMe-oF 1.1, figures 19-20): data in the capsule.
        let mut sqe = Sqe::new(FABRICS_OPCODE, fctype::CONNECT as u32);
        sqe.dw[10] = (p.qid as u32) << 16;
        sqe.dw[11] = (p.size as u32).saturating_sub(1) & 0xffff;
        sqe.dw[12] = if p.qid == 0 { p.kato_ms } else { 0 };
        let mut d = [0u8; 1024];
        d[0..16].copy_from_slice(&hostid(p.hostnqn));
        d[16..18].copy_from_slice(&p.cntlid.to_le_bytes());
        let put = |d: &mut [u8], at: usize, s: &str| {
            let n = s.len().min(255);
            d[at..at + n].copy_from_slice(&s.as_bytes()[..n]);
        };
        put(&mut d, 256, p.subnqn);
        put(&mut d, 512, p.hostnqn);
        let (c, _) = q.sync(
            Request {
                cmd: sqe,
                payload: Payload::Contig {
                    vaddr: d.as_ptr() as usize,
                    len: d.len(),
                },
                ctx: u64::MAX,
            },
            p.timeout,
            &mut |_, _| {},
        )?;
        if c.status.is_error() {
            let hint = match (c.status.sct(), c.status.sc()) {
                (1, 0x82) => format!(
                    " (Connect Invalid Parameters, attribute {:#x} at byte {}: is the subsystem NQN '{}' right, and is this host ({}) allowed?)",
                    (c.cdw0 >> 16) as u8,
                    c.cdw0 & 0xffff,
                    p.subnqn,
                    p.hostnqn
                ),
                (1, 0x84) => format!(" (the host {} is not allowed: nvmf_subsystem_add_host)", p.hostnqn),
                _ => String::new(),
            };
            return Err(NvmeError::Command {
                command: format!("Connect of queue {} to {}{hint}", p.qid, p.subnqn),
                status: c.status,
            });
        }
        q.cntlid = c.cdw0 as u16;
        Ok(q)
    }
}
