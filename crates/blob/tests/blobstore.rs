//! The blobstore over real bdevs (malloc, aio), run on one rspdk thread.

mod common;

use common::*;
use rspdk_blob::{wire, Blob, BlobError, BlobOpts, Blobstore, BlobstoreOpts};
use rspdk_env::DmaBuf;
use rspdk_thread::testing::UtThreads;

const MIB: usize = 1 << 20;

fn init(ut: &UtThreads, bdev: &str) -> Blobstore {
    wait(ut, |d| Blobstore::init(bdev, BlobstoreOpts::default(), d)).unwrap()
}

fn load(ut: &UtThreads, bdev: &str) -> Result<Blobstore, BlobError> {
    wait(ut, |d| Blobstore::load(bdev, d))
}

fn unload(ut: &UtThreads, bs: Blobstore) {
    wait(ut, |d| bs.unload(d)).unwrap()
}

fn create(ut: &UtThreads, bs: &Blobstore, opts: BlobOpts) -> u64 {
    wait(ut, |d| bs.create_blob(opts, d)).unwrap()
}

fn open(ut: &UtThreads, bs: &Blobstore, id: u64) -> Blob {
    wait(ut, |d| bs.open_blob(id, d)).unwrap()
}

fn close(ut: &UtThreads, b: Blob) {
    wait(ut, |d| b.close(d)).unwrap()
}

fn sync(ut: &UtThreads, b: &Blob) {
    wait(ut, |d| b.sync_md(d)).unwrap()
}

fn write(ut: &UtThreads, b: &Blob, offset: u64, data: &[u8]) {
    let (r, _) = wait(ut, |d| {
        b.write(dma(data), offset, move |r, buf| d((r, buf)))
    });
    r.unwrap()
}

fn read(ut: &UtThreads, b: &Blob, offset: u64, len: usize) -> Vec<u8> {
    let (r, buf) = wait(ut, |d| {
        b.read(DmaBuf::zeroed(len).unwrap(), offset, move |r, buf| {
            d((r, buf))
        })
    });
    r.unwrap();
    buf.to_vec()
}

fn drop_on(ut: &UtThreads, bs: Blobstore) {
    ut.run_on(0, move || drop(bs));
}

#[test]
fn init_load_unload_round_trip() {
    let ut = threads();
    malloc_disk("rt0", 64);
    let bs = init(&ut, "rt0");
    assert_eq!(bs.cluster_size(), MIB as u32);
    assert_eq!(bs.total_clusters(), 64);
    let free0 = bs.free_clusters();
    let thick = create(
        &ut,
        &bs,
        BlobOpts {
            num_clusters: 4,
            xattrs: vec![("name".into(), b"thick".to_vec())],
            ..Default::default()
        },
    );
    let thin = create(
        &ut,
        &bs,
        BlobOpts {
            num_clusters: 10,
            thin_provision: true,
            internal_xattrs: vec![("uuid".into(), b"1234".to_vec())],
            ..Default::default()
        },
    );
    assert_eq!(bs.free_clusters(), free0 - 4);
    unload(&ut, bs);

    let bs = load(&ut, "rt0").unwrap();
    assert!(!bs.super_block().clean, "a loaded store is marked in use");
    assert_eq!(bs.blob_ids(), vec![thick, thin]);
    assert_eq!(bs.free_clusters(), free0 - 4);
    let b = open(&ut, &bs, thick);
    assert_eq!(b.num_clusters(), 4);
    assert!(!b.is_thin_provisioned());
    assert_eq!(b.get_xattr("name").unwrap(), b"thick");
    close(&ut, b);
    let b = open(&ut, &bs, thin);
    assert_eq!(b.num_clusters(), 10);
    assert_eq!(b.num_allocated_clusters(), 0);
    assert!(b.is_thin_provisioned());
    assert_eq!(b.get_internal_xattr("uuid").unwrap(), b"1234");
    assert_eq!(b.get_xattr("uuid"), None);
    close(&ut, b);
    unload(&ut, bs);
}

