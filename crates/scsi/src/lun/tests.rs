//! The SCSI layer in process, on a malloc bdev: CDB handling, INQUIRY
//! and its VPD pages, MODE SENSE, READ CAPACITY(10/16), REPORT LUNS,
//! sense data and unit attentions, reservations, READ/WRITE.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use rspdk_thread::testing::UtThreads;

use crate::{encode_lun, key, status, Done, ScsiCommand, ScsiDev, ScsiResult, Sense, VENDOR_ID};

const BLOCKS: u64 = 2048;
const BS: u32 = 512;

fn env() {
    static ENV: OnceLock<()> = OnceLock::new();
    ENV.get_or_init(|| {
        rspdk_bdev::module_register(Arc::new(rspdk_bdev_malloc::MallocModule));
        rspdk_env::init(&rspdk_env::EnvOpts {
            name: "scsi-test".into(),
            no_huge: !rspdk_env::sys::pagemap_shows_pfns(),
            mem_size_mb: 64,
            ..Default::default()
        })
        .expect("env init");
    });
}

/// A device with LUN 0 on a fresh malloc bdev, driven on one thread.
struct Lun {
    ut: UtThreads,
    dev: Arc<ScsiDev>,
}

impl Lun {
    fn new(name: &str) -> Lun {
        env();
        let ut = UtThreads::new(1);
        let dev = ScsiDev::new(name);
        ut.run_on(0, || {
            rspdk_bdev_malloc::create(rspdk_bdev_malloc::MallocOpts {
                name: Some(name.into()),
                num_blocks: BLOCKS,
                block_size: BS,
                ..Default::default()
            })
            .expect("malloc bdev");
            dev.add_lun(0, name).expect("LUN 0");
        });
        Lun { ut, dev }
    }

    /// Runs `cdb` (with `data_out`) from `nexus` on `lun` to completion.
    fn run_on(&self, lun: u64, nexus: &str, cdb: &[u8], data_out: &[u8]) -> ScsiResult {
        let out: Rc<RefCell<Option<ScsiResult>>> = Rc::default();
        let o = out.clone();
        let cmd = ScsiCommand {
            cdb: cdb.to_vec(),
            data_out: data_out.to_vec(),
            nexus: nexus.into(),
        };
        self.ut.run_on(0, || {
            self.dev
                .execute(lun, &cmd, Done::new(move |r| *o.borrow_mut() = Some(r)))
        });
        for _ in 0..10_000 {
            if out.borrow().is_some() {
                break;
            }
            self.ut.poll_threads();
        }
        let r = out.borrow_mut().take();
        r.expect("the command never completed")
    }

    fn run(&self, cdb: &[u8], data_out: &[u8]) -> ScsiResult {
        self.run_on(0, "iqn.a,i,0x1", cdb, data_out)
    }

    fn good(&self, cdb: &[u8]) -> Vec<u8> {
        let r = self.run(cdb, &[]);
        assert_eq!(r.status, status::GOOD, "{cdb:02x?}: {:?}", r.sense);
        r.data.to_vec()
    }
}

impl Drop for Lun {
    fn drop(&mut self) {
        let dev = self.dev.clone();
        self.ut.run_on(0, || {
            dev.close();
            crate::release_thread_channels();
        });
        self.ut.poll_threads();
    }
}

fn sense_of(r: &ScsiResult) -> (u8, u8, u8) {
    assert_eq!(r.status, status::CHECK_CONDITION);
    let s = r.sense.expect("sense data");
    let f = s.fixed();
    (f[2] & 0x0f, f[12], f[13])
}

fn inquiry(evpd: bool, page: u8, alloc: u16) -> Vec<u8> {
    let a = alloc.to_be_bytes();
    vec![0x12, u8::from(evpd), page, a[0], a[1], 0]
}

#[test]
fn short_and_unknown_cdbs() {
    let l = Lun::new("scsi_t_cdb");
    // A READ(10) cut short, an empty CDB, an opcode nobody has.
    assert_eq!(sense_of(&l.run(&[0x28, 0, 0], &[])).0, key::ILLEGAL_REQUEST);
    assert_eq!(sense_of(&l.run(&[], &[])).0, key::ILLEGAL_REQUEST);
    assert_eq!(
        sense_of(&l.run(&[0xff, 0, 0, 0, 0, 0], &[])),
        (key::ILLEGAL_REQUEST, 0x20, 0)
    );
    // TEST UNIT READY.
    assert!(l.good(&[0, 0, 0, 0, 0, 0]).is_empty());
}

