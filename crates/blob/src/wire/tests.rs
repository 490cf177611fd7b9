//! Round trips, corrupt input and SPDK's bytes for the on-disk types.

use super::*;
use proptest::prelude::*;

fn sample_super() -> SuperBlock {
    SuperBlock {
        version: VERSION,
        clean: true,
        super_blob: BLOBID_INVALID,
        cluster_size: 1 << 20,
        used_page_mask: Region { start: 1, len: 1 },
        used_cluster_mask: Region { start: 2, len: 1 },
        md: Region { start: 4, len: 64 },
        bstype: [0; 16],
        used_blobid_mask: Region { start: 3, len: 1 },
        size: 64 << 20,
        io_unit_size: 512,
        md_page_size: 4096,
    }
}

#[test]
fn crc_is_crc32c_castagnoli() {
    // The standard check value of CRC-32C over "123456789".
    assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
}

#[test]
fn super_block_round_trips_and_names_corruption() {
    let sb = sample_super();
    let mut buf = vec![0u8; PAGE_SIZE];
    sb.emit(&mut buf);
    assert_eq!(SuperBlock::parse(&buf).unwrap(), sb);
    let mut bad_crc = buf.clone();
    bad_crc[100] ^= 1;
    assert!(matches!(
        SuperBlock::parse(&bad_crc),
        Err(WireError::BadCrc {
            what: "super block",
            ..
        })
    ));
    let mut bad_sig = buf.clone();
    bad_sig[0] = b'X';
    assert!(matches!(
        SuperBlock::parse(&bad_sig),
        Err(WireError::BadSignature { .. })
    ));
    let mut too_far = sb.clone();
    too_far.md.len = 100_000;
    too_far.emit(&mut buf);
    let e = SuperBlock::parse(&buf).unwrap_err();
    assert!(e.to_string().contains("md"), "{e}");
    assert!(matches!(
        SuperBlock::parse(&buf[..100]),
        Err(WireError::Truncated { .. })
    ));
}

#[test]
fn md_page_round_trips_every_descriptor() {
    let page = MdPage {
        id: page_to_blobid(7),
        sequence_num: 0,
        descriptors: vec![
            Descriptor::Flags {
                invalid: invalid_flags::THIN_PROV,
                data_ro: 0,
                md_ro: 1,
            },
            Descriptor::Xattr {
                internal: false,
                name: "name".into(),
                value: b"thick4\0".to_vec(),
            },
            Descriptor::Xattr {
                internal: true,
                name: XATTR_SNAPSHOT.into(),
                value: 5u64.to_le_bytes().to_vec(),
            },
            Descriptor::ExtentRle(vec![(1, 4), (0, 3)]),
            Descriptor::ExtentTable {
                num_clusters: 4,
                pages: vec![(9, 1), (0, 2)],
            },
            Descriptor::ExtentPage {
                start_cluster: 512,
                clusters: vec![3, 0, 9],
            },
        ],
        next: INVALID_MD_PAGE,
    };
    let mut buf = vec![0u8; PAGE_SIZE];
    page.emit(&mut buf).unwrap();
    assert_eq!(MdPage::parse(&buf).unwrap(), page);
}

#[test]
fn md_page_overrun_and_malformed_descriptors_are_refused() {
    let page = MdPage {
        id: 1,
        sequence_num: 0,
        descriptors: vec![],
        next: INVALID_MD_PAGE,
    };
    let mut buf = vec![0u8; PAGE_SIZE];
    page.emit(&mut buf).unwrap();
    // An xattr claiming more bytes than the page has.
    buf[16] = desc_type::XATTR;
    put_u32(&mut buf, 17, 5000);
    let crc = page_crc(&buf);
    put_u32(&mut buf, PAGE_SIZE - 4, crc);
    assert!(matches!(
        MdPage::parse(&buf),
        Err(WireError::DescriptorOverrun { kind: 2, .. })
    ));
    // Flags of the wrong length.
    put_u32(&mut buf, 17, 8);
    buf[16] = desc_type::FLAGS;
    let crc = page_crc(&buf);
    put_u32(&mut buf, PAGE_SIZE - 4, crc);
    let e = MdPage::parse(&buf).unwrap_err();
    assert!(e.to_string().contains("flags"), "{e}");
}

#[test]
fn mask_round_trips_and_checks_length() {
    let mut m = BitMask::new(61);
    for i in [0, 1, 7, 8, 60] {
        m.set(i);
    }
    assert_eq!(m.count_ones(), 5);
    assert_eq!(m.first_clear(0), Some(2));
    let mut buf = vec![0u8; PAGE_SIZE];
    m.emit(&mut buf, mask_type::USED_CLUSTERS);
    assert_eq!(
        BitMask::parse(&buf, mask_type::USED_CLUSTERS, 61).unwrap(),
        m
    );
    assert!(BitMask::parse(&buf, mask_type::USED_PAGES, 61).is_err());
    assert!(BitMask::parse(&buf, mask_type::USED_CLUSTERS, 62).is_err());
}

fn descriptor() -> impl Strategy<Value = Descriptor> {
    prop_oneof![
        proptest::collection::vec((any::<u32>(), any::<u32>()), 1..20)
            .prop_map(Descriptor::ExtentRle),
        (
            any::<u64>(),
            proptest::collection::vec((1u32.., Just(1u32)), 0..20)
        )
            .prop_map(|(n, pages)| Descriptor::ExtentTable {
                num_clusters: n,
                pages
            }),
        (
            any::<u32>(),
            proptest::collection::vec(any::<u32>(), 1..100)
        )
            .prop_map(|(s, clusters)| Descriptor::ExtentPage {
                start_cluster: s,
                clusters
            }),
        (
            any::<bool>(),
            "[a-zA-Z0-9_]{0,40}",
            proptest::collection::vec(any::<u8>(), 0..200)
        )
            .prop_map(|(internal, name, value)| Descriptor::Xattr {
                internal,
                name,
                value
            }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(invalid, data_ro, md_ro)| {
            Descriptor::Flags {
                invalid,
                data_ro,
                md_ro,
            }
        }),
    ]
}

proptest! {
    #[test]
    fn md_pages_round_trip(id in any::<u64>(), seq in any::<u32>(), next in any::<u32>(),
                           descriptors in proptest::collection::vec(descriptor(), 0..8)) {
        let page = MdPage { id, sequence_num: seq, descriptors, next };
        let mut buf = vec![0u8; PAGE_SIZE];
        match page.emit(&mut buf) {
            Ok(()) => prop_assert_eq!(MdPage::parse(&buf).unwrap(), page),
            Err(WireError::PageFull { need }) => prop_assert!(need > DESCRIPTORS_LEN),
            Err(e) => prop_assert!(false, "{}", e),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..PAGE_SIZE + 8)) {
        let _ = SuperBlock::parse(&bytes);
        let _ = MdPage::parse(&bytes);
        let _ = BitMask::parse(&bytes, 1, 100);
    }

    #[test]
    fn masks_round_trip(bits in proptest::collection::vec(any::<bool>(), 0..300)) {
        let mut m = BitMask::new(bits.len() as u64);
        for (i, b) in bits.iter().enumerate() { if *b { m.set(i as u64); } }
        let mut buf = vec![0u8; mask_bytes(m.len())];
        m.emit(&mut buf, mask_type::USED_BLOBIDS);
        prop_assert_eq!(BitMask::parse(&buf, mask_type::USED_BLOBIDS, m.len()).unwrap(), m);
    }
}
