//! mem_register / mem_unregister and memory-map notifications, on real
//! (mlocked) memory from mmap.

mod common;

use std::sync::{Arc, Mutex};

use rspdk_env::{
    mem_register, mem_unregister, sys, vtophys, EnvError, MemMap, MemMapAction, MemMapNotify,
    TranslationKind, VTOPHYS_ERROR,
};

const PAGE: usize = 4096;
const MB2: usize = 2 << 20;

/// An anonymous, locked, 2 MiB-aligned region that is unmapped on drop.
struct Region {
    addr: usize,
    len: usize,
}

impl Region {
    fn new(len: usize) -> Region {
        // SAFETY: a fresh private anonymous mapping; we own it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len + MB2,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let addr = (p as usize + MB2 - 1) & !(MB2 - 1);
        // SAFETY: inside the mapping just made.
        assert_eq!(unsafe { libc::mlock(addr as *const libc::c_void, len) }, 0);
        Region { addr, len }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping only our own region (the aligned part is enough
        // for the tests; the slack is leaked address space).
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

type Log = Arc<Mutex<Vec<(MemMapAction, usize, usize)>>>;

/// Records notifications inside one address window, failing on request.
struct Recorder {
    window: (usize, usize),
    log: Log,
    fail_on: Option<usize>,
}

impl MemMapNotify for Recorder {
    fn notify(
        &self,
        map: &MemMap,
        action: MemMapAction,
        vaddr: usize,
        len: usize,
    ) -> rspdk_env::Result<()> {
        if vaddr < self.window.0 || vaddr >= self.window.1 {
            return Ok(());
        }
        if action == MemMapAction::Register && self.fail_on == Some(vaddr) {
            return Err(EnvError::NoMemory("injected".into()));
        }
        self.log.lock().unwrap().push((action, vaddr, len));
        match action {
            MemMapAction::Register => map.set_translation(vaddr, len, vaddr as u64 ^ 0xabc0_0000),
            MemMapAction::Unregister => map.clear_translation(vaddr, len),
        }
    }
}

fn recorder(r: &Region, fail_on: Option<usize>) -> (Box<Recorder>, Log) {
    let log = Arc::new(Mutex::new(Vec::new()));
    (
        Box::new(Recorder {
            window: (r.addr, r.addr + r.len),
            log: log.clone(),
            fail_on,
        }),
        log,
    )
}

#[test]
fn register_rules_and_errors() {
    common::env();
    let r = Region::new(8 * MB2);
    let a = r.addr;
    assert!(matches!(
        mem_register(a + 1, MB2),
        Err(EnvError::InvalidArgument(_))
    ));
    assert!(matches!(
        mem_register(a, MB2 + 1),
        Err(EnvError::InvalidArgument(_))
    ));
    assert!(matches!(
        mem_register(a, 0),
        Err(EnvError::InvalidArgument(_))
    ));
    mem_register(a, 2 * MB2).unwrap();
    let e = mem_register(a + MB2, 2 * MB2).unwrap_err();
    assert!(matches!(e, EnvError::Busy(_)), "{e}");
    assert_eq!(e.errno(), libc::EBUSY);
    assert!(matches!(mem_register(a, PAGE), Err(EnvError::Busy(_))));
    // Part of a registration: out of range, from either end.
    let e = mem_unregister(a, MB2).unwrap_err();
    assert!(matches!(e, EnvError::OutOfRange(_)), "{e}");
    assert_eq!(e.errno(), libc::ERANGE);
    assert!(matches!(
        mem_unregister(a + MB2, MB2),
        Err(EnvError::OutOfRange(_))
    ));
    // Never registered.
    assert!(matches!(
        mem_unregister(a + 4 * MB2, MB2),
        Err(EnvError::InvalidArgument(_))
    ));
    // Adjacent registrations, removed together or one at a time.
    mem_register(a + 2 * MB2, MB2).unwrap();
    mem_register(a + 3 * MB2, PAGE).unwrap();
    mem_unregister(a, 3 * MB2).unwrap();
    // A gap inside the range is an invalid argument.
    mem_register(a + 5 * MB2, MB2).unwrap();
    assert!(matches!(
        mem_unregister(a + 3 * MB2, 3 * MB2),
        Err(EnvError::InvalidArgument(_))
    ));
    mem_unregister(a + 3 * MB2, PAGE).unwrap();
    mem_unregister(a + 5 * MB2, MB2).unwrap();
    assert!(sys::pagemap_phys(a).is_some());
}

#[test]
fn vtophys_covers_registered_4k_pages() {
    common::env();
    let r = Region::new(MB2);
    let a = r.addr + 3 * PAGE;
    assert_eq!(vtophys(a, None), VTOPHYS_ERROR);
    mem_register(a, PAGE).unwrap();
    assert_eq!(vtophys(a + 17, None), sys::pagemap_phys(a + 17).unwrap());
    assert_eq!(
        vtophys(a + PAGE, None),
        VTOPHYS_ERROR,
        "the next page is not registered"
    );
    let mut len = 2 * PAGE as u64;
    vtophys(a, Some(&mut len));
    assert!(len <= PAGE as u64);
    mem_register(a + PAGE, 5 * PAGE).unwrap();
    common::check_translation(a, 6 * PAGE);
    mem_unregister(a, PAGE).unwrap();
    assert_eq!(vtophys(a, None), VTOPHYS_ERROR);
    mem_unregister(a + PAGE, 5 * PAGE).unwrap();
    assert_eq!(vtophys(a + PAGE, None), VTOPHYS_ERROR);
}

#[test]
fn new_map_replays_registrations_and_follows_new_ones() {
    common::env();
    let r = Region::new(4 * MB2);
    mem_register(r.addr, MB2).unwrap();
    mem_register(r.addr + 2 * MB2, PAGE).unwrap();
    let (rec, log) = recorder(&r, None);
    let map = MemMap::new(0, TranslationKind::Linear, Some(rec)).unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            (MemMapAction::Register, r.addr, MB2),
            (MemMapAction::Register, r.addr + 2 * MB2, PAGE)
        ]
    );
    assert_eq!(
        map.translate_addr(r.addr + 5),
        (r.addr as u64 ^ 0xabc0_0000) + 5
    );
    mem_register(r.addr + 3 * MB2, MB2).unwrap();
    assert_eq!(log.lock().unwrap().len(), 3);
    mem_unregister(r.addr, MB2).unwrap();
    assert_eq!(map.translate_addr(r.addr + 5), 0);
    assert_eq!(
        log.lock().unwrap()[3],
        (MemMapAction::Unregister, r.addr, MB2)
    );
    mem_unregister(r.addr + 2 * MB2, PAGE).unwrap();
    mem_unregister(r.addr + 3 * MB2, MB2).unwrap();
    map.release();
}

#[test]
fn failed_replay_rolls_back_and_creates_no_map() {
    common::env();
    let r = Region::new(4 * MB2);
    mem_register(r.addr, MB2).unwrap();
    mem_register(r.addr + MB2, MB2).unwrap();
    mem_register(r.addr + 2 * MB2, MB2).unwrap();
    let (rec, log) = recorder(&r, Some(r.addr + 2 * MB2));
    let e = MemMap::new(0, TranslationKind::Linear, Some(rec)).unwrap_err();
    assert!(matches!(e, EnvError::NoMemory(_)));
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            (MemMapAction::Register, r.addr, MB2),
            (MemMapAction::Register, r.addr + MB2, MB2),
            (MemMapAction::Unregister, r.addr + MB2, MB2),
            (MemMapAction::Unregister, r.addr, MB2),
        ]
    );
    // The failed map is not notified of later registrations.
    mem_register(r.addr + 3 * MB2, PAGE).unwrap();
    assert_eq!(log.lock().unwrap().len(), 4);
    mem_unregister(r.addr, 3 * MB2).unwrap();
    mem_unregister(r.addr + 3 * MB2, PAGE).unwrap();
}

