//! QoS: an IOPS limit holds within 10% over 5 s of real time, across two
//! threads submitting at once. Real clock, so its own binary.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rspdk_bdev::*;
use rspdk_bdev_null as null;
use rspdk_thread::{now_ns, Thread, ThreadOpts};

#[test]
fn iops_limit_is_enforced_across_threads() {
    rspdk_env::init(&rspdk_env::EnvOpts {
        name: "bdev-qos-test".into(),
        no_huge: !rspdk_env::sys::pagemap_shows_pfns(),
        mem_size_mb: 16,
        ..Default::default()
    })
    .unwrap();
    let setup = Thread::new(ThreadOpts::named("qos_setup"), now_ns()).unwrap();
    setup.enter(|| {
        let b = null::create(null::NullOpts {
            name: "n_qos".into(),
            num_blocks: 1 << 20,
            block_size: 512,
            ..Default::default()
        })
        .unwrap();
        b.set_qos_limits(QosLimits {
            rw_ios_per_sec: 10_000,
            ..Default::default()
        });
    });
    let total = Arc::new(AtomicU64::new(0));
    let secs = 5;
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let total = total.clone();
            std::thread::spawn(move || {
                let t = Thread::new(ThreadOpts::named(&format!("qos_{w}")), now_ns()).unwrap();
                let done = Rc::new(Cell::new(0u64));
                let (desc, ch) = t.enter(|| {
                    let d = bdev_open("n_qos", true, |_| {}).unwrap();
                    let c = d.get_io_channel().unwrap();
                    (Rc::new(d), Rc::new(c))
                });
                let end = now_ns() + secs * 1_000_000_000;
                fn go(ch: Rc<BdevIoChannel>, desc: Rc<BdevDesc>, done: Rc<Cell<u64>>, end: u64) {
                    if now_ns() >= end {
                        return;
                    }
                    let (c2, d2, dn) = (ch.clone(), desc.clone(), done.clone());
                    ch.submit_nodata(&desc, IoType::Flush, 0, 0, move |_| {
                        dn.set(dn.get() + 1);
                        go(c2, d2, dn, end);
                    })
                    .unwrap();
                }
                t.enter(|| {
                    for _ in 0..16 {
                        go(ch.clone(), desc.clone(), done.clone(), end);
                    }
                });
                while now_ns() < end + 50_000_000 {
                    t.poll(64, now_ns());
                }
                total.fetch_add(done.get(), Ordering::Relaxed);
                t.enter(|| {
                    drop(ch);
                    drop(desc);
                });
                t.exit();
                for _ in 0..1000 {
                    if t.is_exited() {
                        break;
                    }
                    t.poll(64, now_ns());
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let rate = total.load(Ordering::Relaxed) as f64 / secs as f64;
    assert!(
        (9_000.0..=11_000.0).contains(&rate),
        "rate {rate} IOPS, limit 10000"
    );
}
