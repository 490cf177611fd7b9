//! Reading every channel of a bdev from the app thread: statistics,
//! histograms and queue-depth samples gathered by a message to each
//! channel's thread (SPDK's `spdk_for_each_channel` walks).

use super::*;

/// Runs `f` on every channel of `bdev` (a message hop to each thread that
/// has one), then `done` on the calling thread with the results. For the
/// RPC methods: never on the I/O path.
pub(crate) fn collect_channels<R: Send + 'static>(
    bdev: &crate::Bdev,
    f: impl Fn(&ChannelInner) -> R + Send + Sync + 'static,
    done: impl FnOnce(Vec<R>) + 'static,
) {
    let Some(dev) = bdev.0.io_device.get().cloned() else {
        return done(Vec::new());
    };
    let out: Arc<std::sync::Mutex<Vec<R>>> = Arc::default();
    let o2 = out.clone();
    // `done` is not Send: it waits on this thread, parked by id, for the
    // iteration's end, which comes back here.
    let id = park_waiter(Box::new(move || {
        let v = std::mem::take(&mut *crate::bdev::lock(&o2));
        done(v)
    }));
    let r = dev.for_each_channel(
        move |ch, iter| {
            let v = f(&ch.inner);
            crate::bdev::lock(&out).push(v);
            iter.continue_with(0);
        },
        move |_status| run_waiter(id),
    );
    if r.is_err() {
        run_waiter(id);
    }
}

/// Sums the statistics of every channel of each bdev plus those of closed
/// channels, resetting what `reset` says afterwards, then calls `done` on
/// the calling thread with `(name, stats)` in `list`'s order.
pub(crate) fn gather_stats(
    list: Vec<crate::Bdev>,
    reset: crate::ResetMode,
    done: impl FnOnce(Vec<(String, IoStats)>) + 'static,
) {
    let results: Rc<RefCell<Vec<(String, IoStats)>>> = Rc::new(RefCell::new(
        list.iter()
            .map(|b| (b.name().to_string(), IoStats::default()))
            .collect(),
    ));
    let left = Rc::new(Cell::new(list.len()));
    let done = Rc::new(RefCell::new(Some(done)));
    if list.is_empty() {
        if let Some(d) = done.borrow_mut().take() {
            d(Vec::new());
        }
        return;
    }
    for (i, b) in list.iter().enumerate() {
        let retired = {
            let mut r = crate::bdev::lock(&b.0.retired_stats);
            let c = r.clone();
            r.reset(reset);
            c
        };
        let (results, left, done) = (results.clone(), left.clone(), done.clone());
        collect_channels(
            b,
            move |ch| {
                let mut s = ch.stats.borrow_mut();
                let c = s.clone();
                s.reset(reset);
                c
            },
            move |per_channel| {
                let mut total = retired;
                for s in &per_channel {
                    total.add(s);
                }
                results.borrow_mut()[i].1 = total;
                left.set(left.get() - 1);
                if left.get() == 0 {
                    if let Some(d) = done.borrow_mut().take() {
                        d(std::mem::take(&mut *results.borrow_mut()));
                    }
                }
            },
        );
    }
}

/// Each live channel's statistics with its thread's id (`bdev_get_iostat`
/// with `per_channel`), resetting what `reset` says afterwards.
pub(crate) fn channel_stats(
    bdev: &crate::Bdev,
    reset: crate::ResetMode,
    done: impl FnOnce(Vec<(u64, IoStats)>) + 'static,
) {
    collect_channels(
        bdev,
        move |ch| {
            let mut s = ch.stats.borrow_mut();
            let c = s.clone();
            s.reset(reset);
            let thread = rspdk_thread::get_thread().map_or(0, |t| t.id());
            (thread, c)
        },
        done,
    );
}

/// The bdev's latency histogram: its closed channels' counts plus every
/// live channel's (SPDK: `spdk_bdev_histogram_get`). Fails if it is not
/// enabled.
pub(crate) fn get_histogram(
    bdev: &crate::Bdev,
    done: impl FnOnce(Result<crate::Histogram, BdevError>) + 'static,
) {
    let (base, gen) = {
        let cfg = crate::bdev::lock(&bdev.0.hist);
        let gen = bdev.0.hist_gen.load(std::sync::atomic::Ordering::Acquire);
        match cfg.retired.clone().or_else(|| cfg.make()) {
            Some(h) if cfg.enabled => (h, gen),
            _ => {
                return done(Err(BdevError::InvalidParam(format!(
                    "the histogram of bdev '{}' is not enabled: enable it with bdev_enable_histogram first",
                    bdev.name()
                ))))
            }
        }
    };
    collect_channels(
        bdev,
        move |ch| {
            if ch.hist_gen.get() != gen {
                ch.refresh_histogram();
            }
            ch.hist.borrow().clone()
        },
        move |per_channel| {
            let mut total = base;
            for h in per_channel.iter().flatten() {
                total.merge(h);
            }
            done(Ok(total))
        },
    );
}

/// Takes one queue depth sample (SPDK:
/// `bdev_calculate_measured_queue_depth`): the I/Os outstanding over every
/// channel; a non-idle sample adds the period to `io_time` and period x
/// depth to `weighted_io_time`.
pub(crate) fn sample_queue_depth(bdev: crate::Bdev) {
    {
        let mut q = crate::bdev::lock(&bdev.0.qd);
        if q.in_progress || q.period_us == 0 {
            return;
        }
        q.in_progress = true;
    }
    let b2 = bdev.clone();
    collect_channels(
        &bdev,
        |ch| ch.outstanding.get(),
        move |per_channel| {
            let depth: u64 = per_channel.iter().sum();
            let mut q = crate::bdev::lock(&b2.0.qd);
            q.queue_depth = depth;
            if depth > 0 {
                q.io_time += q.period_us;
                q.weighted_io_time += q.period_us * depth;
            }
            q.in_progress = false;
        },
    );
}

type Waiter = Box<dyn FnOnce()>;

thread_local! {
    static WAITERS: RefCell<std::collections::HashMap<u64, Waiter>> =
        RefCell::new(std::collections::HashMap::new());
}

static NEXT_WAITER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub(super) fn park_waiter(w: Waiter) -> u64 {
    let id = NEXT_WAITER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    WAITERS.with(|m| m.borrow_mut().insert(id, w));
    id
}

pub(super) fn run_waiter(id: u64) {
    if let Some(w) = WAITERS.with(|m| m.borrow_mut().remove(&id)) {
        w();
    }
}