#[test]
fn dirty_load_rebuilds_the_masks() {
    let ut = threads();
    malloc_disk("dirty0", 64);
    let bs = init(&ut, "dirty0");
    let a = create(
        &ut,
        &bs,
        BlobOpts {
            num_clusters: 3,
            ..Default::default()
        },
    );
    let t = create(
        &ut,
        &bs,
        BlobOpts {
            num_clusters: 8,
            thin_provision: true,
            ..Default::default()
        },
    );
    // A blob with enough xattrs to need a chain of several pages.
    let big = create(
        &ut,
        &bs,
        BlobOpts {
            num_clusters: 1,
            xattrs: (0..6)
                .map(|i| (format!("x{i}"), vec![i as u8; 1500]))
                .collect(),
            ..Default::default()
        },
    );
    let b = open(&ut, &bs, t);
    write(&ut, &b, 2048 * 5 + 7, &pattern(512, 1));
    close(&ut, b);
    let (free, pages) = (bs.free_clusters(), bs.used_md_pages());
    assert!(pages >= 4, "the big blob's chain spans pages: {pages}");
    // Crash: no unload; the super block still says "not clean".
    drop_on(&ut, bs);

    let bs = load(&ut, "dirty0").unwrap();
    assert_eq!(bs.blob_ids(), vec![a, t, big]);
    assert_eq!(bs.free_clusters(), free, "no cluster leaked or lost");
    assert_eq!(bs.used_md_pages(), pages);
    let b = open(&ut, &bs, big);
    assert_eq!(b.get_xattr("x5").unwrap(), vec![5u8; 1500]);
    close(&ut, b);
    let b = open(&ut, &bs, t);
    assert_eq!(b.num_allocated_clusters(), 1);
    assert_eq!(read(&ut, &b, 2048 * 5 + 7, 512), pattern(512, 1));
    close(&ut, b);
    unload(&ut, bs);
}

#[test]
fn create_resize_delete_accounts_every_cluster() {
    let ut = threads();
    malloc_disk("acct0", 64);
    let bs = init(&ut, "acct0");
    let (free0, pages0) = (bs.free_clusters(), bs.used_md_pages());
    let id = create(
        &ut,
        &bs,
        BlobOpts {
            num_clusters: 5,
            ..Default::default()
        },
    );
    assert_eq!(bs.free_clusters(), free0 - 5);
    let b = open(&ut, &bs, id);
    b.resize(8).unwrap();
    assert_eq!(bs.free_clusters(), free0 - 8);
    sync(&ut, &b);
    b.resize(2).unwrap();
    // Released only once the metadata no longer names them.
    assert_eq!(bs.free_clusters(), free0 - 8);
    sync(&ut, &b);
    assert_eq!(bs.free_clusters(), free0 - 2);
    let too_many = bs.free_clusters() + 3;
    assert!(matches!(b.resize(too_many), Err(BlobError::NoSpace { .. })));
    assert_eq!(
        bs.free_clusters(),
        free0 - 2,
        "a refused resize claims nothing"
    );
    b.set_xattr("k", b"v").unwrap();
    b.remove_xattr("k").unwrap();
    assert!(matches!(b.remove_xattr("k"), Err(BlobError::NoXattr(_))));
    close(&ut, b);
    // Persisted: reload and look.
    unload(&ut, bs);
    let bs = load(&ut, "acct0").unwrap();
    assert_eq!(bs.free_clusters(), free0 - 2);
    let b = open(&ut, &bs, id);
    assert_eq!(b.num_clusters(), 2);
    assert!(matches!(
        wait(&ut, |d| bs.delete_blob(id, d)),
        Err(BlobError::Busy(_))
    ));
    close(&ut, b);
    wait(&ut, |d| bs.delete_blob(id, d)).unwrap();
    assert_eq!(bs.free_clusters(), free0);
    assert_eq!(bs.used_md_pages(), pages0);
    assert!(bs.blob_ids().is_empty());
    assert!(matches!(
        wait(&ut, |d| bs.open_blob(id, d)),
        Err(BlobError::NotFound(_))
    ));
    unload(&ut, bs);
    let bs = load(&ut, "acct0").unwrap();
    assert_eq!(bs.free_clusters(), free0);
    assert!(bs.blob_ids().is_empty());
    unload(&ut, bs);
}

#[test]
fn thin_blob_allocates_on_first_write() {
    let ut = threads();
    malloc_disk("thin0", 64);
    let bs = init(&ut, "thin0");
    let free0 = bs.free_clusters();
    let id = create(
        &ut,
        &bs,
        BlobOpts {
            num_clusters: 4,
            thin_provision: true,
            ..Default::default()
        },
    );
    assert_eq!(bs.free_clusters(), free0);
    let b = open(&ut, &bs, id);
    assert_eq!(read(&ut, &b, 0, 4 * MIB), vec![0; 4 * MIB]);
    assert_eq!(b.num_allocated_clusters(), 0);
    // Two writes to the same new cluster at once: one allocation.
    let done = std::rc::Rc::new(std::cell::Cell::new(0));
    ut.run_on(0, || {
        for (off, seed) in [(2048 * 2 + 8, 3u8), (2048 * 2 + 100, 4u8)] {
            let d = done.clone();
            b.write(dma(&pattern(1024, seed)), off, move |r, _| {
                r.unwrap();
                d.set(d.get() + 1)
            });
        }
    });
    while done.get() < 2 {
        ut.poll_threads();
    }
    assert_eq!(b.num_allocated_clusters(), 1);
    assert_eq!(bs.free_clusters(), free0 - 1);
    let c2 = read(&ut, &b, 2048 * 2, MIB);
    assert_eq!(&c2[8 * 512..8 * 512 + 1024], &pattern(1024, 3)[..]);
    assert_eq!(&c2[100 * 512..100 * 512 + 1024], &pattern(1024, 4)[..]);
    assert!(c2[..8 * 512].iter().all(|&x| x == 0));
    assert!(c2[102 * 512..].iter().all(|&x| x == 0));
    close(&ut, b);
    // The allocation was persisted without an explicit sync.
    drop_on(&ut, bs);
    let bs = load(&ut, "thin0").unwrap();
    let b = open(&ut, &bs, id);
    assert_eq!(b.num_allocated_clusters(), 1);
    assert_eq!(read(&ut, &b, 2048 * 2 + 8, 1024), pattern(1024, 3));
    close(&ut, b);
    unload(&ut, bs);
}

