//! I/O devices and per-thread I/O channels (SPDK's `spdk_io_device_register`,
//! `spdk_get_io_channel`, `spdk_put_io_channel`, `spdk_for_each_channel`).
//!
//! An *I/O device* is anything identified by an [`IoDeviceKey`] that wants a
//! private context per thread. [`IoDevice::get_channel`] returns the calling
//! thread's [`IoChannel`], creating it with the device's `create` callback on
//! first use; channels are reference counted — cloning is a "get", dropping
//! is a "put". When the last reference is dropped the channel is destroyed
//! asynchronously on its thread (during a later poll, like SPDK), with the
//! device's `destroy` callback; a get in between cancels the destruction.

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex};

use crate::thread::{all_threads, Thread, ThreadHandle, ThreadInner};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Identifies an I/O device (SPDK uses the device's address; any unique
/// `usize` will do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IoDeviceKey(pub usize);

impl IoDeviceKey {
    /// Key from an address, as SPDK does with `void *io_device`.
    pub fn from_ptr<T: ?Sized>(p: *const T) -> IoDeviceKey {
        IoDeviceKey(p as *const () as usize)
    }
}

/// Errors of I/O device and channel operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IoDeviceError {
    /// Must be called on an rspdk thread.
    #[error("not called from an rspdk thread")]
    NotOnThread,
    /// A device with this key is already registered.
    #[error("io_device {0:?} already registered")]
    AlreadyRegistered(IoDeviceKey),
    /// No device with this key.
    #[error("io_device {0:?} not found")]
    NotFound(IoDeviceKey),
    /// The device was registered with another context type.
    #[error("io_device {0:?} has a different channel context type")]
    WrongType(IoDeviceKey),
    /// The device is being unregistered.
    #[error("io_device {0:?} is unregistered")]
    Unregistered(IoDeviceKey),
    /// The create callback failed with this (negative errno-style) code.
    #[error("channel create callback failed: {0}")]
    CreateFailed(i32),
}

type UnregisterCb = (Option<ThreadHandle>, Box<dyn FnOnce() + Send>);

#[derive(Default)]
struct DevState {
    unregistered: bool,
    /// Ids of threads holding a channel.
    threads: Vec<u64>,
    unregister_cb: Option<UnregisterCb>,
}

type CreateFn<T> = Box<dyn Fn() -> Result<T, i32> + Send + Sync>;
type DestroyFn<T> = Box<dyn Fn(&T) + Send + Sync>;

pub(crate) struct DeviceShared<T> {
    key: IoDeviceKey,
    name: String,
    create: CreateFn<T>,
    destroy: DestroyFn<T>,
    state: Mutex<DevState>,
    _t: PhantomData<fn() -> T>,
}

impl<T> DeviceShared<T> {
    /// A channel on thread `tid` is gone: bookkeeping, and completion of a
    /// deferred unregister when it was the last one.
    fn channel_gone(&self, tid: u64) {
        let cb = {
            let mut st = lock(&self.state);
            if let Some(i) = st.threads.iter().position(|&t| t == tid) {
                st.threads.swap_remove(i);
            }
            if st.unregistered && st.threads.is_empty() {
                st.unregister_cb.take()
            } else {
                None
            }
        };
        if let Some((th, cb)) = cb {
            deliver(th, cb);
        }
    }
}

fn deliver(th: Option<ThreadHandle>, cb: Box<dyn FnOnce() + Send>) {
    match th {
        Some(h) => {
            if let Err(cb) = h.try_send(cb) {
                cb();
            }
        }
        None => cb(),
    }
}

struct DevEntry {
    key: IoDeviceKey,
    dev: Arc<dyn Any + Send + Sync>,
}

static DEVICES: Mutex<Vec<DevEntry>> = Mutex::new(Vec::new());

/// A registered I/O device whose channels carry a context of type `T`.
/// `Send + Sync + Clone`: share it freely.
pub struct IoDevice<T: 'static> {
    sh: Arc<DeviceShared<T>>,
}

impl<T: 'static> Clone for IoDevice<T> {
    fn clone(&self) -> Self {
        IoDevice {
            sh: self.sh.clone(),
        }
    }
}

