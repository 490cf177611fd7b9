//! Work spread over every live thread, one message hop at a time
//! (SPDK's `spdk_for_each_thread`).

use std::sync::{Arc, Mutex};

use super::*;

/// The current thread (SPDK's `spdk_get_thread`).
pub fn get_thread() -> Option<Thread> {
    Thread::current()
}

/// Runs `f` once on every live thread, one after another (a message hop to
/// each), then `done` on the calling thread (SPDK's `spdk_for_each_thread`).
pub fn for_each_thread(
    f: impl Fn() + Send + Sync + 'static,
    done: impl FnOnce() + Send + 'static,
) -> Result<(), ThreadError> {
    let orig = Thread::current().ok_or(ThreadError::NotOnThread)?.handle();
    let st = Box::new(ThreadIterState {
        threads: all_threads(),
        idx: 0,
        f: Arc::new(f),
        done: Box::new(done),
        orig,
    });
    thread_iter_next(st);
    Ok(())
}

struct ThreadIterState {
    threads: Vec<ThreadHandle>,
    idx: usize,
    f: Arc<dyn Fn() + Send + Sync>,
    done: Box<dyn FnOnce() + Send>,
    orig: ThreadHandle,
}

fn thread_iter_next(mut st: Box<ThreadIterState>) {
    loop {
        if st.idx >= st.threads.len() {
            let ThreadIterState { done, orig, .. } = *st;
            if let Err(done) = orig.try_send(done) {
                done();
            }
            return;
        }
        let target = st.threads[st.idx].clone();
        if target.is_exited() {
            st.idx += 1;
            continue;
        }
        let sent = target.send_msg(move || {
            (st.f)();
            st.idx += 1;
            thread_iter_next(st);
        });
        if sent.is_err() {
            // Lost a race with the target's exit: the state went with the
            // dropped message, so the iteration ends without `done`.
            tracing::warn!("for_each_thread: target exited mid-iteration; iteration dropped");
        }
        return;
    }
}

/// Collects `f(thread)` from every live thread (serially, one message hop
/// each) and hands the results, in thread creation order, to `done` on the
/// calling thread. Convenient for the `thread_get_*` RPCs.
pub fn gather_from_threads<R: Send + 'static>(
    f: impl Fn(&Thread) -> R + Send + Sync + 'static,
    done: impl FnOnce(Vec<R>) + Send + 'static,
) -> Result<(), ThreadError> {
    let acc = Arc::new(Mutex::new(Vec::new()));
    let acc2 = acc.clone();
    for_each_thread(
        move || {
            if let Some(t) = Thread::current() {
                let r = f(&t);
                lock(&acc2).push(r);
            }
        },
        move || {
            let v = std::mem::take(&mut *lock(&acc));
            done(v)
        },
    )
}
