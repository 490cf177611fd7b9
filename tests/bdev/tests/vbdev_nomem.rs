//! A virtual bdev whose base runs out of I/O objects parks the I/O and
//! retries it: nothing fails. (Its own binary: it shrinks the process-wide
//! I/O pool.)

use std::cell::RefCell;
use std::rc::Rc;

use rspdk_bdev::*;
use rspdk_bdev_malloc as malloc;
use rspdk_bdev_passthru as passthru;
use rspdk_bdev_split as split;
use rspdk_env::DmaBuf;
use rspdk_thread::testing::UtThreads;

#[test]
fn forwarding_with_an_exhausted_pool_queues_and_retries() {
    rspdk_env::init(&rspdk_env::EnvOpts {
        name: "bdev-nomem-test".into(),
        no_huge: !rspdk_env::sys::pagemap_shows_pfns(),
        mem_size_mb: 32,
        ..Default::default()
    })
    .expect("env init");
    let ut = UtThreads::new(1);
    ut.run_on(0, || {
        malloc::create(malloc::MallocOpts {
            name: Some("nm_m".into()),
            num_blocks: 256,
            block_size: 512,
            ..Default::default()
        })
        .unwrap();
        split::create(split::SplitOpts {
            base_bdev: "nm_m".into(),
            split_count: 2,
            split_size_mb: 0,
        })
        .unwrap();
        passthru::create(passthru::PassthruOpts {
            base_bdev_name: "nm_mp1".into(),
            name: "nm_pt".into(),
            uuid: None,
        })
        .unwrap();
    });
    let desc = ut.run_on(0, || bdev_open("nm_pt", true, |_| {}).unwrap());
    let ch = ut.run_on(0, || desc.get_io_channel().unwrap());
    // Each write needs three objects (passthru, split part, malloc); with
    // four in all, the second write's forwards must wait for the first.
    set_io_pool_options(io_objects_created().max(1) + 4, 0);
    let done: Rc<RefCell<Vec<IoStatus>>> = Rc::default();
    ut.run_on(0, || {
        for i in 0..2u64 {
            let d = done.clone();
            let mut buf = DmaBuf::zeroed(512).unwrap();
            buf.fill(0x30 + i as u8);
            ch.write(&desc, buf, i, move |s, _| d.borrow_mut().push(s))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        // The pool is now spent at the top too: the caller sees NoMemory.
        let e = ch
            .write(&desc, DmaBuf::zeroed(512).unwrap(), 5, |_, _| {})
            .unwrap_err()
            .0;
        assert!(matches!(e, BdevError::NoMemory), "{e}");
    });
    for _ in 0..1000 {
        if done.borrow().len() == 2 {
            break;
        }
        ut.poll_threads();
    }
    assert_eq!(*done.borrow(), vec![IoStatus::Success, IoStatus::Success]);
    set_io_pool_options(65535, 256);
    let base = ut.run_on(0, || bdev_open("nm_m", false, |_| {}).unwrap());
    let bch = ut.run_on(0, || base.get_io_channel().unwrap());
    let got: Rc<RefCell<Option<Vec<u8>>>> = Rc::default();
    let g = got.clone();
    ut.run_on(0, || {
        bch.read(&base, DmaBuf::zeroed(1024).unwrap(), 128, move |s, b| {
            assert!(s.is_ok());
            *g.borrow_mut() = Some(b.to_vec())
        })
        .map_err(|(e, _)| e)
        .unwrap()
    });
    for _ in 0..100 {
        ut.poll_threads();
    }
    let data = got.borrow_mut().take().expect("read done");
    assert!(data[..512].iter().all(|&x| x == 0x30));
    assert!(data[512..].iter().all(|&x| x == 0x31));
}