#[test]
fn read_your_writes_across_cluster_boundaries() {
    let ut = threads();
    malloc_disk("span0", 64);
    let bs = init(&ut, "span0");
    for thin in [false, true] {
        let id = create(
            &ut,
            &bs,
            BlobOpts {
                num_clusters: 3,
                thin_provision: thin,
                ..Default::default()
            },
        );
        let b = open(&ut, &bs, id);
        // From the last 4 KiB of cluster 0 through all of cluster 1 into 2.
        let data = pattern(MIB + 12 * 1024, thin as u8);
        let off = 2048 - 8;
        write(&ut, &b, off, &data);
        assert_eq!(read(&ut, &b, off, data.len()), data);
        // A read that spans written and (thin) never-written clusters.
        let all = read(&ut, &b, 0, 3 * MIB);
        assert_eq!(
            &all[off as usize * 512..off as usize * 512 + data.len()],
            &data[..]
        );
        let err = wait(&ut, |d| {
            b.read(DmaBuf::zeroed(1024).unwrap(), 3 * 2048 - 1, move |r, _| {
                d(r)
            })
        });
        assert!(matches!(err, Err(BlobError::OutOfRange { .. })));
        close(&ut, b);
    }
    unload(&ut, bs);
}

#[test]
fn read_only_blob_refuses_writes_and_changes() {
    let ut = threads();
    malloc_disk("ro0", 64);
    let bs = init(&ut, "ro0");
    let id = create(
        &ut,
        &bs,
        BlobOpts {
            num_clusters: 1,
            ..Default::default()
        },
    );
    let b = open(&ut, &bs, id);
    b.set_read_only().unwrap();
    sync(&ut, &b);
    assert!(matches!(b.resize(2), Err(BlobError::ReadOnly(_))));
    let r = wait(&ut, |d| b.write(dma(&[0; 512]), 0, move |r, _| d(r)));
    assert!(matches!(r, Err(BlobError::ReadOnly(_))));
    close(&ut, b);
    let b = open(&ut, &bs, id);
    assert!(b.is_read_only());
    close(&ut, b);
    unload(&ut, bs);
}

/// Writes `bytes` at byte `offset` of a bdev (for corrupting images).
fn poke(ut: &UtThreads, bdev: &str, offset: u64, bytes: &[u8]) {
    let (desc, ch) = ut.run_on(0, || {
        let desc = rspdk_bdev::bdev_open(bdev, true, |_| {}).unwrap();
        let ch = desc.get_io_channel().unwrap();
        (desc, ch)
    });
    let lba = offset / 512;
    let (s, mut block) = wait(ut, |d| {
        ch.read(&desc, DmaBuf::zeroed(512).unwrap(), lba, move |s, b| {
            d((s, b))
        })
        .unwrap()
    });
    assert!(s.is_ok());
    let at = (offset % 512) as usize;
    block[at..at + bytes.len()].copy_from_slice(bytes);
    let (s, _) = wait(ut, |d| {
        ch.write(&desc, block, lba, move |s, b| d((s, b))).unwrap()
    });
    assert!(s.is_ok());
    ut.run_on(0, move || {
        drop(ch);
        drop(desc);
    });
}