#[test]
fn standard_inquiry_and_vpd_pages() {
    let l = Lun::new("scsi_t_inq");
    let d = l.good(&inquiry(false, 0, 255));
    assert_eq!(d[0], 0x00, "direct access block device");
    assert!(d[2] >= 5, "SPC-3 or later");
    assert_eq!(usize::from(d[4]) + 5, d.len(), "additional length");
    assert_eq!(&d[8..16], VENDOR_ID);
    // The allocation length truncates.
    assert_eq!(l.good(&inquiry(false, 0, 10)).len(), 10);
    // A page code without EVPD is an invalid field.
    assert_eq!(
        sense_of(&l.run(&inquiry(false, 0x80, 255), &[])),
        (key::ILLEGAL_REQUEST, 0x24, 0)
    );
    // Supported VPD pages, each of them answered with its own code.
    let d = l.good(&inquiry(true, 0, 255));
    assert_eq!(d[1], 0);
    let pages = d[4..4 + usize::from(u16::from_be_bytes([d[2], d[3]]))].to_vec();
    assert!(pages.starts_with(&[0x00, 0x80, 0x83]), "{pages:02x?}");
    for p in pages {
        let v = l.good(&inquiry(true, p, 1024));
        assert_eq!(v[1], p);
        assert_eq!(
            usize::from(u16::from_be_bytes([v[2], v[3]])) + 4,
            v.len(),
            "page {p:02x}"
        );
    }
    // Unit serial number: 20 printable bytes.
    let s = l.good(&inquiry(true, 0x80, 255));
    assert_eq!(s.len(), 24);
    assert!(s[4..].iter().all(|c| c.is_ascii_hexdigit()));
    // Device identification: an NAA designator first (binary, 16 bytes).
    let id = l.good(&inquiry(true, 0x83, 255));
    assert_eq!((id[4] & 0x0f, id[5] & 0x0f, id[7]), (1, 3, 16));
    assert_eq!(id[8] >> 4, 6, "NAA IEEE Registered Extended");
    // Block limits: maximum transfer length in blocks.
    let bl = l.good(&inquiry(true, 0xb0, 255));
    let max = u32::from_be_bytes([bl[8], bl[9], bl[10], bl[11]]);
    assert_eq!(
        u64::from(max),
        crate::lun::MAX_TRANSFER_BYTES / u64::from(BS)
    );
    // An unknown page.
    assert_eq!(sense_of(&l.run(&inquiry(true, 0x7e, 255), &[])).1, 0x24);
}

