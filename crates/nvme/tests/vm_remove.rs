//! Guest test (see tests/vm.rs): hot removal of the controller while I/O is
//! in flight. Run alone and last by tests/vm/guest-test.sh, which brings the
//! device back with a PCI rescan afterwards. Outside the guest it fails.

use std::time::{Duration, Instant};

use rspdk_env::DmaBuf;
use rspdk_nvme::{Controller, ControllerOpts, NvmeError, Status, TransportId};

#[test]
fn hot_removal_fails_everything_and_releases_the_device() {
    let bdf = std::env::var("RSPDK_VM_BDF").unwrap_or_else(|_| {
        panic!("not in the test VM (RSPDK_VM_BDF unset): run through tests/vm/run")
    });
    rspdk_env::init(&Default::default()).expect("env init");
    let trid: TransportId = format!("trtype:PCIe traddr:{bdf}").parse().unwrap();
    let c = Controller::connect(&trid, &ControllerOpts::default()).expect("attach");
    let mut qp = c.alloc_io_qpair(None).unwrap();
    let mut b = DmaBuf::zeroed(32 * 4096).unwrap();
    let p = b.as_mut_ptr();
    let mut got = Vec::new();
    for i in 0..32u64 {
        // SAFETY: the buffer is never freed (forgotten below): the device may
        // still touch it until the kernel has it.
        unsafe { qp.read(1, p.add(i as usize * 4096), i * 8, 8, i) }.unwrap();
        if i == 15 {
            // The first half reaches the device; the second half is placed
            // in the queue but not announced (doorbells ring at the next
            // poll, which comes only after the removal).
            let _ = qp.process_completions(0, |c| got.push(*c));
        }
    }
    // Remove the function from the kernel (as a hot-unplug does). With
    // vfio-pci the kernel asks us to release it and waits until we do.
    let path = format!("/sys/bus/pci/devices/{bdf}/remove");
    let remover = std::thread::spawn(move || std::fs::write(path, "1"));
    let end = Instant::now() + Duration::from_secs(30);
    let err = loop {
        match c.process_admin_completions() {
            Ok(_) => {}
            Err(e) => break e,
        }
        assert!(Instant::now() < end, "removal not noticed in 30 s");
        std::thread::sleep(Duration::from_millis(1));
    };
    println!("admin poll after removal: {err}");
    assert!(matches!(err, NvmeError::ControllerFailed { .. }), "{err}");
    while qp
        .process_completions(0, |c| got.push(*c))
        .is_ok_and(|n| n > 0)
    {}
    assert_eq!(got.len(), 32, "every command came back");
    let aborted = got
        .iter()
        .filter(|c| c.status == Status::ABORTED_SQ_DELETION)
        .count();
    println!(
        "{} completed before the removal, {aborted} handed back",
        32 - aborted
    );
    // SAFETY: refused: the controller has failed.
    let e = unsafe { qp.read(1, p, 0, 8, 99) }.unwrap_err();
    assert!(e.to_string().contains("removed"), "{e}");
    assert!(c.identify_controller().is_err());
    // The kernel got the device: the remover finished.
    let t0 = Instant::now();
    while !remover.is_finished() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the kernel is still waiting for the device"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    remover.join().unwrap().expect("writing remove");
    assert!(!std::path::Path::new(&format!("/sys/bus/pci/devices/{bdf}")).exists());
    drop(qp);
    let _ = c.detach();
    std::mem::forget(b);
}