impl<T: 'static> fmt::Debug for IoDevice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IoDevice({:?}, {})", self.sh.key, self.sh.name)
    }
}

/// Registers an I/O device (SPDK's `spdk_io_device_register`): `create`
/// builds a thread's channel context on its first [`IoDevice::get_channel`],
/// `destroy` runs on that thread after the last reference is dropped.
pub fn io_device_register<T: 'static>(
    key: IoDeviceKey,
    name: &str,
    create: impl Fn() -> Result<T, i32> + Send + Sync + 'static,
    destroy: impl Fn(&T) + Send + Sync + 'static,
) -> Result<IoDevice<T>, IoDeviceError> {
    let sh = Arc::new(DeviceShared {
        key,
        name: name.to_string(),
        create: Box::new(create),
        destroy: Box::new(destroy),
        state: Mutex::new(DevState::default()),
        _t: PhantomData,
    });
    let mut devs = lock(&DEVICES);
    if devs.iter().any(|d| d.key == key) {
        return Err(IoDeviceError::AlreadyRegistered(key));
    }
    devs.push(DevEntry {
        key,
        dev: sh.clone(),
    });
    Ok(IoDevice { sh })
}

/// Finds a registered device by key.
pub fn io_device_lookup<T: 'static>(key: IoDeviceKey) -> Result<IoDevice<T>, IoDeviceError> {
    let dev = lock(&DEVICES)
        .iter()
        .find(|d| d.key == key)
        .map(|d| d.dev.clone())
        .ok_or(IoDeviceError::NotFound(key))?;
    let sh = dev
        .downcast::<DeviceShared<T>>()
        .map_err(|_| IoDeviceError::WrongType(key))?;
    Ok(IoDevice { sh })
}

/// The current thread's channel for device `key` (SPDK's
/// `spdk_get_io_channel`).
pub fn get_io_channel<T: 'static>(key: IoDeviceKey) -> Result<IoChannel<T>, IoDeviceError> {
    io_device_lookup::<T>(key)?.get_channel()
}

/// The current thread's channel of exactly this device (a device registered
/// later under a reused key is a different device).
fn find_channel<T: 'static>(
    th: &ThreadInner,
    dev: &Arc<DeviceShared<T>>,
) -> Option<Rc<ChannelInner<T>>> {
    let addr = Arc::as_ptr(dev) as usize;
    let e = th
        .channels
        .borrow()
        .iter()
        .find(|c| c.dev_addr() == addr)
        .cloned()?;
    e.into_any().downcast::<ChannelInner<T>>().ok()
}

