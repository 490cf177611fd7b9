//! A tiny I/O pool: submissions beyond it fail with NoMemory, callers park
//! with queue_io_wait and are resumed; every I/O completes. Its own binary:
//! the pool size is process-wide.

use std::cell::Cell;
use std::rc::Rc;

use rspdk_bdev::*;
use rspdk_bdev_null as null;
use rspdk_thread::testing::UtThreads;

#[test]
fn exhausted_pool_queues_and_resumes_without_losing_io() {
    rspdk_env::init(&rspdk_env::EnvOpts {
        name: "bdev-pool-test".into(),
        no_huge: !rspdk_env::sys::pagemap_shows_pfns(),
        mem_size_mb: 16,
        ..Default::default()
    })
    .unwrap();
    set_io_pool_options(4, 4);
    let ut = UtThreads::new(1);
    ut.run_on(0, || {
        null::create(null::NullOpts {
            name: "n_pool".into(),
            num_blocks: 1024,
            block_size: 512,
            ..Default::default()
        })
        .unwrap()
    });
    let desc = Rc::new(ut.run_on(0, || bdev_open("n_pool", true, |_| {}).unwrap()));
    let ch = Rc::new(ut.run_on(0, || desc.get_io_channel().unwrap()));
    let completed = Rc::new(Cell::new(0u32));
    let nomem = Rc::new(Cell::new(0u32));

    fn submit(
        ch: Rc<BdevIoChannel>,
        desc: Rc<BdevDesc>,
        n: u64,
        completed: Rc<Cell<u32>>,
        nomem: Rc<Cell<u32>>,
    ) {
        let c = completed.clone();
        match ch.submit_nodata(&desc, IoType::WriteZeroes, n % 1000, 1, move |s| {
            assert!(s.is_ok());
            c.set(c.get() + 1)
        }) {
            Ok(()) => {}
            Err(BdevError::NoMemory) => {
                nomem.set(nomem.get() + 1);
                let ch2 = ch.clone();
                ch.queue_io_wait(move || submit(ch2, desc, n, completed, nomem));
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    ut.run_on(0, || {
        for n in 0..100 {
            submit(
                ch.clone(),
                desc.clone(),
                n,
                completed.clone(),
                nomem.clone(),
            );
        }
    });
    for _ in 0..10_000 {
        if completed.get() == 100 {
            break;
        }
        ut.poll_threads();
    }
    assert_eq!(completed.get(), 100, "every I/O completed");
    assert!(
        nomem.get() >= 96,
        "the pool of 4 ran out: {} NoMemory",
        nomem.get()
    );
    assert!(io_objects_created() <= 4);
}
