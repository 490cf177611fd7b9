//! VFIO: user-space access to PCI devices behind an IOMMU (SPDK's
//! `pci_vfio` in its DPDK env).
//!
//! One process-wide container (type1v2 IOMMU) holds the IOMMU group of every
//! device opened. When the first group joins it, a [`MemMap`] is created
//! whose notifier maps every registered DMA region into the IOMMU
//! (`VFIO_IOMMU_MAP_DMA`, IOVA = the region's [`vtophys`] address: the
//! virtual address in IOVA mode va) and unmaps it on unregistration, so the
//! DMA heap and [`crate::mem_register`]ed memory are reachable by devices
//! with no further work.
//!
//! The IOMMU's aperture (`VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`) is checked
//! on every mapping: an Intel IOMMU with 39-bit addresses cannot take the
//! default heap window at 0x2000_0000_0000. [`crate::init`] places the heap
//! low when sysfs shows such an IOMMU ([`iommu_address_width`]); a heap the
//! IOMMU cannot reach fails with a message that says how to place it.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{EnvError, Result};
use crate::memmap::{MemMap, MemMapAction, MemMapNotify, TranslationKind};
use crate::mmio::Bar;
use crate::vfio_sys as sys;
use crate::vtophys::{vtophys, VTOPHYS_ERROR};

/// What the IOMMU behind the container reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IommuInfo {
    /// Supported IOMMU page sizes (bit n set: 2^n bytes).
    pub pgsizes: u64,
    /// Usable IOVA ranges, inclusive `(start, end)`; empty if the kernel did
    /// not report them (then every address is assumed usable).
    pub iova_ranges: Vec<(u64, u64)>,
}

impl IommuInfo {
    /// True if `[iova, iova + len)` lies within one usable range.
    pub fn covers(&self, iova: u64, len: u64) -> bool {
        if self.iova_ranges.is_empty() {
            return true;
        }
        let Some(last) = iova.checked_add(len.saturating_sub(1)) else {
            return false;
        };
        self.iova_ranges
            .iter()
            .any(|&(s, e)| iova >= s && last <= e)
    }

    /// The highest usable IOVA.
    pub fn max_iova(&self) -> u64 {
        self.iova_ranges
            .iter()
            .map(|r| r.1)
            .max()
            .unwrap_or(u64::MAX)
    }
}

