//! `rspdk_thread::thread_create` served by the reactors (own test binary:
//! the hook is process-global).

use std::sync::mpsc;
use std::time::Duration;

use rspdk_event::{current_cpu, parse_core_mask, ReactorOpts, ReactorSet};
use rspdk_thread::{thread_create, ThreadError, ThreadOpts};

#[test]
fn library_thread_create_is_placed_by_the_reactors() {
    assert_eq!(
        thread_create(ThreadOpts::named("too_early")).unwrap_err(),
        ThreadError::NoCreateHook
    );
    let set = ReactorSet::start(ReactorOpts::new(parse_core_mask("0x3").unwrap())).unwrap();
    let mut opts = ThreadOpts::named("lib_thread");
    opts.cpumask = parse_core_mask("0x2").unwrap();
    let h = thread_create(opts).unwrap();
    let (tx, rx) = mpsc::channel();
    h.send_msg(move || tx.send(current_cpu()).unwrap()).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), Some(1));
    let names: Vec<String> = set.reactors_info().reactors[1]
        .lw_threads
        .iter()
        .map(|t| t.name.clone())
        .collect();
    assert_eq!(names, vec!["lib_thread"]);
    set.stop();
    assert!(h.is_exited());
    assert_eq!(
        thread_create(ThreadOpts::named("too_late")).unwrap_err(),
        ThreadError::NoCreateHook
    );
}
