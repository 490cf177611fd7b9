//! The SPDK-written fixture parsed with the wire types alone (no I/O).

mod common;

use common::spdk_image;
use rspdk_blob::wire::{self, BitMask, Descriptor, MdPage, SuperBlock, PAGE_SIZE};

#[test]
fn spdk_super_block_masks_and_pages_parse() {
    let img = spdk_image();
    assert_eq!(img.len(), 64 << 20);
    let sb = SuperBlock::parse(&img[..PAGE_SIZE]).unwrap();
    assert!(sb.clean);
    assert_eq!(sb.cluster_size, 1 << 20);
    assert_eq!(sb.io_unit_size, 512);
    assert_eq!(sb.md.start, 4);
    assert_eq!(sb.md.len, 64);
    assert_eq!(sb.super_blob, wire::BLOBID_INVALID);
    // A re-emitted super block is byte for byte SPDK's.
    let mut again = vec![0u8; PAGE_SIZE];
    sb.emit(&mut again);
    assert_eq!(&again[..], &img[..PAGE_SIZE]);

    let page = |i: u32| &img[i as usize * PAGE_SIZE..(i as usize + 1) * PAGE_SIZE];
    let clusters = BitMask::parse(
        page(sb.used_cluster_mask.start),
        wire::mask_type::USED_CLUSTERS,
        sb.total_clusters(),
    )
    .unwrap();
    // One metadata cluster plus 4 + 2 blob clusters.
    assert_eq!(clusters.count_ones(), 7);
    let ids = BitMask::parse(
        page(sb.used_blobid_mask.start),
        wire::mask_type::USED_BLOBIDS,
        sb.md.len as u64,
    )
    .unwrap();
    assert_eq!(ids.iter_ones().collect::<Vec<_>>(), vec![0, 2]);

    let first = MdPage::parse(page(sb.md.start)).unwrap();
    assert_eq!(first.id, wire::page_to_blobid(0));
    assert!(first.descriptors.contains(&Descriptor::Xattr {
        internal: false,
        name: "name".into(),
        value: b"thick4\0".to_vec()
    }));
    let mut again = vec![0u8; PAGE_SIZE];
    first.emit(&mut again).unwrap();
    assert_eq!(&again[..], page(sb.md.start));
    let extent = MdPage::parse(page(sb.md.start + 1)).unwrap();
    assert_eq!(
        extent.descriptors,
        vec![Descriptor::ExtentPage {
            start_cluster: 0,
            clusters: vec![1, 2, 3, 4]
        }]
    );
}