/// Parses the capability chain of `VFIO_IOMMU_GET_INFO` for the IOVA ranges.
fn parse_iova_ranges(info: &sys::IommuType1Info, buf: &[u8]) -> Vec<(u64, u64)> {
    let u16_at = |o: usize| buf.get(o..o + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        buf.get(o..o + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        buf.get(o..o + 8)
            .map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
    };
    let mut out = Vec::new();
    if info.flags & sys::IOMMU_INFO_CAPS == 0 {
        return out;
    }
    let mut off = info.cap_offset as usize;
    let mut hops = 0;
    while off != 0 && hops < 16 {
        hops += 1;
        let (Some(id), Some(next)) = (u16_at(off), u32_at(off + 4)) else {
            break;
        };
        if id == sys::IOMMU_TYPE1_INFO_CAP_IOVA_RANGE {
            let n = u32_at(off + 8).unwrap_or(0) as usize;
            for i in 0..n {
                let r = off + 16 + i * 16;
                if let (Some(s), Some(e)) = (u64_at(r), u64_at(r + 8)) {
                    out.push((s, e));
                }
            }
        }
        off = next as usize;
    }
    out
}

/// An open IOMMU group.
#[derive(Debug)]
struct Group {
    fd: OwnedFd,
}

/// The process's VFIO container.
struct Container {
    fd: OwnedFd,
    groups: Mutex<HashMap<u32, Arc<Group>>>,
    iommu: OnceLock<IommuInfo>,
    dma_map: OnceLock<MemMap>,
}

static CONTAINER: OnceLock<Container> = OnceLock::new();
static CONTAINER_INIT: Mutex<()> = Mutex::new(());

fn container() -> Result<&'static Container> {
    if let Some(c) = CONTAINER.get() {
        return Ok(c);
    }
    let _g = CONTAINER_INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = CONTAINER.get() {
        return Ok(c);
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/vfio/vfio")
        .map_err(|e| EnvError::Iommu(format!(
            "cannot open /dev/vfio/vfio ({e}): load VFIO (`modprobe vfio-pci`) on a machine with an IOMMU \
             (intel_iommu=on / amd_iommu=on), or bind the device to uio_pci_generic \
             (`rspdk_setup config --driver uio_pci_generic`) and run with IOVA mode pa"
        )))?;
    let fd: OwnedFd = file.into();
    let v = sys::ioctl_val(fd.as_fd(), sys::GET_API_VERSION, 0, "VFIO_GET_API_VERSION")?;
    if v != sys::VFIO_API_VERSION {
        return Err(EnvError::Iommu(format!(
            "VFIO API version {v}, expected {}",
            sys::VFIO_API_VERSION
        )));
    }
    let ext = sys::ioctl_val(
        fd.as_fd(),
        sys::CHECK_EXTENSION,
        sys::TYPE1V2_IOMMU,
        "VFIO_CHECK_EXTENSION type1v2",
    )?;
    if ext != 1 {
        return Err(EnvError::Iommu(
            "this kernel's VFIO has no type1v2 IOMMU support (vfio_iommu_type1 missing?): `modprobe vfio_iommu_type1`".into(),
        ));
    }
    let _ = CONTAINER.set(Container {
        fd,
        groups: Mutex::new(HashMap::new()),
        iommu: OnceLock::new(),
        dma_map: OnceLock::new(),
    });
    Ok(CONTAINER.get().expect("just set"))
}

/// The IOMMU info of the container, once a device has been opened.
pub fn iommu_info() -> Option<IommuInfo> {
    CONTAINER.get()?.iommu.get().cloned()
}

/// The address width of the machine's Intel IOMMU units as sysfs shows it
/// (MGAW in the capability register, VT-d spec 11.4.2), the smallest if
/// several; `None` without an Intel IOMMU.
pub fn iommu_address_width() -> Option<u32> {
    let dir = std::fs::read_dir("/sys/class/iommu").ok()?;
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("intel-iommu/cap")).ok())
        .filter_map(|s| u64::from_str_radix(s.trim(), 16).ok())
        .map(|cap| (((cap >> 16) & 0x3f) + 1) as u32)
        .min()
}

/// Devices in IOMMU group `group` (other than `bdf`) that are not bound to
/// vfio-pci, with their drivers.
fn group_blockers(group: u32, bdf: &str) -> Vec<String> {
    let dir = format!("/sys/kernel/iommu_groups/{group}/devices");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == bdf {
            continue;
        }
        let drv = std::fs::read_link(e.path().join("driver"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        match drv.as_deref() {
            Some("vfio-pci") | None => {}
            Some(d) => out.push(format!("{name} (bound to {d})")),
        }
    }
    out.sort();
    out
}

/// The IOMMU group of `bdf`, or an error that explains a missing IOMMU.
pub fn iommu_group_of(bdf: &str) -> Result<u32> {
    let link =
        std::fs::read_link(format!("/sys/bus/pci/devices/{bdf}/iommu_group")).map_err(|_| {
            EnvError::Iommu(format!(
                "{bdf} is in no IOMMU group: this machine has no IOMMU, or it is off. Enable it \
             (intel_iommu=on / amd_iommu=on on the kernel command line), or bind the device to \
             uio_pci_generic (`rspdk_setup config --driver uio_pci_generic`) and use IOVA mode pa \
             (physical addresses, hugepages)"
            ))
        })?;
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            EnvError::Iommu(format!(
                "{bdf}: unreadable IOMMU group link {}",
                link.display()
            ))
        })
}

