//! What bdev modules share beyond the module interface in `bdev.rs`.

/// Completes a poller's batch of finished I/Os outside the channel state's
/// borrow (a completion may submit again, which borrows it), then gives the
/// emptied vector back through `slot` so its capacity is reused: no
/// allocation per batch. Shared by the modules that reap real completions.
pub fn complete_batch<S>(
    cell: &std::cell::RefCell<S>,
    mut done: Vec<(crate::BdevIo, crate::IoStatus)>,
    slot: fn(&mut S) -> &mut Vec<(crate::BdevIo, crate::IoStatus)>,
) -> rspdk_thread::PollerStatus {
    for (io, status) in done.drain(..) {
        io.complete(status);
    }
    let mut st = cell.borrow_mut();
    let spare = slot(&mut st);
    if spare.is_empty() {
        *spare = done;
    }
    rspdk_thread::PollerStatus::Busy
}
