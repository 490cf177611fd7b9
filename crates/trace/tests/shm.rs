//! The writer and the reader together: events recorded through the public
//! API come back out of the shared-memory file with their descriptions.
//! One test function: the trace state is process-wide.

use rspdk_trace::{
    apply_spec, bind_core, clear, disable_group, enable_group, group, group_mask, init, object,
    record, register_tpoints, tpoint_id, tpoint_mask, TpointDef, Trace, TraceError, TraceOpts,
};

const START: u16 = tpoint_id(group::BDEV, 0);
const DONE: u16 = tpoint_id(group::BDEV, 1);
const MSG: u16 = tpoint_id(group::THREAD, 2);

#[test]
fn recorded_events_read_back_from_the_shm_file() {
    register_tpoints(&[TpointDef {
        id: START,
        name: "BDEV_IO_START",
        object_type: object::BDEV_IO,
        new_object: true,
        args: &["type", "offset", "len"],
    }]);
    let app = format!("trace_test_{}", std::process::id());
    let path = init(&TraceOpts {
        app_name: app.clone(),
        shm_id: None,
        rings: 2,
        entries: 16,
    })
    .unwrap();
    assert!(path
        .to_str()
        .unwrap()
        .starts_with(&format!("/dev/shm/{app}_trace.pid")));
    // Registered after the file exists: written straight into it.
    register_tpoints(&[
        TpointDef {
            id: DONE,
            name: "BDEV_IO_DONE",
            object_type: object::BDEV_IO,
            new_object: false,
            args: &["status"],
        },
        TpointDef {
            id: MSG,
            name: "THREAD_MSG",
            object_type: 0,
            new_object: false,
            args: &[],
        },
    ]);

    // Off: nothing is recorded even with a ring bound.
    bind_core(1);
    record(START, 7, &[1, 2, 3]);
    assert_eq!(group_mask(), 0);

    apply_spec("bdev").unwrap();
    assert_eq!(tpoint_mask(group::BDEV), u64::MAX);
    assert_eq!(group_mask(), 1 << group::BDEV);
    for i in 0..10u64 {
        record(START, 100 + i, &[1, i * 8, 8]);
        record(DONE, 100 + i, &[0]);
    }
    record(MSG, 1, &[]); // thread group still off
                         // An unbound thread records nothing.
    std::thread::spawn(|| record(START, 999, &[]))
        .join()
        .unwrap();

    let t = Trace::parse(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(t.app_name, app);
    assert_eq!(t.group_masks[group::BDEV as usize], u64::MAX);
    assert_eq!(t.tpoint(START).unwrap().args, ["type", "offset", "len"]);
    assert_eq!(t.tpoint(DONE).unwrap().name, "BDEV_IO_DONE");
    // 20 written to a ring of 16: the last 16 remain, 4 were overwritten.
    assert_eq!(t.ring_counts, vec![(0, 0), (20, 4)]);
    let objs: Vec<(u16, u64)> = t.events.iter().map(|e| (e.tpoint, e.object_id)).collect();
    assert_eq!(objs.len(), 16);
    assert_eq!(objs[0], (START, 102));
    assert_eq!(objs[15], (DONE, 109));
    assert!(t.events.windows(2).all(|w| w[0].tsc <= w[1].tsc));
    assert_eq!(t.events[14].args[..3], [1, 72, 8]);

    // Masks change at run time.
    disable_group("bdev").unwrap();
    record(START, 5000, &[]);
    apply_spec("thread:0x4").unwrap();
    record(MSG, 5001, &[]);
    let t = Trace::parse(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(t.ring_counts[1].0, 21);
    assert_eq!(t.events.last().unwrap().object_id, 5001);

    // Spec errors name the problem.
    assert_eq!(
        apply_spec("nope"),
        Err(TraceError::UnknownGroup("nope".into()))
    );
    assert!(matches!(apply_spec("bdev:zz"), Err(TraceError::BadSpec(_))));
    apply_spec("0x8").unwrap(); // bit 3: bdev
    assert_eq!(tpoint_mask(group::BDEV), u64::MAX);
    enable_group("all").unwrap();
    assert_eq!(tpoint_mask(group::NVMF_TCP), u64::MAX);

    clear();
    let t = Trace::parse(&std::fs::read(&path).unwrap()).unwrap();
    assert!(t.events.is_empty());
    std::fs::remove_file(&path).unwrap();
}