#[test]
fn failed_notification_fails_the_registration() {
    common::env();
    let r = Region::new(2 * MB2);
    let (ok_rec, ok_log) = recorder(&r, None);
    let ok_map = MemMap::new(0, TranslationKind::Linear, Some(ok_rec)).unwrap();
    let (bad_rec, _) = recorder(&r, Some(r.addr));
    let bad_map = MemMap::new(0, TranslationKind::Linear, Some(bad_rec)).unwrap();
    assert!(mem_register(r.addr, MB2).is_err());
    // The map notified before the failing one was told to undo.
    assert_eq!(
        *ok_log.lock().unwrap(),
        vec![
            (MemMapAction::Register, r.addr, MB2),
            (MemMapAction::Unregister, r.addr, MB2)
        ]
    );
    assert_eq!(ok_map.translate_addr(r.addr), 0);
    assert!(
        matches!(
            mem_unregister(r.addr, MB2),
            Err(EnvError::InvalidArgument(_))
        ),
        "a failed registration leaves nothing registered"
    );
    bad_map.release();
    mem_register(r.addr, MB2).unwrap();
    mem_unregister(r.addr, MB2).unwrap();
    ok_map.release();
}

#[test]
fn contiguous_lengths_span_registrations_with_continuous_translations() {
    common::env();
    let r = Region::new(6 * MB2);
    let map = MemMap::new(u64::MAX, TranslationKind::Linear, None).unwrap();
    map.set_translation(r.addr, 3 * MB2, 0x1_0000_0000).unwrap();
    map.set_translation(r.addr + 3 * MB2, 2 * MB2, 0x1_0000_0000 + 3 * MB2 as u64)
        .unwrap();
    let mut len = 6 * MB2 as u64;
    assert_eq!(map.translate(r.addr + 10, &mut len), 0x1_0000_000a);
    assert_eq!(len, 5 * MB2 as u64 - 10);
}