fn open_group(c: &Container, group: u32, bdf: &str) -> Result<Arc<Group>> {
    let mut groups = c.groups.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(g) = groups.get(&group) {
        return Ok(g.clone());
    }
    let path = format!("/dev/vfio/{group}");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| EnvError::Iommu(format!(
            "cannot open {path} for {bdf} ({e}): is {bdf} bound to vfio-pci (`rspdk_setup config`), and is no other process using it?"
        )))?;
    let fd: OwnedFd = file.into();
    let mut st = sys::GroupStatus {
        argsz: std::mem::size_of::<sys::GroupStatus>() as u32,
        flags: 0,
    };
    sys::ioctl_ptr(
        fd.as_fd(),
        sys::GROUP_GET_STATUS,
        &mut st,
        "VFIO_GROUP_GET_STATUS",
    )?;
    if st.flags & sys::GROUP_FLAGS_VIABLE == 0 {
        let others = group_blockers(group, bdf);
        return Err(EnvError::Iommu(format!(
            "IOMMU group {group} of {bdf} is not viable: every device in a group must be bound to vfio-pci \
             (or to no driver). Also in the group: {}. Bind them with `rspdk_setup config` \
             (PCI_ALLOWED=...) or move {bdf} to a slot with its own group",
            if others.is_empty() { "(devices sysfs does not list)".to_string() } else { others.join(", ") }
        )));
    }
    let mut cfd = {
        use std::os::fd::AsRawFd;
        c.fd.as_raw_fd()
    };
    sys::ioctl_ptr(
        fd.as_fd(),
        sys::GROUP_SET_CONTAINER,
        &mut cfd,
        "VFIO_GROUP_SET_CONTAINER",
    )?;
    if c.iommu.get().is_none() {
        sys::ioctl_val(
            c.fd.as_fd(),
            sys::SET_IOMMU,
            sys::TYPE1V2_IOMMU,
            "VFIO_SET_IOMMU type1v2",
        )?;
        let (info, buf) = sys::iommu_info(c.fd.as_fd())?;
        let iommu = IommuInfo {
            pgsizes: info.iova_pgsizes,
            iova_ranges: parse_iova_ranges(&info, &buf),
        };
        tracing::info!(
            pgsizes = format_args!("{:#x}", iommu.pgsizes),
            max_iova = format_args!("{:#x}", iommu.max_iova()),
            "VFIO container: type1v2 IOMMU"
        );
        let _ = c.iommu.set(iommu.clone());
        let map = MemMap::new(
            VTOPHYS_ERROR,
            TranslationKind::Linear,
            Some(Box::new(DmaMapper {
                iommu,
                mapped: Mutex::new(BTreeMap::new()),
            })),
        )?;
        let _ = c.dma_map.set(map);
    }
    let g = Arc::new(Group { fd });
    groups.insert(group, g.clone());
    Ok(g)
}

/// Keeps the IOMMU in step with memory registrations.
struct DmaMapper {
    iommu: IommuInfo,
    /// Registered vaddr -> the IOVA runs mapped for it.
    mapped: Mutex<BTreeMap<usize, Vec<(u64, u64)>>>,
}

impl DmaMapper {
    fn map_runs(&self, vaddr: usize, len: usize) -> Result<Vec<(usize, u64, u64)>> {
        let mut runs = Vec::new();
        let mut off = 0usize;
        while off < len {
            let mut run = (len - off) as u64;
            let mut iova = vtophys(vaddr + off, Some(&mut run));
            if iova == VTOPHYS_ERROR {
                // No env (no vtophys map): IOVA = VA.
                iova = (vaddr + off) as u64;
                run = (len - off) as u64;
            }
            let run = run.min((len - off) as u64);
            runs.push((vaddr + off, iova, run));
            off += run as usize;
        }
        Ok(runs)
    }
}

impl MemMapNotify for DmaMapper {
    fn notify(&self, map: &MemMap, action: MemMapAction, vaddr: usize, len: usize) -> Result<()> {
        let c = CONTAINER
            .get()
            .expect("a DMA map exists only with a container");
        let mut mapped = self.mapped.lock().unwrap_or_else(|e| e.into_inner());
        match action {
            MemMapAction::Register => {
                let runs = self.map_runs(vaddr, len)?;
                let mut done: Vec<(u64, u64)> = Vec::new();
                for &(va, iova, size) in &runs {
                    let r = if !self.iommu.covers(iova, size) {
                        Err(EnvError::Iommu(format!(
                            "DMA memory at {va:#x}+{size:#x} (IOVA {iova:#x}) is beyond the IOMMU's aperture \
                             (highest IOVA {:#x}): start the env with the heap placed lower \
                             (EnvOpts::base_virtaddr, e.g. {:#x}) or with IOVA mode pa",
                            self.iommu.max_iova(),
                            (self.iommu.max_iova() + 1) / 4
                        )))
                    } else {
                        let mut m = sys::DmaMap {
                            argsz: std::mem::size_of::<sys::DmaMap>() as u32,
                            flags: sys::DMA_MAP_READ_WRITE,
                            vaddr: va as u64,
                            iova,
                            size,
                        };
                        sys::ioctl_ptr(
                            c.fd.as_fd(),
                            sys::IOMMU_MAP_DMA,
                            &mut m,
                            "VFIO_IOMMU_MAP_DMA",
                        )
                        .map(|_| ())
                    };
                    if let Err(e) = r {
                        for &(iova, size) in &done {
                            unmap(c, iova, size);
                        }
                        return Err(e);
                    }
                    done.push((iova, size));
                }
                for &(va, iova, size) in &runs {
                    map.set_translation(va, size as usize, iova)?;
                }
                mapped.insert(vaddr, done);
                Ok(())
            }
            MemMapAction::Unregister => {
                let keys: Vec<usize> = mapped.range(vaddr..vaddr + len).map(|(k, _)| *k).collect();
                for k in keys {
                    for (iova, size) in mapped.remove(&k).unwrap_or_default() {
                        unmap(c, iova, size);
                    }
                }
                map.clear_translation(vaddr, len)
            }
        }
    }
}

