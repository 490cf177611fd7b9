//! rspdk's environment layer: what lets every driver above it do DMA from
//! user space without DPDK.
//!
//! - [`init`] sets the env up once per process from [`EnvOpts`] (SPDK's
//!   `-s`, `--huge-dir`, `--no-huge`, `--iova-mode`).
//! - DMA memory: [`DmaBuf`] (safe, owned) and the raw API [`dma_malloc`],
//!   [`dma_zmalloc`], [`dma_realloc`], [`dma_free`]: pinned hugepage memory
//!   from per-socket heaps, with per-thread caches on the fast path. The
//!   contract (alignment, contiguity, zeroing) is in [`alloc`].
//! - Translation: [`mem_register`]/[`mem_unregister`] for foreign memory,
//!   [`MemMap`] for any VA-to-value map with registration notifications, and
//!   [`vtophys`] for the device-visible address of any registered byte.
//! - [`memzone_reserve`], [`Mempool`], [`Ring`]: SPDK's named zones, object
//!   pools and lock-free rings.
//! - [`mem_stats`]: per-socket heap statistics.
//! - [`pci`], [`pcidev`], [`vfio`], [`mmio`]: PCI devices from sysfs,
//!   binding to vfio-pci/uio_pci_generic, and user-space access to them
//!   (BARs, config space, IOMMU mappings of every DMA region).
//! - [`hugepages`] and [`sys`]: the kernel's view (hugepage pools, mounts,
//!   pagemap), used by `rspdk_setup` and `rspdk_mem`.
//!
//! Layering: this crate depends on no other rspdk crate.

pub mod alloc;
pub mod buf;
mod env;
pub mod error;
mod heap;
pub mod hugepages;
pub mod memmap;
pub mod mempool;
pub mod memzone;
pub mod mmio;
pub mod pci;
pub mod pcidev;
pub mod ring;
pub mod sys;
pub mod vfio;
mod vfio_sys;
pub mod vtophys;

pub use alloc::{
    dma_free, dma_malloc, dma_realloc, dma_socket_of, dma_usable_size, dma_zmalloc, heap_segments,
    mem_stats, HeapStats, MemStats, SOCKET_ID_ANY,
};
pub use buf::DmaBuf;
pub use env::{env, init, Env, EnvOpts, DEFAULT_BASE_VIRTADDR, MAX_SOCKETS};
pub use error::{EnvError, Result};
pub use memmap::{
    mem_register, mem_unregister, MemMap, MemMapAction, MemMapNotify, TranslationKind,
};
pub use mempool::Mempool;
pub use memzone::{memzone_free, memzone_lookup, memzone_reserve, memzones, Memzone};
pub use ring::{Ring, RingType};
pub use vtophys::{is_dma_memory, vtophys, vtophys_map, IovaMode, VTOPHYS_ERROR};
