//! A small blocking NVMe/TCP host for tests: ICReq, Connect, properties,
//! admin commands, reads and writes (in-capsule or through R2T/H2CData),
//! with or without digests. Built on `rspdk_nvmf::pdu`, it checks what the
//! target sends at every step.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use rspdk_nvme::spec::{Cqe, Sqe};
use rspdk_nvmf::pdu::{self, DataHeader, Digests, IcReq, Pdu};

/// An owned PDU as received.
#[derive(Debug, Clone)]
pub enum Rx {
    IcResp(pdu::IcResp),
    Resp(Cqe),
    C2h {
        hdr: DataHeader,
        last: bool,
        success: bool,
        data: Vec<u8>,
    },
    R2t(DataHeader),
    Term {
        fes: u16,
        fei: u32,
    },
    Other(String),
}

pub struct Host {
    pub s: TcpStream,
    pub dg: Digests,
    pub maxh2cdata: u32,
    rbuf: Vec<u8>,
    cid: u16,
    pub qid: u16,
    pub cntlid: u16,
    pub sqflow_off: bool,
}

pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";

/// Status (SCT, SC) of a completion.
pub fn status(c: &Cqe) -> (u8, u8) {
    let st = c.dw[3] >> 17;
    (((st >> 8) & 7) as u8, (st & 0xff) as u8)
}

impl Host {
    /// TCP connect + ICReq/ICResp.
    pub fn connect(addr: SocketAddr, hdgst: bool, ddgst: bool) -> Host {
        let s = TcpStream::connect(addr).expect("connect to the target");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        let mut h = Host {
            s,
            dg: Digests::default(),
            maxh2cdata: 0,
            rbuf: Vec::new(),
            cid: 0,
            qid: 0,
            cntlid: 0xffff,
            sqflow_off: false,
        };
        h.send(&Pdu::IcReq(IcReq {
            pfv: 0,
            hpda: 0,
            hdgst,
            ddgst,
            maxr2t: 0,
        }));
        match h.recv() {
            Rx::IcResp(r) => {
                assert_eq!(r.pfv, 0);
                assert_eq!(
                    (r.hdgst, r.ddgst),
                    (hdgst, ddgst),
                    "digests granted as asked"
                );
                assert!(r.maxh2cdata >= 4096 && r.maxh2cdata % 4 == 0, "{r:?}");
                h.maxh2cdata = r.maxh2cdata;
            }
            other => panic!("expected ICResp, got {other:?}"),
        }
        h.dg = Digests {
            header: hdgst,
            data: ddgst,
        };
        h
    }

    pub fn send(&mut self, p: &Pdu<'_>) {
        let mut out = Vec::new();
        p.emit(&mut out, self.dg);
        self.s.write_all(&out).expect("send a PDU");
    }

