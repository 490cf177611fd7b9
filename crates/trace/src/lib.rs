//! Tracepoints (SPDK: lib/trace): each reactor core records events into
//! its own ring in a shared-memory file (`/dev/shm/<app>_trace.pid<pid>`,
//! or `<app>_trace.<shm_id>`), which `rspdk_trace` reads while the app runs
//! or after it exits.
//!
//! - Groups and their ids are SPDK's ([`group`]), so `-e bdev,nvmf_tcp`,
//!   `-e 0x8` and `-e bdev:0x1` mean what they mean to SPDK's apps.
//! - A disabled tracepoint costs one load and branch: [`enabled`] reads the
//!   group's 64-bit mask. An enabled one writes 64 bytes into the core's
//!   ring: no lock, no allocation, no system call.
//! - A layer describes its tracepoints once ([`register_tpoints`]; names,
//!   object type, argument names) and records with [`record`].
//! - Threads that are not bound to a ring (not a reactor) record nothing.

pub mod format;
mod shm;

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use thiserror::Error;

pub use format::{tpoint_id, Event, FormatError, TpointDesc, Trace, MAX_ARGS, MAX_GROUPS};

/// SPDK's trace groups (`include/spdk_internal/trace_defs.h`): id and name.
pub mod group {
    /// iSCSI connections and PDUs.
    pub const ISCSI_CONN: u8 = 0x1;
    /// SCSI tasks.
    pub const SCSI: u8 = 0x2;
    /// Block device I/O.
    pub const BDEV: u8 = 0x3;
    /// NVMe-oF RDMA transport.
    pub const NVMF_RDMA: u8 = 0x4;
    /// NVMe-oF TCP transport.
    pub const NVMF_TCP: u8 = 0x5;
    /// Threads: messages and pollers.
    pub const THREAD: u8 = 0xA;
    /// The NVMe driver's PCIe queue pairs.
    pub const NVME_PCIE: u8 = 0xB;
    /// The NVMe driver's TCP queue pairs.
    pub const NVME_TCP: u8 = 0xD;
    /// The NVMe bdev module.
    pub const BDEV_NVME: u8 = 0xE;
    /// Sockets.
    pub const SOCK: u8 = 0xF;
    /// Blobstore.
    pub const BLOB: u8 = 0x10;
    /// RAID bdevs.
    pub const BDEV_RAID: u8 = 0x11;
    /// Schedulers.
    pub const SCHEDULER: u8 = 0x12;

    /// Every group: (id, name as `-e` and the trace RPCs take it).
    pub const ALL: &[(u8, &str)] = &[
        (ISCSI_CONN, "iscsi_conn"),
        (SCSI, "scsi"),
        (BDEV, "bdev"),
        (NVMF_RDMA, "nvmf_rdma"),
        (NVMF_TCP, "nvmf_tcp"),
        (THREAD, "thread"),
        (NVME_PCIE, "nvme_pcie"),
        (NVME_TCP, "nvme_tcp"),
        (BDEV_NVME, "bdev_nvme"),
        (SOCK, "sock"),
        (BLOB, "blob"),
        (BDEV_RAID, "bdev_raid"),
        (SCHEDULER, "scheduler"),
    ];

    /// The id of group `name`.
    pub fn by_name(name: &str) -> Option<u8> {
        ALL.iter().find(|(_, n)| *n == name).map(|(id, _)| *id)
    }

    /// The name of group `id`.
    pub fn name(id: u8) -> Option<&'static str> {
        ALL.iter().find(|(g, _)| *g == id).map(|(_, n)| *n)
    }
}

/// SPDK's object types (what an event's object id names) and the letter
/// `rspdk_trace` prints before an object's number.
pub mod object {
    /// An iSCSI PDU.
    pub const ISCSI_PDU: u8 = 0x1;
    /// A bdev I/O.
    pub const BDEV_IO: u8 = 0x2;
    /// An NVMe PCIe request.
    pub const NVME_PCIE_REQ: u8 = 0x3;
    /// An NVMe/TCP request (host).
    pub const NVME_TCP_REQ: u8 = 0x4;
    /// A SCSI task.
    pub const SCSI_TASK: u8 = 0x10;
    /// An NVMe-oF TCP request (target).
    pub const NVMF_TCP_IO: u8 = 0x18;