impl<T: 'static> IoDevice<T> {
    /// Device key.
    pub fn key(&self) -> IoDeviceKey {
        self.sh.key
    }

    /// Device name.
    pub fn name(&self) -> &str {
        &self.sh.name
    }

    /// Number of threads currently holding a channel to this device.
    pub fn channel_count(&self) -> usize {
        lock(&self.sh.state).threads.len()
    }

    /// The calling thread's channel, created on first use.
    pub fn get_channel(&self) -> Result<IoChannel<T>, IoDeviceError> {
        let th = Thread::current().ok_or(IoDeviceError::NotOnThread)?;
        if lock(&self.sh.state).unregistered {
            return Err(IoDeviceError::Unregistered(self.sh.key));
        }
        if let Some(ch) = find_channel::<T>(&th.inner, &self.sh) {
            ch.refs.set(ch.refs.get() + 1);
            return Ok(IoChannel { inner: ch });
        }
        let ctx = (self.sh.create)().map_err(IoDeviceError::CreateFailed)?;
        let tid = th.id();
        {
            // Re-check under the lock: an unregister that raced with the
            // create callback must not complete while this channel exists.
            let mut st = lock(&self.sh.state);
            if st.unregistered {
                drop(st);
                (self.sh.destroy)(&ctx);
                return Err(IoDeviceError::Unregistered(self.sh.key));
            }
            st.threads.push(tid);
        }
        let inner = Rc::new(ChannelInner {
            dev: self.sh.clone(),
            ctx,
            refs: Cell::new(1),
            destroyed: Cell::new(false),
            thread: Rc::downgrade(&th.inner),
            thread_id: tid,
        });
        th.inner
            .channels
            .borrow_mut()
            .push(inner.clone() as Rc<dyn ChannelEntry>);
        Ok(IoChannel { inner })
    }

    /// Unregisters the device (SPDK's `spdk_io_device_unregister`): no new
    /// channels can be created; `done` runs (on the calling thread if there
    /// is one, else wherever the last channel goes away) once every existing
    /// channel has been destroyed — immediately-but-asynchronously if there
    /// are none.
    pub fn unregister(self, done: impl FnOnce() + Send + 'static) {
        lock(&DEVICES).retain(|d| d.key != self.sh.key);
        let caller = Thread::current().map(|t| t.handle());
        let cb = {
            let mut st = lock(&self.sh.state);
            st.unregistered = true;
            let cb: UnregisterCb = (caller, Box::new(done));
            if st.threads.is_empty() {
                Some(cb)
            } else {
                st.unregister_cb = Some(cb);
                None
            }
        };
        if let Some((th, cb)) = cb {
            deliver(th, cb);
        }
    }

    /// Visits every thread holding a channel to this device, one after the
    /// other (a message hop to each), calling `f(channel, iter)` there. `f`
    /// must eventually call [`ChannelIter::continue_with`] (possibly later,
    /// from an async completion on that thread); a non-zero status stops the
    /// iteration. `done(status)` then runs on the calling thread.
    pub fn for_each_channel(
        &self,
        f: impl Fn(&IoChannel<T>, ChannelIter<T>) + Send + Sync + 'static,
        done: impl FnOnce(i32) + Send + 'static,
    ) -> Result<(), IoDeviceError> {
        let orig = Thread::current()
            .ok_or(IoDeviceError::NotOnThread)?
            .handle();
        let ids = lock(&self.sh.state).threads.clone();
        let threads: Vec<ThreadHandle> = all_threads()
            .into_iter()
            .filter(|h| ids.contains(&h.id()))
            .collect();
        let st = Box::new(IterState {
            dev: self.sh.clone(),
            threads,
            idx: 0,
            f: Arc::new(f),
            done: Box::new(done),
            orig,
        });
        ChannelIter::dispatch(st, 0);
        Ok(())
    }
}

type IterFn<T> = Arc<dyn Fn(&IoChannel<T>, ChannelIter<T>) + Send + Sync>;

struct IterState<T: 'static> {
    dev: Arc<DeviceShared<T>>,
    threads: Vec<ThreadHandle>,
    idx: usize,
    f: IterFn<T>,
    done: Box<dyn FnOnce(i32) + Send>,
    orig: ThreadHandle,
}

/// Continuation handle of [`IoDevice::for_each_channel`] (SPDK's
/// `spdk_io_channel_iter`). `Send`: it may be carried through async work.
pub struct ChannelIter<T: 'static> {
    st: Box<IterState<T>>,
}

impl<T: 'static> fmt::Debug for ChannelIter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelIter({}/{})", self.st.idx, self.st.threads.len())
    }
}

impl<T: 'static> ChannelIter<T> {
    /// The thread that started the iteration.
    pub fn origin(&self) -> &ThreadHandle {
        &self.st.orig
    }

    /// Moves on to the next thread (status 0) or stops and completes with
    /// `status` (non-zero).
    pub fn continue_with(self, status: i32) {
        let mut st = self.st;
        st.idx += 1;
        Self::dispatch(st, status);
    }

    fn dispatch(mut st: Box<IterState<T>>, status: i32) {
        loop {
            if status != 0 || st.idx >= st.threads.len() {
                let IterState { done, orig, .. } = *st;
                if let Err(done) = orig.try_send(move || done(status)) {
                    done();
                }
                return;
            }
            let target = st.threads[st.idx].clone();
            if target.is_exited() {
                st.idx += 1;
                continue;
            }
            if target.send_msg(move || Self::arrive(st)).is_err() {
                tracing::warn!("for_each_channel: target exited mid-iteration; iteration dropped");
            }
            return;
        }
    }

    fn arrive(mut st: Box<IterState<T>>) {
        let ch = Thread::current().and_then(|t| find_channel::<T>(&t.inner, &st.dev));
        match ch {
            Some(inner) if !inner.destroyed.get() => {
                inner.refs.set(inner.refs.get() + 1);
                let ch = IoChannel { inner };
                let f = st.f.clone();
                f(&ch, ChannelIter { st });
            }
            _ => {
                st.idx += 1;
                Self::dispatch(st, 0);
            }
        }
    }
}