fn unmap(c: &Container, iova: u64, size: u64) {
    let mut u = sys::DmaUnmap {
        argsz: std::mem::size_of::<sys::DmaUnmap>() as u32,
        flags: 0,
        iova,
        size,
    };
    if let Err(e) = sys::ioctl_ptr(
        c.fd.as_fd(),
        sys::IOMMU_UNMAP_DMA,
        &mut u,
        "VFIO_IOMMU_UNMAP_DMA",
    ) {
        tracing::error!(error = %e, iova = format_args!("{iova:#x}"), size, "IOMMU unmap failed");
    }
}

/// The IOVA the IOMMU maps `vaddr` to (after a device was opened), or
/// [`VTOPHYS_ERROR`].
pub fn dma_iova(vaddr: usize) -> u64 {
    CONTAINER
        .get()
        .and_then(|c| c.dma_map.get())
        .map_or(VTOPHYS_ERROR, |m| m.translate_addr(vaddr))
}

/// Information on one device region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfo {
    /// Region size in bytes.
    pub size: u64,
    /// Offset of the region in the device fd.
    pub offset: u64,
    /// The region may be mmapped.
    pub mmap: bool,
}

/// A PCI device opened through VFIO.
#[derive(Debug)]
pub struct VfioDevice {
    bdf: String,
    fd: OwnedFd,
    flags: u32,
    num_regions: u32,
    _group: Arc<Group>,
}