    /// (id, name, prefix) of each.
    pub const ALL: &[(u8, &str, u8)] = &[
        (ISCSI_PDU, "ISCSI_PDU", b'p'),
        (BDEV_IO, "BDEV_IO", b'i'),
        (NVME_PCIE_REQ, "NVME_PCIE_REQ", b'r'),
        (NVME_TCP_REQ, "NVME_TCP_REQ", b't'),
        (SCSI_TASK, "SCSI_TASK", b's'),
        (NVMF_TCP_IO, "NVMF_TCP_IO", b'r'),
    ];
}

/// A tracepoint's description, registered once by the layer that records it.
#[derive(Debug, Clone, Copy)]
pub struct TpointDef {
    /// Id: [`tpoint_id`]`(group, n)`.
    pub id: u16,
    /// Name, SPDK's where SPDK has the tracepoint (e.g. `BDEV_IO_START`).
    pub name: &'static str,
    /// What its object id names ([`object`]; 0: nothing).
    pub object_type: u8,
    /// Whether it starts a new object (an I/O's first event).
    pub new_object: bool,
    /// Names of its arguments (at most [`MAX_ARGS`]).
    pub args: &'static [&'static str],
}

/// Trace errors, for the RPCs and the app's `-e`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TraceError {
    /// Unknown group name.
    #[error("unknown tracepoint group '{0}' (groups: {groups})", groups = group_list())]
    UnknownGroup(String),
    /// A malformed `-e` value.
    #[error("bad tracepoint group spec '{0}': expected group names (bdev,nvmf_tcp), a group mask (0x8), group:tpoint_mask (bdev:0x3) or all")]
    BadSpec(String),
    /// The file could not be made.
    #[error("cannot create the trace file {path}: {reason}")]
    Create {
        /// Path tried.
        path: String,
        /// Why.
        reason: String,
    },
}

