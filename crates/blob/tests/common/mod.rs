//! Set-up shared by the blobstore tests: the env, a thread, bdevs, and a
//! way to wait for a callback.
#![allow(dead_code, reason = "each test binary uses a subset")]

use std::cell::RefCell;
use std::io::Read;
use std::rc::Rc;
use std::sync::OnceLock;

use rspdk_env::DmaBuf;
use rspdk_thread::testing::UtThreads;

/// The process's env: hugepages when the host gives physical addresses,
/// ordinary pages otherwise.
pub fn env() {
    static ENV: OnceLock<()> = OnceLock::new();
    ENV.get_or_init(|| {
        rspdk_env::init(&rspdk_env::EnvOpts {
            name: "blob-test".into(),
            no_huge: !rspdk_env::sys::pagemap_shows_pfns(),
            mem_size_mb: 256,
            ..Default::default()
        })
        .expect("env init");
    });
}

/// One thread to run the store on.
pub fn threads() -> UtThreads {
    env();
    UtThreads::new(1)
}

/// A malloc bdev of `mib` MiB with 512-byte blocks.
pub fn malloc_disk(name: &str, mib: u64) {
    rspdk_bdev_malloc::create(rspdk_bdev_malloc::MallocOpts {
        name: Some(name.into()),
        num_blocks: mib * 2048,
        block_size: 512,
        ..Default::default()
    })
    .unwrap();
}

/// An aio bdev over `path` with 512-byte blocks.
pub fn aio_disk(name: &str, path: &str) {
    rspdk_bdev_aio::create(rspdk_bdev_aio::AioOpts {
        filename: path.into(),
        name: name.into(),
        block_size: Some(512),
        readonly: false,
        fallocate: true,
        uuid: None,
        nowait: false,
    })
    .unwrap();
}

/// Starts an operation on thread 0 with a completion callback and polls
/// the thread until the callback ran; returns what it got.
pub fn wait<T: 'static>(ut: &UtThreads, start: impl FnOnce(Box<dyn FnOnce(T)>)) -> T {
    let out: Rc<RefCell<Option<T>>> = Rc::default();
    let o = out.clone();
    ut.run_on(0, || start(Box::new(move |v| *o.borrow_mut() = Some(v))));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(v) = out.borrow_mut().take() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the operation never completed"
        );
        ut.poll_threads();
    }
}

/// A DMA buffer holding `bytes`.
pub fn dma(bytes: &[u8]) -> DmaBuf {
    let mut b = DmaBuf::zeroed(bytes.len()).unwrap();
    b.copy_from_slice(bytes);
    b
}

/// A recognisable pattern: byte `i` of the result is a function of
/// `seed` and `i`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2] ^ seed)
        .collect()
}

/// The 64 MiB image SPDK's `blobcli` wrote (tests/fixtures/README.md).
pub fn spdk_image() -> Vec<u8> {
    let packed = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/spdk_blobcli.img.gz.gz"
    ))
    .unwrap();
    let mut once = Vec::new();
    flate2::read::GzDecoder::new(&packed[..])
        .read_to_end(&mut once)
        .unwrap();
    let mut img = Vec::new();
    flate2::read::GzDecoder::new(&once[..])
        .read_to_end(&mut img)
        .unwrap();
    img
}
