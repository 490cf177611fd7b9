//! Hugepages from a hugetlbfs mount (`--huge-dir`), mounting one if the
//! machine has none.

mod common;

use rspdk_env::{hugepages, sys, DmaBuf, EnvOpts, IovaMode};

#[test]
fn hugetlbfs_directory_backs_the_heap_and_bad_dirs_are_refused() {
    let existing = hugepages::mounts()
        .into_iter()
        .find(|m| m.page_size == sys::PAGE_2M)
        .map(|m| m.path);
    let mounted_here = existing.is_none();
    let mount = existing.unwrap_or_else(|| {
        let dir = std::env::temp_dir().join(format!("rspdk-huge-{}", std::process::id()));
        hugepages::mount(&dir, sys::PAGE_2M).expect("mounting hugetlbfs needs root");
        dir
    });
    let opts = |dir: std::path::PathBuf| EnvOpts {
        name: "huge-dir-test".into(),
        huge_dir: Some(dir),
        iova_mode: IovaMode::Pa,
        mem_size_mb: 16,
        ..EnvOpts::default()
    };
    let e = rspdk_env::init(&opts(std::env::temp_dir())).unwrap_err();
    assert!(e.to_string().contains("is not a hugetlbfs mount"), "{e}");
    let env = rspdk_env::init(&opts(mount.clone())).unwrap();
    assert_eq!(env.backing().page_size(), sys::PAGE_2M);
    let b = DmaBuf::zeroed(5 << 20).unwrap();
    common::check_translation(b.as_ptr() as usize, b.len());
    // The backing files are unlinked as soon as they are mapped.
    let leftovers = std::fs::read_dir(&mount)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("rspdk_{}_", std::process::id()))
        })
        .count();
    assert_eq!(leftovers, 0);
    if mounted_here {
        // Lazy: our own mapping still holds the mount busy until exit.
        let c = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid path string; MNT_DETACH only detaches our mount.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&mount);
    }
}
