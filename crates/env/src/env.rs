//! Environment initialisation (SPDK: `spdk_env_opts`, `spdk_env_init`).

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::error::{EnvError, Result};
use crate::heap::{Heap, HeapConfig};
use crate::hugepages;
use crate::sys::{self, human_size, Backing, PAGE_1G, PAGE_2M};
use crate::vtophys::{self, IovaMode};

/// Highest NUMA socket id the env manages (sockets 0..MAX_SOCKETS).
pub const MAX_SOCKETS: usize = 8;

/// Where the first heap's address window is placed by default: SPDK's
/// `base_virtaddr`, low enough for a 47-bit IOMMU aperture.
pub const DEFAULT_BASE_VIRTADDR: usize = 0x2000_0000_0000;

/// Options for [`init`], in SPDK's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvOpts {
    /// Application name, for messages.
    pub name: String,
    /// Memory to reserve up front, in MiB (`-s`, `--mem-size`); 0 reserves
    /// nothing and grows on demand.
    pub mem_size_mb: usize,
    /// Most memory a socket's heap may hold, in MiB.
    pub mem_limit_mb: usize,
    /// A hugetlbfs mount to take hugepages from (`--huge-dir`). Without it,
    /// anonymous `MAP_HUGETLB` memory is used.
    pub huge_dir: Option<PathBuf>,
    /// Hugepage size in bytes when `huge_dir` is not given (2 MiB or 1 GiB).
    pub huge_page_size: usize,
    /// Ordinary 4 KiB pages, locked, instead of hugepages (`--no-huge`).
    pub no_huge: bool,
    /// How device-visible addresses are chosen (`--iova-mode`).
    pub iova_mode: IovaMode,
    /// Where the socket-0 heap window goes; socket `n` is `n` windows above.
    pub base_virtaddr: usize,
    /// Free memory a heap keeps instead of giving it back, in MiB.
    pub retain_free_mb: usize,
}

impl Default for EnvOpts {
    fn default() -> Self {
        EnvOpts {
            name: "rspdk".into(),
            mem_size_mb: 0,
            mem_limit_mb: 64 * 1024,
            huge_dir: None,
            huge_page_size: PAGE_2M,
            no_huge: false,
            iova_mode: IovaMode::Auto,
            base_virtaddr: DEFAULT_BASE_VIRTADDR,
            retain_free_mb: 16,
        }
    }
}

/// The initialised environment.
#[derive(Debug)]
pub struct Env {
    opts: EnvOpts,
    backing: Backing,
    iova_mode: IovaMode,
    /// Sockets with memory.
    nodes: Vec<u32>,
    heaps: [OnceLock<Heap>; MAX_SOCKETS],
    /// The socket whose heap took the pre-reserved memory.
    main_socket: u32,
    /// Serialises heap creation so a window is reserved once per socket.
    create_lock: std::sync::Mutex<()>,
}

static ENV: OnceLock<Env> = OnceLock::new();

/// The environment, if [`init`] has run.
#[inline]
pub fn env() -> Option<&'static Env> {
    ENV.get()
}

/// The environment, or an error that says to initialise it.
#[inline]
pub(crate) fn env_or_err() -> Result<&'static Env> {
    ENV.get().ok_or_else(|| {
        EnvError::State("the env is not initialised: call rspdk_env::init first".into())
    })
}

/// Initialises the environment once per process (SPDK: `spdk_env_init`).
///
/// Chooses the backing (hugetlbfs in `huge_dir`, anonymous hugepages, or
/// `--no-huge` pages), resolves the IOVA mode, installs the vtophys map and
/// reserves `mem_size_mb` on the current socket.
pub fn init(opts: &EnvOpts) -> Result<&'static Env> {
    if let Some(e) = ENV.get() {
        return Err(EnvError::State(format!(
            "the env is already initialised (as '{}'); init runs once per process",
            e.opts.name
        )));
    }
    crate::hugepages::check_mem_size(opts.mem_size_mb)?;
    let backing = choose_backing(opts)?;
    let iova_mode = resolve_iova_mode(opts)?;
    let mut opts = opts.clone();
    place_below_iommu_limit(&mut opts, iova_mode, crate::vfio::iommu_address_width());
    let opts = &opts;
    let nodes = sys::nodes_with_memory();
    let here = sys::current_node();
    let main_socket = if nodes.contains(&here) {
        here
    } else {
        nodes[0]
    };
    if main_socket as usize >= MAX_SOCKETS {
        return Err(EnvError::InvalidArgument(format!(
            "NUMA node {main_socket} is beyond the {MAX_SOCKETS} sockets rspdk supports"
        )));
    }
    let env = Env {
        opts: opts.clone(),
        backing,
        iova_mode,
        nodes,
        heaps: Default::default(),
        main_socket,
        create_lock: std::sync::Mutex::new(()),
    };
    if ENV.set(env).is_err() {
        return Err(EnvError::State(
            "the env was initialised concurrently".into(),
        ));
    }
    let env = ENV.get().expect("just set");
    vtophys::install(iova_mode)?;
    let reserve = opts.mem_size_mb << 20;
    env.heap_or_create(main_socket as usize, reserve)?;
    tracing::info!(
        name = %opts.name,
        backing = ?env.backing,
        iova_mode = %iova_mode,
        reserved = %human_size(reserve),
        socket = main_socket,
        "env initialised"
    );
    Ok(env)
}

