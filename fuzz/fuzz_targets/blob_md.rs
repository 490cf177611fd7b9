//! The blobstore's on-disk parsers (super block, metadata page, mask) on
//! arbitrary bytes: an error, never a panic. Each input is tried as is and
//! with its CRC fixed up, so the fuzzer reaches past the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rspdk_blob::wire::{page_crc, BitMask, MdPage, SuperBlock, PAGE_SIZE};

fuzz_target!(|data: &[u8]| {
    let _ = SuperBlock::parse(data);
    let _ = MdPage::parse(data);
    if let Some((&kind, rest)) = data.split_first() {
        let _ = BitMask::parse(rest, kind % 3, (data.len() as u64 * 3) % 40_000);
    }
    let mut page = vec![0u8; PAGE_SIZE];
    let n = data.len().min(PAGE_SIZE - 4);
    page[..n].copy_from_slice(&data[..n]);
    let crc = page_crc(&page);
    page[PAGE_SIZE - 4..].copy_from_slice(&crc.to_le_bytes());
    let _ = MdPage::parse(&page);
    page[..8].copy_from_slice(b"SPDKBLOB");
    page[8..12].copy_from_slice(&3u32.to_le_bytes());
    page[12..16].copy_from_slice(&4096u32.to_le_bytes());
    let crc = page_crc(&page);
    page[PAGE_SIZE - 4..].copy_from_slice(&crc.to_le_bytes());
    if let Ok(sb) = SuperBlock::parse(&page) {
        let mut out = vec![0u8; PAGE_SIZE];
        sb.emit(&mut out);
        assert_eq!(SuperBlock::parse(&out).unwrap(), sb);
    }
});