/// Type-erased view of a thread's channel, for the thread's channel list.
pub(crate) trait ChannelEntry {
    /// Identity of the device (address of its shared state).
    fn dev_addr(&self) -> usize;
    fn dev_name(&self) -> &str;
    fn refs(&self) -> usize;
    fn into_any(self: Rc<Self>) -> Rc<dyn Any>;
    fn release_from_dead_thread(&self);
}

struct ChannelInner<T: 'static> {
    dev: Arc<DeviceShared<T>>,
    ctx: T,
    refs: Cell<usize>,
    destroyed: Cell<bool>,
    thread: Weak<ThreadInner>,
    thread_id: u64,
}

impl<T: 'static> ChannelInner<T> {
    fn destroy_now(&self) {
        if self.destroyed.replace(true) {
            return;
        }
        (self.dev.destroy)(&self.ctx);
        self.dev.channel_gone(self.thread_id);
    }

    fn maybe_destroy(self: &Rc<Self>) {
        if self.refs.get() > 0 || self.destroyed.get() {
            return;
        }
        if let Some(th) = self.thread.upgrade() {
            let addr = Arc::as_ptr(&self.dev) as usize;
            let removed = {
                let mut chans = th.channels.borrow_mut();
                let pos = chans.iter().position(|c| c.dev_addr() == addr);
                pos.map(|i| chans.remove(i))
            };
            drop(removed);
        }
        self.destroy_now();
    }
}

impl<T: 'static> ChannelEntry for ChannelInner<T> {
    fn dev_addr(&self) -> usize {
        Arc::as_ptr(&self.dev) as usize
    }
    fn dev_name(&self) -> &str {
        &self.dev.name
    }
    fn refs(&self) -> usize {
        self.refs.get()
    }
    fn into_any(self: Rc<Self>) -> Rc<dyn Any> {
        self
    }
    fn release_from_dead_thread(&self) {
        self.destroy_now();
    }
}

/// A reference to the current thread's channel for a device (SPDK's
/// `struct spdk_io_channel *`). `Deref`s to the channel context `T`.
/// Clone = get (refcount + 1); drop = put. Not `Send`.
pub struct IoChannel<T: 'static> {
    inner: Rc<ChannelInner<T>>,
}

impl<T: 'static> IoChannel<T> {
    /// Name of the device.
    pub fn device_name(&self) -> &str {
        &self.inner.dev.name
    }

    /// Key of the device.
    pub fn device_key(&self) -> IoDeviceKey {
        self.inner.dev.key
    }

    /// Current reference count.
    pub fn refs(&self) -> usize {
        self.inner.refs.get()
    }

    /// Id of the owning thread.
    pub fn thread_id(&self) -> u64 {
        self.inner.thread_id
    }
}

impl<T: 'static> fmt::Debug for IoChannel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IoChannel({}, thread {}, refs {})",
            self.inner.dev.name,
            self.inner.thread_id,
            self.inner.refs.get()
        )
    }
}

impl<T: 'static> Deref for IoChannel<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner.ctx
    }
}

impl<T: 'static> Clone for IoChannel<T> {
    fn clone(&self) -> Self {
        self.inner.refs.set(self.inner.refs.get() + 1);
        IoChannel {
            inner: self.inner.clone(),
        }
    }
}

impl<T: 'static> Drop for IoChannel<T> {
    fn drop(&mut self) {
        let r = self.inner.refs.get().saturating_sub(1);
        self.inner.refs.set(r);
        if r == 0 {
            match self.inner.thread.upgrade() {
                Some(th) => {
                    let c = self.inner.clone();
                    th.local
                        .borrow_mut()
                        .push_back(Box::new(move || c.maybe_destroy()));
                }
                None => self.inner.destroy_now(),
            }
        }
    }
}