#[test]
fn read_capacity_10_and_16() {
    let l = Lun::new("scsi_t_cap");
    let d = l.good(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(d.len(), 8);
    assert_eq!(
        u32::from_be_bytes([d[0], d[1], d[2], d[3]]),
        BLOCKS as u32 - 1
    );
    assert_eq!(u32::from_be_bytes([d[4], d[5], d[6], d[7]]), BS);
    let mut c16 = [0u8; 16];
    c16[0] = 0x9e;
    c16[1] = 0x10;
    c16[13] = 32;
    let d = l.good(&c16);
    assert_eq!(d.len(), 32);
    assert_eq!(u64::from_be_bytes(d[0..8].try_into().unwrap()), BLOCKS - 1);
    assert_eq!(u32::from_be_bytes(d[8..12].try_into().unwrap()), BS);
    // Another service action of 9Eh is an invalid field.
    c16[1] = 0x1f;
    assert_eq!(sense_of(&l.run(&c16, &[])).1, 0x24);
}

#[test]
fn mode_sense_6_and_10() {
    let l = Lun::new("scsi_t_mode");
    // MODE SENSE(6), all pages, with the block descriptor.
    let d = l.good(&[0x1a, 0, 0x3f, 0, 255, 0]);
    assert_eq!(usize::from(d[0]) + 1, d.len(), "mode data length");
    assert_eq!(d[3], 8, "one short block descriptor");
    assert_eq!(u32::from_be_bytes([0, d[9], d[10], d[11]]), BS);
    let pages: Vec<u8> = {
        let mut v = Vec::new();
        let mut i = 4 + 8;
        while i + 1 < d.len() {
            v.push(d[i] & 0x3f);
            i += 2 + usize::from(d[i + 1]);
        }
        v
    };
    assert_eq!(
        pages,
        [0x08, 0x0a, 0x1c],
        "caching, control, informational exceptions"
    );
    // DBD: no block descriptor; the caching page alone.
    let d = l.good(&[0x1a, 0x08, 0x08, 0, 255, 0]);
    assert_eq!((d[3], d[4], d[5]), (0, 0x08, 0x12));
    // MODE SENSE(10) with long LBA: a 16-byte descriptor.
    let d = l.good(&[0x5a, 0x10, 0x0a, 0, 0, 0, 0, 1, 0, 0]);
    assert_eq!(usize::from(u16::from_be_bytes([d[0], d[1]])) + 2, d.len());
    assert_eq!(d[4] & 1, 1, "LONGLBA");
    assert_eq!(u16::from_be_bytes([d[6], d[7]]), 16);
    assert_eq!(u64::from_be_bytes(d[8..16].try_into().unwrap()), BLOCKS);
    assert_eq!(d[24], 0x0a, "control page");
    // Saved values are not supported; an unknown page is an invalid field.
    assert_eq!(
        sense_of(&l.run(&[0x1a, 0, 0xc8, 0, 255, 0], &[])),
        (key::ILLEGAL_REQUEST, 0x39, 0)
    );
    assert_eq!(sense_of(&l.run(&[0x1a, 0, 0x01, 0, 255, 0], &[])).1, 0x24);
}

#[test]
fn report_luns_and_missing_luns() {
    let l = Lun::new("scsi_t_rl");
    let mut c = [0u8; 12];
    c[0] = 0xa0;
    c[9] = 255;
    let r = l.run(&c, &[]);
    assert_eq!(r.status, status::GOOD);
    let d = r.data.to_vec();
    assert_eq!(u32::from_be_bytes([d[0], d[1], d[2], d[3]]), 8, "one LUN");
    assert_eq!(
        u64::from_be_bytes(d[8..16].try_into().unwrap()),
        encode_lun(0)
    );
    // Allocation length under 16: invalid field.
    c[9] = 8;
    assert_eq!(sense_of(&l.run(&c, &[])).1, 0x24);
    // A LUN that does not exist: INQUIRY says "no device", others fail.
    let d = l.run_on(5, "iqn.a,i,0x1", &inquiry(false, 0, 36), &[]);
    assert_eq!(d.status, status::GOOD);
    assert_eq!(d.data.to_vec()[0], 0x7f);
    let r = l.run_on(5, "iqn.a,i,0x1", &[0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(sense_of(&r), (key::ILLEGAL_REQUEST, 0x25, 0));
}

#[test]
fn reset_unit_attention_is_reported_once_and_by_request_sense() {
    let l = Lun::new("scsi_t_ua");
    // Both nexuses known before the reset.
    l.good(&[0, 0, 0, 0, 0, 0]);
    assert_eq!(
        l.run_on(0, "iqn.b,i,0x2", &[0; 6], &[]).status,
        status::GOOD
    );
    l.dev.lun(0).unwrap().reset();
    // INQUIRY passes the unit attention by.
    l.good(&inquiry(false, 0, 36));
    let r = l.run(&[0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(sense_of(&r), (key::UNIT_ATTENTION, 0x29, 0x03));
    assert_eq!(l.run(&[0; 6], &[]).status, status::GOOD, "reported once");
    // The other nexus gets it through REQUEST SENSE (fixed format).
    let r = l.run_on(0, "iqn.b,i,0x2", &[0x03, 0, 0, 0, 18, 0], &[]);
    assert_eq!(r.status, status::GOOD);
    let d = r.data.to_vec();
    assert_eq!(
        (d[0] & 0x7f, d[2] & 0x0f, d[12], d[13]),
        (0x70, key::UNIT_ATTENTION, 0x29, 0x03)
    );
    // Sense data formats.
    let f = Sense::LBA_OUT_OF_RANGE.fixed();
    assert_eq!((f.len(), f[7]), (18, 10), "additional sense length");
    assert_eq!(
        &Sense::INVALID_OPCODE.descriptor()[..4],
        &[0x72, 5, 0x20, 0]
    );
}

#[test]
fn reservations_between_two_nexuses() {
    let l = Lun::new("scsi_t_resv");
    let (a, b) = ("iqn.a,i,0x1", "iqn.b,i,0x2");
    let write = |n: &str| l.run_on(0, n, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[0x11; 512]);
    // SCSI-2 RESERVE by A: B may not write, A may; RELEASE frees it.
    assert_eq!(
        l.run_on(0, a, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        status::GOOD
    );
    assert_eq!(write(b).status, status::RESERVATION_CONFLICT);
    assert_eq!(write(a).status, status::GOOD);
    assert_eq!(
        l.run_on(0, b, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        status::RESERVATION_CONFLICT
    );
    assert_eq!(
        l.run_on(0, a, &[0x17, 0, 0, 0, 0, 0], &[]).status,
        status::GOOD
    );
    assert_eq!(write(b).status, status::GOOD);
    // Persistent: A registers key 0xAA and takes Write Exclusive.
    let pr_out = |n: &str, sa: u8, ty: u8, key: u64, sakey: u64| {
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sakey.to_be_bytes());
        let c = [0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0];
        l.run_on(0, n, &c, &p)
    };
    assert_eq!(pr_out(a, 0, 0, 0, 0xaa).status, status::GOOD, "REGISTER");
    assert_eq!(pr_out(a, 1, 1, 0xaa, 0).status, status::GOOD, "RESERVE WE");
    let keys = l.good(&[0x5e, 0, 0, 0, 0, 0, 0, 0, 255, 0]);
    assert_eq!(u32::from_be_bytes(keys[4..8].try_into().unwrap()), 8);
    assert_eq!(u64::from_be_bytes(keys[8..16].try_into().unwrap()), 0xaa);
    let rsv = l.good(&[0x5e, 1, 0, 0, 0, 0, 0, 0, 255, 0]);
    assert_eq!(
        (rsv[7], rsv[21] & 0x0f),
        (16, 1),
        "held, type Write Exclusive"
    );
    assert_eq!(write(b).status, status::RESERVATION_CONFLICT);
    assert_eq!(write(a).status, status::GOOD);
    // Reads stay open under Write Exclusive.
    let r = l.run_on(0, b, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]);
    assert_eq!(r.status, status::GOOD);
    // A wrong parameter list length.
    let c = [0x5f, 0, 0, 0, 0, 0, 0, 0, 8, 0];
    assert_eq!(sense_of(&l.run_on(0, a, &c, &[0; 8])).1, 0x1a);
}

#[test]
fn write_then_read_back_and_range_checks() {
    let l = Lun::new("scsi_t_rw");
    let data: Vec<u8> = (0..2048u32).map(|i| (i * 7) as u8).collect();
    let w = l.run(&[0x2a, 0, 0, 0, 0, 100, 0, 0, 4, 0], &data);
    assert_eq!(w.status, status::GOOD, "{:?}", w.sense);
    assert_eq!(l.good(&[0x28, 0, 0, 0, 0, 100, 0, 0, 4, 0]), data);
    // READ(16) of the same blocks.
    let mut c = [0u8; 16];
    c[0] = 0x88;
    c[9] = 100;
    c[13] = 4;
    assert_eq!(l.good(&c), data);
    // Past the end: LBA out of range.
    let last = (BLOCKS as u32).to_be_bytes();
    let r = l.run(
        &[0x28, 0, last[0], last[1], last[2], last[3], 0, 0, 1, 0],
        &[],
    );
    assert_eq!(sense_of(&r), (key::ILLEGAL_REQUEST, 0x21, 0));
}

#[test]
fn report_supported_operation_codes() {
    let l = Lun::new("scsi_t_rsoc");
    let rsoc = |opt: u8, op: u8| [0xa3, 0x0c, opt, op, 0, 0, 0, 0, 4, 0, 0, 0];
    // All commands: 8-byte descriptors after the 4-byte length.
    let d = l.good(&rsoc(0, 0));
    let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
    assert_eq!(len + 4, d.len());
    assert_eq!(len % 8, 0);
    let ops: Vec<u8> = d[4..].chunks(8).map(|c| c[0]).collect();
    for op in [0x00, 0x12, 0x25, 0x28, 0x2a, 0x88, 0x8a, 0xa0] {
        assert!(ops.contains(&op), "{op:#04x} not reported");
    }
    // One command: READ(10) supported, with its 10-byte usage bitmap.
    let d = l.good(&rsoc(1, 0x28));
    assert_eq!((d[1] & 0x07, u16::from_be_bytes([d[2], d[3]])), (3, 10));
    assert_eq!((d.len(), d[4]), (14, 0x28));
    // An opcode we do not have: "not supported".
    assert_eq!(l.good(&rsoc(1, 0xf0))[1] & 0x07, 1);
    // Reporting option 7 is reserved.
    assert_eq!(sense_of(&l.run(&rsoc(7, 0), &[])).1, 0x24);
}
