//! PCI devices as sysfs describes them (SPDK: `spdk_pci_enumerate`). Used by
//! `rspdk_setup status` now and by the NVMe driver's probe later.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// PCI class code of NVMe controllers (mass storage / NVM / NVMe).
pub const CLASS_NVME: u32 = 0x01_08_02;

/// One PCI function.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PciDevice {
    /// Bus/device/function, `0000:00:04.0`.
    pub bdf: String,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// 24-bit class code.
    pub class: u32,
    /// Bound driver, if any.
    pub driver: Option<String>,
    /// IOMMU group number, if the device is in one.
    pub iommu_group: Option<u32>,
    /// NUMA node, if the kernel knows.
    pub numa_node: Option<i32>,
}

impl PciDevice {
    /// True for mass-storage devices (class 0x01xxxx).
    pub fn is_storage(&self) -> bool {
        self.class >> 16 == 0x01
    }
}

fn read_hex(path: &Path) -> Option<u32> {
    let s = std::fs::read_to_string(path).ok()?;
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

fn link_name(path: &Path) -> Option<String> {
    Some(
        std::fs::read_link(path)
            .ok()?
            .file_name()?
            .to_string_lossy()
            .into_owned(),
    )
}

/// Every PCI function under `root` (normally `/sys/bus/pci/devices`),
/// sorted by address.
pub fn devices_in(root: &Path) -> Vec<PciDevice> {
    let mut out: Vec<PciDevice> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let dir: PathBuf = e.path();
            Some(PciDevice {
                bdf: e.file_name().to_string_lossy().into_owned(),
                vendor: read_hex(&dir.join("vendor"))? as u16,
                device: read_hex(&dir.join("device"))? as u16,
                class: read_hex(&dir.join("class"))?,
                driver: link_name(&dir.join("driver")),
                iommu_group: link_name(&dir.join("iommu_group")).and_then(|g| g.parse().ok()),
                numa_node: std::fs::read_to_string(dir.join("numa_node"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok()),
            })
        })
        .collect();
    out.sort_by(|a, b| a.bdf.cmp(&b.bdf));
    out
}

/// Every PCI function on this machine.
pub fn devices() -> Vec<PciDevice> {
    devices_in(Path::new("/sys/bus/pci/devices"))
}

/// The machine's IOMMU state, as far as sysfs shows it.
#[derive(Debug, Clone, Serialize)]
pub struct IommuState {
    /// IOMMU units the kernel registered (`/sys/class/iommu`).
    pub units: usize,
    /// IOMMU groups (`/sys/kernel/iommu_groups`).
    pub groups: usize,
    /// The vfio-pci driver is available (loaded or built in).
    pub vfio_pci: bool,
    /// VFIO's no-IOMMU mode is enabled.
    pub vfio_noiommu: bool,
}

/// Reads the IOMMU state.
pub fn iommu_state() -> IommuState {
    let count = |p: &str| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
    IommuState {
        units: count("/sys/class/iommu"),
        groups: count("/sys/kernel/iommu_groups"),
        vfio_pci: Path::new("/sys/bus/pci/drivers/vfio-pci").exists(),
        vfio_noiommu: std::fs::read_to_string(
            "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode",
        )
        .map(|s| s.trim() == "Y")
        .unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enumerates_a_fake_sysfs_tree() {
        let root = std::env::temp_dir().join(format!("rspdk-pci-{}", std::process::id()));
        let dev = root.join("0000:00:04.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("vendor"), "0x1b36\n").unwrap();
        std::fs::write(dev.join("device"), "0x0010\n").unwrap();
        std::fs::write(dev.join("class"), "0x010802\n").unwrap();
        std::fs::write(dev.join("numa_node"), "-1\n").unwrap();
        let other = root.join("0000:00:01.0");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("vendor"), "0x8086\n").unwrap();
        std::fs::write(other.join("device"), "0x1237\n").unwrap();
        std::fs::write(other.join("class"), "0x060000\n").unwrap();
        let devs = devices_in(&root);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(devs.len(), 2);
        assert_eq!(devs[0].bdf, "0000:00:01.0");
        assert!(!devs[0].is_storage());
        assert_eq!(devs[1].class, CLASS_NVME);
        assert_eq!((devs[1].vendor, devs[1].device), (0x1b36, 0x0010));
        assert!(devs[1].is_storage());
        assert_eq!(devs[1].driver, None);
        assert_eq!(devs[1].numa_node, Some(-1));
    }
}
