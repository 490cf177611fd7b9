//! `-e nvmf_tcp`: every request's states reach the trace file in order,
//! read while the target runs (as rspdk_trace does).

use super::*;

#[test]
fn request_states_are_traced_in_order() {
    let t = start(&["-m", "0x1", "-e", "nvmf_tcp"]);
    let path = format!("/dev/shm/rspdk_tgt_trace.pid{}", t.child.id());
    let mut a = admin_queue(addr(&t), NQN, false, false);
    let mut q = io_queue(addr(&t), NQN, a.cntlid, 1, false, false, false);
    let d = pattern(7, 4096);
    assert_eq!(status(&q.write(1, 8, &d, BS, true)), (0, 0));
    let (c, r) = q.read(1, 8, 8, BS);
    assert_eq!(status(&c), (0, 0));
    assert!(r == d);
    let (c, _) = a.identify(1, 0);
    assert_eq!(status(&c), (0, 0));

    let bytes = std::fs::read(&path).expect("the trace file of a target started with -e");
    let trace = rspdk_trace::Trace::parse(&bytes).unwrap();
    let name = |id: u16| trace.tpoint(id).map(|d| d.name.as_str()).unwrap_or("?");
    // Each request object's tracepoint names, in time order, starting at
    // its TCP_REQ_NEW (a slot reused later starts a new request).
    let mut reqs: Vec<(u64, Vec<&str>)> = Vec::new();
    for e in &trace.events {
        let n = name(e.tpoint);
        if n == "TCP_REQ_NEW" {
            reqs.push((e.object_id, vec![n]));
        } else if let Some(r) = reqs.iter_mut().rev().find(|r| r.0 == e.object_id) {
            r.1.push(n);
        }
    }
    let io = [
        "TCP_REQ_NEW",
        "TCP_REQ_RDY_TO_EXECUTE",
        "TCP_REQ_EXECUTING",
        "TCP_REQ_EXECUTED",
        "TCP_REQ_COMPLETED",
    ];
    let full = reqs.iter().filter(|r| r.1 == io).count();
    assert_eq!(full, 2, "the write and the read: {reqs:?}");
    // Fabrics and admin commands (Connects, Identify) are answered by the
    // controller itself: created and completed.
    let admin = reqs
        .iter()
        .filter(|r| r.1 == ["TCP_REQ_NEW", "TCP_REQ_COMPLETED"])
        .count();
    assert!(admin >= 3, "two Connects and an Identify: {reqs:?}");
    // An Asynchronous Event Request stays outstanding: created, not done.
    let open = reqs.iter().filter(|r| r.1 == ["TCP_REQ_NEW"]).count();
    assert!(open <= 4, "{reqs:?}");
    assert_eq!(
        full + admin + open,
        reqs.len(),
        "no request in another order: {reqs:?}"
    );
    drop(t);
    let _ = std::fs::remove_file(&path);
}
