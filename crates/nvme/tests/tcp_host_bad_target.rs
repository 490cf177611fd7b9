//! The NVMe/TCP host against a fake target that answers with garbage:
//! every attempt must end in an error naming the problem, never a panic or
//! a hang (network input is never trusted).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rspdk_nvme::spec::Cqe;
use rspdk_nvme::tcp::pdu::{self, DataHeader, Digests, IcResp, Pdu};
use rspdk_nvme::{Controller, ControllerOpts, TransportId};

/// A one-connection fake target on a free port running `script`.
fn fake(script: impl FnOnce(TcpStream) + Send + 'static) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            script(s);
        }
    });
    port
}

fn connect(port: u16) -> Result<Controller, rspdk_nvme::NvmeError> {
    let trid: TransportId = format!(
        "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:nqn.2016-06.io.spdk:x"
    )
    .parse()
    .unwrap();
    Controller::connect(
        &trid,
        &ControllerOpts {
            admin_timeout_ms: 300,
            keep_alive_timeout_ms: 0,
            ..Default::default()
        },
    )
}

/// Reads the ICReq and answers with a valid ICResp; then reads the
/// Connect capsule (72 + 1024 bytes).
fn handshake(s: &mut TcpStream) -> bool {
    let mut icreq = [0u8; 128];
    if s.read_exact(&mut icreq).is_err() {
        return false;
    }
    let mut out = Vec::new();
    Pdu::IcResp(IcResp {
        pfv: 0,
        cpda: 0,
        hdgst: false,
        ddgst: false,
        maxh2cdata: 131072,
    })
    .emit(&mut out, Digests::default());
    if s.write_all(&out).is_err() {
        return false;
    }
    let mut connect = [0u8; 72 + 1024];
    s.read_exact(&mut connect).is_ok()
}

#[test]
fn random_bytes_after_the_handshake_are_errors() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    for i in 0..200 {
        let len = rng.gen_range(1..300);
        let junk: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let port = fake(move |mut s| {
            if handshake(&mut s) {
                let _ = s.write_all(&junk);
                // Stay silent: the host must give up by itself.
                std::thread::sleep(Duration::from_millis(400));
            }
        });
        let e = connect(port)
            .err()
            .unwrap_or_else(|| panic!("round {i}: junk accepted"));
        assert!(!e.to_string().is_empty());
    }
}

/// Well-formed PDUs with wrong contents: a C2HData or an R2T for a command
/// that is not in flight, data beyond the buffer, a response for an unknown
/// CID, a C2HTermReq, a PDU type the host never receives.
#[test]
fn well_formed_but_wrong_pdus_are_errors() {
    let wrong: Vec<Vec<u8>> = {
        let mut v = Vec::new();
        let dg = Digests::default();
        let mut b = Vec::new();
        Pdu::C2hData {
            hdr: DataHeader {
                cccid: 77,
                ttag: 0,
                datao: 0,
                datal: 4,
            },
            last: true,
            success: true,
            data: &[1, 2, 3, 4],
        }
        .emit(&mut b, dg);
        v.push(b);
        let mut b = Vec::new();
        // CID 0 is the Connect, which reads nothing: C2HData for it is wrong.
        Pdu::C2hData {
            hdr: DataHeader {
                cccid: 0,
                ttag: 0,
                datao: 4000,
                datal: 200,
            },
            last: false,
            success: false,
            data: &[0u8; 200],
        }
        .emit(&mut b, dg);
        v.push(b);
        let mut b = Vec::new();
        Pdu::R2t(DataHeader {
            cccid: 0,
            ttag: 1,
            datao: 512,
            datal: 4096,
        })
        .emit(&mut b, dg);
        v.push(b);
        let mut b = Vec::new();
        let mut cqe = Cqe::default();
        cqe.dw[3] = 999;
        pdu::emit_capsule_resp(&mut b, &cqe, dg);
        v.push(b);
        let mut b = Vec::new();
        Pdu::C2hTermReq {
            fes: 2,
            fei: 0,
            data: &[],
        }
        .emit(&mut b, dg);
        v.push(b);
        let mut b = Vec::new();
        Pdu::IcResp(IcResp::default()).emit(&mut b, dg);
        v.push(b);
        // A header digest the host did not negotiate.
        let mut b = Vec::new();
        pdu::emit_capsule_resp(
            &mut b,
            &cqe,
            Digests {
                header: true,
                data: false,
            },
        );
        v.push(b);
        v
    };
    for (i, bytes) in wrong.into_iter().enumerate() {
        let port = fake(move |mut s| {
            if handshake(&mut s) {
                let _ = s.write_all(&bytes);
                std::thread::sleep(Duration::from_millis(400));
            }
        });
        let e = connect(port)
            .err()
            .unwrap_or_else(|| panic!("case {i}: accepted"));
        let m = e.to_string();
        assert!(
            m.contains("NVMe/TCP 127.0.0.1") || m.contains("timed out"),
            "case {i}: {m}"
        );
    }
}

/// A target that closes at once, or never answers the ICReq.
#[test]
fn silent_or_closing_targets_are_errors() {
    let port = fake(drop);
    let e = connect(port).err().unwrap().to_string();
    assert!(
        e.contains("closed the connection") || e.contains("reset"),
        "{e}"
    );
    let port = fake(|s| {
        std::thread::sleep(Duration::from_millis(800));
        drop(s)
    });
    let e = connect(port).err().unwrap().to_string();
    assert!(e.contains("no ICResp") || e.contains("closed"), "{e}");
}