fn choose_backing(opts: &EnvOpts) -> Result<Backing> {
    if opts.no_huge {
        if opts.huge_dir.is_some() {
            return Err(EnvError::InvalidArgument(
                "--no-huge and --huge-dir contradict each other: drop one".into(),
            ));
        }
        tracing::warn!(
            "--no-huge: DMA memory is ordinary 4 KiB pages, locked. The kernel may still migrate them, so physical addresses are not stable, and buffers are physically contiguous only within 4 KiB: fine for IOVA=VA behind an IOMMU and for tests, not for devices that DMA to physical addresses"
        );
        return Ok(Backing::Anon4k);
    }
    if let Some(dir) = &opts.huge_dir {
        return match sys::hugetlbfs_page_size(dir)? {
            Some(page_size) => Ok(Backing::Hugetlbfs {
                dir: dir.clone(),
                page_size,
            }),
            None => Err(EnvError::InvalidArgument(format!(
                "--huge-dir {} is not a hugetlbfs mount: mount one with `rspdk_setup config` \
                 (or `mount -t hugetlbfs nodev {}`), or omit --huge-dir",
                dir.display(),
                dir.display()
            ))),
        };
    }
    let page_size = opts.huge_page_size;
    if page_size != PAGE_2M && page_size != PAGE_1G {
        return Err(EnvError::InvalidArgument(format!(
            "hugepage size {} is not 2 MiB or 1 GiB",
            human_size(page_size)
        )));
    }
    if !hugepages::sizes().contains(&page_size) {
        return Err(EnvError::InvalidArgument(format!(
            "this kernel offers no {} hugepages (it has: {}); use --no-huge",
            human_size(page_size),
            hugepages::sizes()
                .iter()
                .map(|s| human_size(*s))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if hugepages::free_pages(page_size) == Some(0) {
        tracing::warn!(
            "no free {} hugepages: DMA allocations will fail until some are reserved (`rspdk_setup config`, e.g. HUGEMEM=2048), or run with --no-huge",
            human_size(page_size)
        );
    }
    Ok(Backing::AnonHuge { page_size })
}

/// With IOVA = VA, the heap's addresses are what the IOMMU sees: an IOMMU
/// narrower than the default window (Intel's 39-bit one) cannot map it.
/// When the caller kept the default base, the heap moves down to a quarter
/// of the IOMMU's range; a base the caller chose is kept (VFIO then reports
/// memory beyond the aperture with the fix).
fn place_below_iommu_limit(opts: &mut EnvOpts, mode: IovaMode, width: Option<u32>) {
    let Some(width) = width else { return };
    if mode != IovaMode::Va || width >= 64 {
        return;
    }
    let limit = 1usize << width;
    let window = (opts.mem_limit_mb << 20).next_power_of_two();
    if opts.base_virtaddr + window <= limit {
        return;
    }
    if opts.base_virtaddr != DEFAULT_BASE_VIRTADDR {
        tracing::warn!(
            base = format_args!("{:#x}", opts.base_virtaddr),
            iommu_bits = width,
            "the DMA heap's base is beyond the IOMMU's {width}-bit address range; VFIO will refuse to map it"
        );
        return;
    }
    let base = limit / 4;
    if base + window > limit {
        opts.mem_limit_mb = ((limit - base) / 2) >> 20;
    }
    tracing::info!(
        from = format_args!("{:#x}", DEFAULT_BASE_VIRTADDR),
        to = format_args!("{base:#x}"),
        iommu_bits = width,
        "IOMMU addresses are {width} bits wide: placing the DMA heap low so that IOVA = VA fits"
    );
    opts.base_virtaddr = base;
}

fn resolve_iova_mode(opts: &EnvOpts) -> Result<IovaMode> {
    let pfns = sys::pagemap_shows_pfns();
    // SPDK's rule: with an IOMMU (devices through VFIO) use virtual
    // addresses; without one, physical addresses.
    let iommu = crate::pci::iommu_state();
    if opts.iova_mode == IovaMode::Auto
        && iommu.units > 0
        && std::path::Path::new("/dev/vfio/vfio").exists()
    {
        return Ok(IovaMode::Va);
    }
    match opts.iova_mode {
        IovaMode::Va => Ok(IovaMode::Va),
        IovaMode::Pa if pfns => Ok(IovaMode::Pa),
        IovaMode::Pa => Err(EnvError::InvalidArgument(
            "--iova-mode pa needs physical addresses, which /proc/self/pagemap shows only with CAP_SYS_ADMIN: run as root or use --iova-mode va".into(),
        )),
        IovaMode::Auto if pfns => Ok(IovaMode::Pa),
        IovaMode::Auto => {
            tracing::warn!(
                "physical addresses are hidden (not root): using IOVA=VA, which only devices behind an IOMMU (VFIO) can use"
            );
            Ok(IovaMode::Va)
        }
    }
}

impl Env {
    /// The options it was initialised with (after placement: the heap
    /// base may have moved below a narrow IOMMU's limit).
    pub fn opts(&self) -> &EnvOpts {
        &self.opts
    }

    /// The memory backing in use.
    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    /// The resolved IOVA mode (never `Auto`).
    pub fn iova_mode(&self) -> IovaMode {
        self.iova_mode
    }

    /// Sockets (NUMA nodes) that have memory.
    pub fn sockets(&self) -> &[u32] {
        &self.nodes
    }

    /// The socket that holds the pre-reserved memory.
    pub fn main_socket(&self) -> u32 {
        self.main_socket
    }

    /// Heap `id` if it exists.
    #[inline]
    pub(crate) fn heap(&self, id: usize) -> Option<&Heap> {
        self.heaps.get(id)?.get()
    }

    /// Heaps that exist, with their ids.
    pub(crate) fn heaps(&self) -> impl Iterator<Item = (usize, &Heap)> {
        self.heaps
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.get().map(|h| (i, h)))
    }

    /// The heap holding `addr`, with its id.
    #[inline]
    pub(crate) fn heap_of(&self, addr: usize) -> Option<(usize, &Heap)> {
        // Most buffers live on the main socket: look there first.
        let main = self.main_socket as usize;
        if let Some(h) = self.heap(main) {
            if h.contains(addr) {
                return Some((main, h));
            }
        }
        self.heaps().find(|(_, h)| h.contains(addr))
    }

    /// Maps a requested socket (`SOCKET_ID_ANY` = -1) to a heap id, falling
    /// back (with a warning, once) when the socket has no memory.
    pub(crate) fn socket_to_heap(&self, socket: i32) -> usize {
        if socket < 0 {
            return self.main_socket as usize;
        }
        if self.nodes.contains(&(socket as u32)) && (socket as usize) < MAX_SOCKETS {
            return socket as usize;
        }
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                socket,
                fallback = self.main_socket,
                "requested socket has no memory; allocating on the main socket instead"
            )
        });
        self.main_socket as usize
    }

    /// The heap for `id`, created (reserving `initial` bytes) on first use.
    pub(crate) fn heap_or_create(&self, id: usize, initial: usize) -> Result<&Heap> {
        let cell = &self.heaps[id];
        if let Some(h) = cell.get() {
            return Ok(h);
        }
        let _creating = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = cell.get() {
            return Ok(h);
        }
        let window = self.opts.mem_limit_mb << 20;
        let page = self.backing.page_size();
        let window = (window + page - 1) & !(page - 1);
        let config = HeapConfig {
            socket: id as u32,
            bind_node: self.nodes.len() > 1,
            backing: self.backing.clone(),
            base_hint: self.opts.base_virtaddr + id * window.next_power_of_two(),
            window,
            limit: window,
            grow_min: (16 << 20).max(page),
            retain_free: self.opts.retain_free_mb << 20,
        };
        let heap = Heap::new(config, crate::alloc::NUM_CLASSES, initial)?;
        let _ = cell.set(heap);
        Ok(cell.get().expect("set above"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_moves_below_a_39_bit_iommu() {
        let mut o = EnvOpts::default();
        place_below_iommu_limit(&mut o, IovaMode::Va, Some(39));
        assert_eq!(o.base_virtaddr, 1 << 37);
        assert!(o.base_virtaddr + ((o.mem_limit_mb << 20).next_power_of_two()) <= 1 << 39);
        let mut o = EnvOpts::default();
        place_below_iommu_limit(&mut o, IovaMode::Va, Some(48));
        assert_eq!(o.base_virtaddr, DEFAULT_BASE_VIRTADDR);
        let mut o = EnvOpts::default();
        place_below_iommu_limit(&mut o, IovaMode::Pa, Some(39));
        assert_eq!(o.base_virtaddr, DEFAULT_BASE_VIRTADDR);
        let mut o = EnvOpts {
            base_virtaddr: 0x3000_0000_0000,
            ..Default::default()
        };
        place_below_iommu_limit(&mut o, IovaMode::Va, Some(39));
        assert_eq!(o.base_virtaddr, 0x3000_0000_0000, "a chosen base is kept");
    }
}