    pub fn send_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("send bytes");
    }

    /// Receives one PDU (panics on timeout or close).
    pub fn recv(&mut self) -> Rx {
        self.try_recv().expect("a PDU from the target")
    }

    /// Receives one PDU, `None` if the target closed the connection.
    pub fn try_recv(&mut self) -> Option<Rx> {
        loop {
            match pdu::parse(&self.rbuf, self.dg, 1 << 24) {
                Ok(Some((p, n))) => {
                    let rx = match p {
                        Pdu::IcResp(r) => Rx::IcResp(r),
                        Pdu::CapsuleResp(c) => Rx::Resp(c),
                        Pdu::C2hData {
                            hdr,
                            last,
                            success,
                            data,
                        } => Rx::C2h {
                            hdr,
                            last,
                            success,
                            data: data.to_vec(),
                        },
                        Pdu::R2t(h) => Rx::R2t(h),
                        Pdu::C2hTermReq { fes, fei, .. } => Rx::Term { fes, fei },
                        other => Rx::Other(format!("{other:?}")),
                    };
                    self.rbuf.drain(..n);
                    return Some(rx);
                }
                Ok(None) => {}
                Err(e) => panic!("target sent a bad PDU: {e}"),
            }
            let mut b = [0u8; 65536];
            match self.s.read(&mut b) {
                Ok(0) => return None,
                Ok(n) => self.rbuf.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read from the target: {e}"),
            }
        }
    }

    fn next_cid(&mut self) -> u16 {
        self.cid = self.cid.wrapping_add(1);
        self.cid
    }

    /// Sends `sqe` with host-to-controller `data` (in-capsule if
    /// `in_capsule`, else through R2T) or expecting `c2h_len` bytes back,
    /// and returns the completion and the data read.
    pub fn cmd(
        &mut self,
        mut sqe: Sqe,
        data: &[u8],
        in_capsule: bool,
        c2h_len: usize,
    ) -> (Cqe, Vec<u8>) {
        let cid = self.next_cid();
        sqe.set_cid(cid);
        sqe.set_psdt(1);
        let len = if data.is_empty() { c2h_len } else { data.len() };
        sqe.dw[8] = len as u32;
        if len > 0 {
            sqe.dw[9] = if !data.is_empty() && in_capsule {
                0x01
            } else {
                0x5a
            } << 24;
        }
        let icd: &[u8] = if in_capsule { data } else { &[] };
        self.send(&Pdu::CapsuleCmd { sqe, data: icd });
        let mut got = Vec::new();
        loop {
            match self.recv() {
                Rx::R2t(h) => {
                    assert_eq!(h.cccid, cid);
                    assert!(
                        !data.is_empty() && !in_capsule,
                        "R2T for a command without R2T data"
                    );
                    let (o, l) = (h.datao as usize, h.datal as usize);
                    assert!(o + l <= data.len(), "R2T beyond the data: {h:?}");
                    let mut off = o;
                    while off < o + l {
                        let n = (o + l - off).min(self.maxh2cdata as usize);
                        self.send(&Pdu::H2cData {
                            hdr: DataHeader {
                                cccid: cid,
                                ttag: h.ttag,
                                datao: off as u32,
                                datal: n as u32,
                            },
                            last: off + n == o + l,
                            data: &data[off..off + n],
                        });
                        off += n;
                    }
                }
                Rx::C2h {
                    hdr,
                    last,
                    success,
                    data: d,
                } => {
                    assert_eq!(hdr.cccid, cid);
                    assert_eq!(hdr.datao as usize, got.len(), "C2HData in order");
                    got.extend_from_slice(&d);
                    if last && success {
                        assert!(self.sqflow_off, "SUCCESS flag while SQ flow control is on");
                        let mut c = Cqe::default();
                        c.dw[3] = cid as u32;
                        return (c, got);
                    }
                }
                Rx::Resp(c) => {
                    assert_eq!(c.cid(), cid, "response for our command");
                    return (c, got);
                }
                other => panic!("unexpected PDU {other:?}"),
            }
        }
    }

    /// Fabrics Connect.
    pub fn fabric_connect(
        &mut self,
        qid: u16,
        sqsize: u16,
        subnqn: &str,
        hostnqn: &str,
        cntlid: u16,
        kato: u32,
    ) -> Cqe {
        let mut sqe = Sqe::new(0x7f, 0x01);
        sqe.dw[10] = (qid as u32) << 16;
        sqe.dw[11] = (sqsize as u32 - 1) | if self.sqflow_off { 0x04 << 16 } else { 0 };
        sqe.dw[12] = kato;
        let mut d = vec![0u8; 1024];
        d[0] = 0x11;
        d[16..18].copy_from_slice(&cntlid.to_le_bytes());
        d[256..256 + subnqn.len()].copy_from_slice(subnqn.as_bytes());
        d[512..512 + hostnqn.len()].copy_from_slice(hostnqn.as_bytes());
        let (c, _) = self.cmd(sqe, &d, true, 0);
        if status(&c) == (0, 0) {
            self.qid = qid;
            self.cntlid = c.dw[0] as u16;
        }
        c
    }

    pub fn prop_get(&mut self, ofst: u32) -> u64 {
        let mut sqe = Sqe::new(0x7f, 0x04);
        sqe.dw[10] = 1;
        sqe.dw[11] = ofst;
        let (c, _) = self.cmd(sqe, &[], false, 0);
        assert_eq!(status(&c), (0, 0));
        c.dw[0] as u64 | ((c.dw[1] as u64) << 32)
    }

    pub fn prop_set(&mut self, ofst: u32, v: u32) {
        let mut sqe = Sqe::new(0x7f, 0x00);
        sqe.dw[11] = ofst;
        sqe.dw[12] = v;
        let (c, _) = self.cmd(sqe, &[], false, 0);
        assert_eq!(status(&c), (0, 0));
    }

    /// Sets CC.EN and checks CSTS.RDY.
    pub fn enable(&mut self) {
        self.prop_set(0x14, 1 | (6 << 16) | (4 << 20));
        assert_eq!(self.prop_get(0x1c) & 1, 1, "CSTS.RDY after CC.EN");
    }

    pub fn identify(&mut self, cns: u8, nsid: u32) -> (Cqe, Vec<u8>) {
        let mut sqe = Sqe::new(0x06, nsid);
        sqe.dw[10] = cns as u32;
        self.cmd(sqe, &[], false, 4096)
    }

    pub fn get_log(&mut self, lid: u8, len: usize, offset: u64) -> (Cqe, Vec<u8>) {
        let mut sqe = Sqe::new(0x02, 0xffff_ffff);
        let numd = (len / 4 - 1) as u32;
        sqe.dw[10] = lid as u32 | ((numd & 0xffff) << 16);
        sqe.dw[11] = numd >> 16;
        sqe.dw[12] = offset as u32;
        sqe.dw[13] = (offset >> 32) as u32;
        self.cmd(sqe, &[], false, len)
    }

    pub fn read(&mut self, nsid: u32, lba: u64, nlb: u32, bs: usize) -> (Cqe, Vec<u8>) {
        let mut sqe = Sqe::new(0x02, nsid);
        sqe.set_slba(lba);
        sqe.dw[12] = nlb - 1;
        self.cmd(sqe, &[], false, nlb as usize * bs)
    }

    pub fn write(&mut self, nsid: u32, lba: u64, data: &[u8], bs: usize, in_capsule: bool) -> Cqe {
        let mut sqe = Sqe::new(0x01, nsid);
        sqe.set_slba(lba);
        sqe.dw[12] = (data.len() / bs) as u32 - 1;
        self.cmd(sqe, data, in_capsule, 0).0
    }

    pub fn compare(&mut self, nsid: u32, lba: u64, data: &[u8], bs: usize) -> Cqe {
        let mut sqe = Sqe::new(0x05, nsid);
        sqe.set_slba(lba);
        sqe.dw[12] = (data.len() / bs) as u32 - 1;
        self.cmd(sqe, data, data.len() <= 4096, 0).0
    }

    pub fn disconnect(&mut self) {
        let sqe = Sqe::new(0x7f, 0x08);
        let (c, _) = self.cmd(sqe, &[], false, 0);
        assert_eq!(status(&c), (0, 0));
        assert!(
            self.try_recv().is_none(),
            "the target closes after Disconnect"
        );
    }
}

/// An admin queue connected and enabled, plus identify's NSID 1 block size.
pub fn admin_queue(addr: SocketAddr, nqn: &str, hd: bool, dd: bool) -> Host {
    let mut h = Host::connect(addr, hd, dd);
    let c = h.fabric_connect(0, 32, nqn, HOSTNQN, 0xffff, 0);
    assert_eq!(status(&c), (0, 0), "admin Connect to {nqn}");
    h.enable();
    h
}

/// An I/O queue of controller `cntlid`.
pub fn io_queue(
    addr: SocketAddr,
    nqn: &str,
    cntlid: u16,
    qid: u16,
    hd: bool,
    dd: bool,
    sqflow_off: bool,
) -> Host {
    let mut h = Host::connect(addr, hd, dd);
    h.sqflow_off = sqflow_off;
    let c = h.fabric_connect(qid, 64, nqn, HOSTNQN, cntlid, 0);
    assert_eq!(status(&c), (0, 0), "I/O Connect qid {qid}");
    h
}
