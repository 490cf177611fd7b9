//! What the virtual bdev modules (passthru, delay, error, split) share:
//! opening and claiming the base, the per-channel link to it, forwarding
//! with retry when the I/O pool is empty, and name checks.

use std::rc::Rc;
use std::sync::{Arc, Mutex};

use crate::bdev::{bdev_open, BdevDesc};
use crate::channel::BdevIoChannel;
use crate::io::BdevIo;
use crate::types::{BdevError, BdevEvent, IoStatus};

/// Opens `base` and claims it for `module`. `on_remove` runs (on this
/// thread) when the base is hot removed: the module unregisters its bdevs.
pub fn open_base(
    base: &str,
    module: &'static str,
    on_remove: impl Fn() + Send + Sync + 'static,
) -> Result<BdevDesc, BdevError> {
    let mut desc = bdev_open(base, false, move |ev| {
        if ev == BdevEvent::Remove {
            on_remove();
        }
    })?;
    desc.claim(module)?;
    Ok(desc)
}

/// Fails with a clear error if `name` is taken by a bdev or holds
/// control characters.
pub fn check_free(name: &str) -> Result<(), BdevError> {
    if name.is_empty() {
        return Err(BdevError::InvalidParam("name is empty".into()));
    }
    crate::bdev::check_name(name)?;
    if crate::bdev_get(name).is_some() {
        return Err(BdevError::Exists(name.to_string()));
    }
    Ok(())
}

/// The base descriptor a virtual bdev's backend holds until `destruct`;
/// each channel keeps a clone, so the base stays open until the last
/// channel is gone.
#[derive(Default)]
pub struct BaseDesc(Mutex<Option<Arc<BdevDesc>>>);

impl BaseDesc {
    /// The only holder of `desc`.
    pub fn new(desc: BdevDesc) -> BaseDesc {
        BaseDesc(Mutex::new(Some(Arc::new(desc))))
    }

    /// One of several holders of a shared base descriptor (split parts).
    pub fn from_arc(desc: Arc<BdevDesc>) -> BaseDesc {
        BaseDesc(Mutex::new(Some(desc)))
    }

    /// This thread's link to the base (for `create_channel`).
    pub fn link(&self) -> Result<Rc<BaseLink>, BdevError> {
        let desc = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| BdevError::Removing("base of a virtual bdev".into()))?;
        let ch = desc.get_io_channel()?;
        Ok(Rc::new(BaseLink { ch, desc }))
    }

    /// Drops the backend's reference (for `destruct`).
    pub fn release(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// One thread's channel to a base bdev.
pub struct BaseLink {
    /// This thread's channel to the base.
    pub ch: BdevIoChannel,
    /// The descriptor the channel came from.
    pub desc: Arc<BdevDesc>,
}

impl BaseLink {
    /// Forwards `io` to the base at `offset_blocks`; `done` gets it back
    /// with the base's status. An empty I/O pool parks the I/O and retries
    /// it when an object frees; any other submission error is handed to
    /// `done` as a status (`Removed` while the base goes away, else
    /// `Failed`).
    pub fn forward<F>(self: &Rc<Self>, io: BdevIo, offset_blocks: u64, done: F)
    where
        F: FnOnce(BdevIo, IoStatus) + Clone + 'static,
    {
        // The layer stores `done` plus one pointer per I/O inline: make a
        // closure that would not fit a compile error rather than a
        // silent allocation per I/O.
        const {
            assert!(
                std::mem::size_of::<F>() + std::mem::size_of::<usize>()
                    <= rspdk_util::CALLBACK_INLINE_BYTES
                    && std::mem::align_of::<F>() <= std::mem::align_of::<usize>()
            )
        };
        match self.ch.forward(&self.desc, io, offset_blocks, done.clone()) {
            Ok(()) => {}
            Err((BdevError::NoMemory, io)) => {
                let me = self.clone();
                self.ch
                    .queue_io_wait(move || me.forward(io, offset_blocks, done));
            }
            Err((e, io)) => {
                tracing::debug!(error = %e, "forwarding to the base bdev failed");
                let status = match e {
                    BdevError::Removing(_) => IoStatus::Removed,
                    _ => IoStatus::Failed,
                };
                done(io, status);
            }
        }
    }
}

/// Completes the upper I/O with the base's status: the `done` of a
/// plain forward.
pub fn complete_upper(io: BdevIo, status: IoStatus) {
    io.complete(status);
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::ptr::NonNull;
    use std::rc::Rc;

    use rspdk_util::Callback;

    use crate::io::BdevIo;
    use crate::types::IoStatus;

    fn is_inline<F: FnOnce(IoStatus)>(_: &F) -> bool {
        Callback::<IoStatus>::is_inline::<F>()
    }

    /// The closure `BdevIoChannel::forward` stores: the I/O pointer and `done`.
    fn forwarded<D: FnOnce(BdevIo, IoStatus) + 'static>(done: D) -> impl FnOnce(IoStatus) {
        let raw = NonNull::<u8>::dangling();
        move |s| {
            let _ = raw;
            drop(done);
            let _ = s;
        }
    }

    #[test]
    fn forwarded_completions_are_stored_inline() {
        // Passthru and split: a plain function.
        assert!(is_inline(&forwarded(super::complete_upper)));
        // Delay: the channel state and a deadline.
        let st = Rc::new(Cell::new(0u64));
        let deadline = 5u64;
        let delay_like = move |io: BdevIo, s: IoStatus| {
            st.set(deadline);
            io.complete(s)
        };
        assert!(is_inline(&forwarded(delay_like)));
        // Error: the channel state and a flag.
        let st = Rc::new(Cell::new(0u32));
        let corrupt = true;
        let error_like = move |io: BdevIo, s: IoStatus| {
            st.set(corrupt as u32);
            io.complete(s)
        };
        assert!(is_inline(&forwarded(error_like)));
    }
}