#[test]
fn corrupted_super_block_and_md_page_are_refused_by_name() {
    let ut = threads();
    malloc_disk("bad0", 64);
    let bs = init(&ut, "bad0");
    let id = create(
        &ut,
        &bs,
        BlobOpts {
            num_clusters: 1,
            ..Default::default()
        },
    );
    let md_start = bs.super_block().md.start as u64;
    unload(&ut, bs);

    // One flipped byte in the blob's md page: its CRC fails.
    let page_off = (md_start + wire::blobid_to_page(id) as u64) * 4096;
    poke(&ut, "bad0", page_off + 40, &[0x55]);
    let bs = load(&ut, "bad0").unwrap();
    let e = wait(&ut, |d| bs.open_blob(id, d)).unwrap_err();
    assert!(
        matches!(
            e,
            BlobError::Wire(wire::WireError::BadCrc {
                what: "md page",
                ..
            })
        ),
        "{e}"
    );
    unload(&ut, bs);

    // A flipped byte in the super block.
    poke(&ut, "bad0", 200, &[0xaa]);
    let e = load(&ut, "bad0").unwrap_err();
    assert!(e.to_string().contains("super block: CRC32C"), "{e}");
    // Not a blobstore at all.
    poke(&ut, "bad0", 0, b"NOTABLOB");
    let e = load(&ut, "bad0").unwrap_err();
    assert!(
        matches!(e, BlobError::Wire(wire::WireError::BadSignature { .. })),
        "{e}"
    );
}

#[test]
fn spdk_written_store_opens_with_its_blobs_and_data() {
    let ut = threads();
    let dir = std::env::temp_dir().join(format!("rspdk-blob-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("spdk.img");
    std::fs::write(&path, spdk_image()).unwrap();
    aio_disk("spdk_img", path.to_str().unwrap());

    let bs = load(&ut, "spdk_img").unwrap();
    assert_eq!(bs.blob_ids(), vec![0x1_0000_0000, 0x1_0000_0002]);
    assert_eq!(bs.free_clusters(), 57);
    let b = open(&ut, &bs, 0x1_0000_0000);
    assert_eq!(b.num_clusters(), 4);
    assert_eq!(b.get_xattr("name").unwrap(), b"thick4\0");
    // blobcli imported 384 chunks of 4 KiB: magic, index, then 0xa5.
    let data = read(&ut, &b, 0, 384 * 4096);
    for (i, chunk) in data.chunks(4096).enumerate() {
        assert_eq!(&chunk[..4], &0x5350_444bu32.to_le_bytes());
        assert_eq!(&chunk[4..8], &(i as u32).to_le_bytes());
        assert!(chunk[8..].iter().all(|&x| x == 0xa5), "chunk {i}");
    }
    // Write through an SPDK-made blob (extent table on disk; this crate
    // rewrites its metadata as extent RLE).
    b.set_xattr("touched", b"rspdk").unwrap();
    write(&ut, &b, 2048 * 3, &pattern(4096, 9));
    close(&ut, b);
    let b = open(&ut, &bs, 0x1_0000_0002);
    assert_eq!(b.num_clusters(), 2);
    assert_eq!(b.get_xattr("color").unwrap(), b"blue\0");
    close(&ut, b);
    unload(&ut, bs);

    // And it still opens after this crate wrote it.
    let bs = load(&ut, "spdk_img").unwrap();
    let b = open(&ut, &bs, 0x1_0000_0000);
    assert_eq!(b.get_xattr("touched").unwrap(), b"rspdk");
    assert_eq!(read(&ut, &b, 2048 * 3, 4096), pattern(4096, 9));
    close(&ut, b);
    assert_eq!(bs.free_clusters(), 57);
    unload(&ut, bs);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Makes a store for SPDK's `blobcli` to read (see the crate's report and
/// docs/blob.md): a thick blob with data and an xattr, a thin blob with one
/// written cluster. Kept when RSPDK_BLOB_EXPORT names a path to copy it to.
#[test]
fn rspdk_written_store_for_spdk() {
    let ut = threads();
    let dir = std::env::temp_dir().join(format!("rspdk-blob-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rspdk.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);
    aio_disk("rspdk_img", path.to_str().unwrap());
    let bs = init(&ut, "rspdk_img");
    let thick = create(
        &ut,
        &bs,
        BlobOpts {
            num_clusters: 2,
            xattrs: vec![("name".into(), b"from-rspdk".to_vec())],
            ..Default::default()
        },
    );
    let thin = create(
        &ut,
        &bs,
        BlobOpts {
            num_clusters: 8,
            thin_provision: true,
            ..Default::default()
        },
    );
    let b = open(&ut, &bs, thick);
    write(&ut, &b, 0, &vec![0x42; MIB + 4096]);
    close(&ut, b);
    let b = open(&ut, &bs, thin);
    write(&ut, &b, 2048 * 5, &vec![0x17; 8192]);
    close(&ut, b);
    unload(&ut, bs);
    let bs = load(&ut, "rspdk_img").unwrap();
    assert_eq!(bs.blob_ids(), vec![thick, thin]);
    unload(&ut, bs);
    if let Ok(out) = std::env::var("RSPDK_BLOB_EXPORT") {
        std::fs::copy(&path, out).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