fn group_list() -> String {
    group::ALL
        .iter()
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Tracepoint mask of each group: the only state a disabled tracepoint
/// reads.
static MASKS: [AtomicU64; MAX_GROUPS] = [const { AtomicU64::new(0) }; MAX_GROUPS];
static SHM: OnceLock<shm::Shm> = OnceLock::new();
/// Descriptions registered so far (written to the file when it is made).
static DEFS: Mutex<Vec<TpointDef>> = Mutex::new(Vec::new());

/// Where the file goes once something asks for it ([`configure`]).
static CONFIG: OnceLock<TraceOpts> = OnceLock::new();

thread_local! {
    static RING: Cell<Option<shm::RingWriter>> = const { Cell::new(None) };
    /// The core this OS thread records for ([`bind_core`]).
    static CORE: Cell<Option<u32>> = const { Cell::new(None) };
}

/// Whether tracepoint `id` is enabled: one relaxed load and a bit test.
#[inline(always)]
pub fn enabled(id: u16) -> bool {
    let g = (id >> 6) as usize;
    g < MAX_GROUPS && MASKS[g].load(Ordering::Relaxed) & (1u64 << (id & 63)) != 0
}

/// Records an event of tracepoint `id` about `object_id` with up to
/// [`MAX_ARGS`] arguments, stamped with [`rspdk_util::clock::now_ns`], in
/// the calling core's ring. Costs a branch when the tracepoint is off.
#[inline(always)]
pub fn record(id: u16, object_id: u64, args: &[u64]) {
    if enabled(id) {
        record_at(id, rspdk_util::clock::now_ns(), object_id, args);
    }
}

/// [`record`] with a tick the caller already has (no second clock read).
#[inline(always)]
pub fn record_tsc(id: u16, tsc: u64, object_id: u64, args: &[u64]) {
    if enabled(id) {
        record_at(id, tsc, object_id, args);
    }
}

#[inline(never)]
fn record_at(id: u16, tsc: u64, object_id: u64, args: &[u64]) {
    RING.with(|r| {
        if r.get().is_none() {
            // The file was made after this thread was bound (the first
            // tracepoint was enabled later): bind to its ring now.
            let core = CORE.with(|c| c.get());
            r.set(core.and_then(|c| SHM.get().and_then(|s| s.ring(c))));
        }
        if let Some(ring) = r.get() {
            ring.push(tsc, id, object_id, args);
        }
    });
}

/// Describes tracepoints (idempotent: a layer may call it on every init).
pub fn register_tpoints(defs: &[TpointDef]) {
    let mut all = DEFS.lock().unwrap_or_else(|e| e.into_inner());
    for d in defs {
        if all.iter().any(|o| o.id == d.id) {
            continue;
        }
        all.push(*d);
        if let Some(shm) = SHM.get() {
            write_def(shm, d);
        }
    }
}

fn write_def(shm: &shm::Shm, d: &TpointDef) {
    let desc = TpointDesc {
        id: d.id,
        name: d.name.to_string(),
        object_type: d.object_type,
        new_object: d.new_object,
        owner_type: 0,
        args: d.args.iter().map(|a| a.to_string()).collect(),
    };
    shm.write(
        format::DEFS_OFFSET + d.id as usize * format::DEF_SIZE,
        &format::encode_def(&desc),
    );
}

/// Where the trace file goes and how big it is.
#[derive(Debug, Clone)]
pub struct TraceOpts {
    /// App name (the file's prefix).
    pub app_name: String,
    /// SPDK's `-i`: names the file `<app>_trace.<shm_id>` instead of by pid.
    pub shm_id: Option<i32>,
    /// Rings: one per core id up to the highest reactor core.
    pub rings: u32,
    /// Entries per ring (rounded up to a power of two).
    pub entries: u64,
}

/// SPDK's default entries per core (`SPDK_APP_DEFAULT_NUM_TRACE_ENTRIES`).
pub const DEFAULT_ENTRIES: u64 = 32 * 1024;

/// The file name SPDK's tools look for.
pub fn shm_name(app_name: &str, shm_id: Option<i32>) -> String {
    match shm_id {
        Some(id) => format!("{app_name}_trace.{id}"),
        None => format!("{app_name}_trace.pid{}", std::process::id()),
    }
}

/// Creates the trace file (once per process; later calls return the first
/// file's path).
pub fn init(opts: &TraceOpts) -> Result<PathBuf, TraceError> {
    if let Some(s) = SHM.get() {
        return Ok(s.path().to_path_buf());
    }
    let path = PathBuf::from("/dev/shm").join(shm_name(&opts.app_name, opts.shm_id));
    let entries = opts.entries.clamp(16, 1 << 24).next_power_of_two();
    let rings = opts.rings.clamp(1, format::MAX_RINGS);
    let shm = shm::Shm::create(&path, rings, entries).map_err(|e| TraceError::Create {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    shm.write(
        0,
        &format::encode_header(
            rings,
            entries,
            1_000_000_000,
            std::process::id() as u64,
            &opts.app_name,
        ),
    );
    for (id, name) in group::ALL {
        let mut slot = [0u8; format::NAME_SLOT];
        format::put_name(&mut slot, name);
        shm.write(
            format::GROUP_NAMES_OFFSET + *id as usize * format::NAME_SLOT,
            &slot,
        );
    }
    for (id, name, prefix) in object::ALL {
        let mut slot = [0u8; format::NAME_SLOT];
        format::put_name(&mut slot[..format::NAME_SLOT - 1], name);
        slot[format::NAME_SLOT - 1] = *prefix;
        shm.write(
            format::OBJECTS_OFFSET + *id as usize * format::NAME_SLOT,
            &slot,
        );
    }
    let shm = SHM.get_or_init(|| shm);
    for d in DEFS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        write_def(shm, d);
    }
    mirror_masks();
    Ok(shm.path().to_path_buf())
}

/// Binds the calling OS thread (a reactor) to ring `core`; its events go
/// there. No-op without a trace file or past the last ring.
pub fn bind_core(core: u32) {
    CORE.with(|c| c.set(Some(core)));
    let ring = SHM.get().and_then(|s| s.ring(core));
    RING.with(|r| r.set(ring));
}

/// Says where the trace file goes, without making it: it is made when a
/// tracepoint is first enabled or its path is asked for ([`ensure_file`]),
/// so an app that never traces leaves nothing in `/dev/shm`.
pub fn configure(opts: TraceOpts) {
    let _ = CONFIG.set(opts);
}

/// The trace file, made now if [`configure`]d and not made yet.
pub fn ensure_file() -> Result<PathBuf, TraceError> {
    if let Some(s) = SHM.get() {
        return Ok(s.path().to_path_buf());
    }
    match CONFIG.get() {
        Some(opts) => init(opts),
        None => Err(TraceError::Create {
            path: "/dev/shm".into(),
            reason: "tracing was not configured by the app".into(),
        }),
    }
}

/// Makes the file if a tracepoint is now enabled.
fn file_if_enabled() -> Result<(), TraceError> {
    if group_mask() != 0 && SHM.get().is_none() && CONFIG.get().is_some() {
        ensure_file()?;
    }
    Ok(())
}

/// The trace file's path, once made.
pub fn shm_path() -> Option<PathBuf> {
    SHM.get().map(|s| s.path().to_path_buf())
}

/// Removes the trace file at exit unless something was recorded (SPDK's
/// rule: a file with events stays for `rspdk_trace` after the app is gone).
pub fn cleanup() {
    if let Some(s) = SHM.get() {
        let any = (0..s.rings()).any(|c| s.ring(c).is_some_and(|r| r.count() > 0));
        if !any {
            let _ = std::fs::remove_file(s.path());
        }
    }
}

/// Forgets every recorded event (`trace_clear`).
pub fn clear() {
    if let Some(s) = SHM.get() {
        s.clear();
    }
}

fn mirror_masks() {
    if let Some(s) = SHM.get() {
        for (g, m) in MASKS.iter().enumerate() {
            s.write(
                format::MASKS_OFFSET + g * 8,
                &m.load(Ordering::Relaxed).to_le_bytes(),
            );
        }
    }
}

fn group_id(name: &str) -> Result<u8, TraceError> {
    group::by_name(name).ok_or_else(|| TraceError::UnknownGroup(name.to_string()))
}

/// Sets bits of group `name`'s tracepoint mask (`trace_set_tpoint_mask`).
pub fn set_tpoint_mask(name: &str, mask: u64) -> Result<(), TraceError> {
    let g = group_id(name)?;
    MASKS[g as usize].fetch_or(mask, Ordering::Relaxed);
    mirror_masks();
    file_if_enabled()
}

/// Clears bits of group `name`'s tracepoint mask (`trace_clear_tpoint_mask`).
pub fn clear_tpoint_mask(name: &str, mask: u64) -> Result<(), TraceError> {
    let g = group_id(name)?;
    MASKS[g as usize].fetch_and(!mask, Ordering::Relaxed);
    mirror_masks();
    Ok(())
}

/// Enables every tracepoint of group `name`, or of all groups for `all`.
pub fn enable_group(name: &str) -> Result<(), TraceError> {
    set_group(name, u64::MAX)
}

/// Disables every tracepoint of group `name`, or of all groups for `all`.
pub fn disable_group(name: &str) -> Result<(), TraceError> {
    set_group(name, 0)
}

fn set_group(name: &str, mask: u64) -> Result<(), TraceError> {
    if name == "all" {
        for (g, _) in group::ALL {
            MASKS[*g as usize].store(mask, Ordering::Relaxed);
        }
    } else {
        MASKS[group_id(name)? as usize].store(mask, Ordering::Relaxed);
    }
    mirror_masks();
    file_if_enabled()
}

/// Group `id`'s tracepoint mask.
pub fn tpoint_mask(id: u8) -> u64 {
    MASKS
        .get(id as usize)
        .map_or(0, |m| m.load(Ordering::Relaxed))
}

/// A bit per group with any tracepoint enabled.
pub fn group_mask() -> u64 {
    MASKS
        .iter()
        .enumerate()
        .filter(|(_, m)| m.load(Ordering::Relaxed) != 0)
        .fold(0, |acc, (g, _)| acc | 1 << g)
}

/// The registered tracepoints of group `id`: (index in the group, name).
pub fn group_tpoints(id: u8) -> Vec<(u8, &'static str)> {
    let mut v: Vec<(u8, &'static str)> = DEFS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|d| (d.id >> 6) as u8 == id)
        .map(|d| ((d.id & 63) as u8, d.name))
        .collect();
    v.sort();
    v
}

/// Applies an app's `-e` value: comma-separated group names, `all`, a hex
/// or decimal group mask, or `group:tpoint_mask`.
pub fn apply_spec(spec: &str) -> Result<(), TraceError> {
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((name, mask)) = part.split_once(':') {
            let mask = parse_u64(mask).ok_or_else(|| TraceError::BadSpec(spec.into()))?;
            group_id(name)?;
            set_tpoint_mask(name, mask)?;
        } else if let Some(mask) = parse_u64(part) {
            for g in 0..MAX_GROUPS {
                if mask & (1 << g) != 0 {
                    let name = group::name(g as u8).ok_or_else(|| {
                        TraceError::BadSpec(format!("{spec} (group bit {g} is no group)"))
                    })?;
                    enable_group(name)?;
                }
            }
        } else {
            enable_group(part)?;
        }
    }
    Ok(())
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() => s.parse().ok(),
        None => None,
    }
}