impl VfioDevice {
    /// Opens `bdf` (bound to vfio-pci), joining its IOMMU group to the
    /// process's container. Errors name the fix: no IOMMU, group not viable
    /// (with the devices that block it), wrong driver.
    pub fn open(bdf: &str) -> Result<VfioDevice> {
        let drv = std::fs::read_link(format!("/sys/bus/pci/devices/{bdf}/driver"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        if !Path::new(&format!("/sys/bus/pci/devices/{bdf}")).exists() {
            return Err(EnvError::NotFound(format!("no PCI device {bdf}")));
        }
        let group = iommu_group_of(bdf)?;
        if drv.as_deref() != Some("vfio-pci") {
            return Err(EnvError::Iommu(format!(
                "{bdf} is bound to {}, not vfio-pci: run `rspdk_setup config` (PCI_ALLOWED={bdf})",
                drv.as_deref().unwrap_or("no driver")
            )));
        }
        let c = container()?;
        let g = open_group(c, group, bdf)?;
        let fd = sys::owned_fd(sys::get_device_fd(g.fd.as_fd(), bdf)?);
        let mut info = sys::DeviceInfo {
            argsz: std::mem::size_of::<sys::DeviceInfo>() as u32,
            ..Default::default()
        };
        sys::ioctl_ptr(
            fd.as_fd(),
            sys::DEVICE_GET_INFO,
            &mut info,
            "VFIO_DEVICE_GET_INFO",
        )?;
        Ok(VfioDevice {
            bdf: bdf.to_string(),
            fd,
            flags: info.flags,
            num_regions: info.num_regions,
            _group: g,
        })
    }

    /// The device's address.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// Region `index` (BARs 0-5, ROM 6, config 7).
    pub fn region(&self, index: u32) -> Result<RegionInfo> {
        if index >= self.num_regions {
            return Err(EnvError::InvalidArgument(format!(
                "{} has {} regions, not {index}",
                self.bdf, self.num_regions
            )));
        }
        let mut r = sys::RegionInfo {
            argsz: std::mem::size_of::<sys::RegionInfo>() as u32,
            index,
            ..Default::default()
        };
        sys::ioctl_ptr(
            self.fd.as_fd(),
            sys::DEVICE_GET_REGION_INFO,
            &mut r,
            "VFIO_DEVICE_GET_REGION_INFO",
        )?;
        Ok(RegionInfo {
            size: r.size,
            offset: r.offset,
            mmap: r.flags & sys::REGION_INFO_FLAG_MMAP != 0,
        })
    }

    /// Maps BAR `index`.
    pub fn map_bar(&self, index: u32) -> Result<Bar> {
        if index > 5 {
            return Err(EnvError::InvalidArgument(format!(
                "BAR{index} does not exist"
            )));
        }
        let r = self.region(index)?;
        if r.size == 0 || !r.mmap {
            return Err(EnvError::InvalidArgument(format!(
                "{} BAR{index} cannot be mapped (size {}, mmap {})",
                self.bdf, r.size, r.mmap
            )));
        }
        let fd = self.fd.try_clone().map_err(|e| EnvError::Sys {
            op: "dup",
            detail: "VFIO device fd".into(),
            source: e,
        })?;
        let p = sys::mmap_shared(
            fd.as_fd(),
            r.size as usize,
            r.offset,
            &format!("{} BAR{index}", self.bdf),
        )?;
        // SAFETY: a fresh shared mapping of the whole BAR that the Bar owns.
        Ok(unsafe { Bar::from_raw(p, r.size as usize, index, Some(fd)) })
    }

    /// Reads config space at `off`.
    pub fn config_read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        let r = self.region(sys::PCI_CONFIG_REGION_INDEX)?;
        sys::pread(self.fd.as_fd(), buf, r.offset + off, "VFIO config space")
    }

    /// Writes config space at `off`.
    pub fn config_write(&self, off: u64, buf: &[u8]) -> Result<()> {
        let r = self.region(sys::PCI_CONFIG_REGION_INDEX)?;
        sys::pwrite(self.fd.as_fd(), buf, r.offset + off, "VFIO config space")
    }

    /// Resets the function (`VFIO_DEVICE_RESET`), if it supports a reset.
    pub fn reset(&self) -> Result<()> {
        if self.flags & sys::DEVICE_FLAGS_RESET == 0 {
            return Err(EnvError::InvalidArgument(format!(
                "{} has no function reset",
                self.bdf
            )));
        }
        sys::ioctl_val(self.fd.as_fd(), sys::DEVICE_RESET, 0, "VFIO_DEVICE_RESET").map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iova_range_capability_is_parsed() {
        // fixed part (24 bytes), then an IOVA range capability at 24.
        let mut buf = vec![0u8; 24 + 16 + 32];
        let info = sys::IommuType1Info {
            argsz: buf.len() as u32,
            flags: sys::IOMMU_INFO_CAPS,
            iova_pgsizes: 0x4000_1000,
            cap_offset: 24,
            pad: 0,
        };
        buf[24..26].copy_from_slice(&1u16.to_ne_bytes());
        buf[26..28].copy_from_slice(&1u16.to_ne_bytes());
        buf[32..36].copy_from_slice(&2u32.to_ne_bytes());
        buf[40..48].copy_from_slice(&0u64.to_ne_bytes());
        buf[48..56].copy_from_slice(&0xfedf_ffffu64.to_ne_bytes());
        buf[56..64].copy_from_slice(&0xfef0_0000u64.to_ne_bytes());
        buf[64..72].copy_from_slice(&((1u64 << 39) - 1).to_ne_bytes());
        let ranges = parse_iova_ranges(&info, &buf);
        assert_eq!(ranges, vec![(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)]);
        let i = IommuInfo {
            pgsizes: 0,
            iova_ranges: ranges,
        };
        assert!(i.covers(0x1000, 0x1000));
        assert!(!i.covers(0xfee0_0000, 0x1000));
        assert!(!i.covers(0x2000_0000_0000, 0x20_0000));
        assert!(i.covers((1 << 39) - 0x1000, 0x1000));
        assert_eq!(i.max_iova(), (1 << 39) - 1);
    }
}
