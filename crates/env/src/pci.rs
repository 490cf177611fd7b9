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

/// Normalises a PCI address to sysfs form `dddd:bb:dd.f` (lower case),
/// accepting `bb:dd.f` and SPDK's `dddd.bb.dd.f` too.
pub fn normalize_bdf(s: &str) -> crate::Result<String> {
    let bad = || {
        crate::EnvError::InvalidArgument(format!("'{s}' is not a PCI address like 0000:00:04.0"))
    };
    let t = s.trim().to_ascii_lowercase();
    let (head, func) = t.rsplit_once('.').ok_or_else(bad)?;
    let parts: Vec<&str> = head.split([':', '.']).collect();
    let (dom, bus, dev) = match parts.as_slice() {
        [b, d] => ("0", *b, *d),
        [dom, b, d] => (*dom, *b, *d),
        _ => return Err(bad()),
    };
    let dom = u32::from_str_radix(dom, 16).map_err(|_| bad())?;
    let bus = u8::from_str_radix(bus, 16).map_err(|_| bad())?;
    let dev = u8::from_str_radix(dev, 16).map_err(|_| bad())?;
    let func = u8::from_str_radix(func, 16).map_err(|_| bad())?;
    if dom > 0xffff || dev > 0x1f || func > 7 {
        return Err(bad());
    }
    Ok(format!("{dom:04x}:{bus:02x}:{dev:02x}.{func}"))
}

/// Which devices a tool or driver may take (SPDK: `PCI_ALLOWED` /
/// `PCI_BLOCKED`, `-A`/`-B`). An empty allow list allows every device not
/// blocked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PciFilter {
    /// Only these (normalised BDFs), if not empty.
    pub allowed: Vec<String>,
    /// Never these.
    pub blocked: Vec<String>,
}

impl PciFilter {
    /// Builds a filter from space- or comma-separated BDF lists.
    pub fn parse(allowed: &str, blocked: &str) -> crate::Result<PciFilter> {
        let list = |s: &str| -> crate::Result<Vec<String>> {
            s.split([' ', ','])
                .filter(|x| !x.is_empty())
                .map(normalize_bdf)
                .collect()
        };
        Ok(PciFilter {
            allowed: list(allowed)?,
            blocked: list(blocked)?,
        })
    }

    /// True if `bdf` may be used.
    pub fn allows(&self, bdf: &str) -> bool {
        let Ok(b) = normalize_bdf(bdf) else {
            return false;
        };
        !self.blocked.contains(&b) && (self.allowed.is_empty() || self.allowed.contains(&b))
    }
}

/// Block devices (`nvme0n1`, `nvme0n1p1`, ...) the kernel created for the
/// device at `bdf`, found under its sysfs node.
pub fn block_devices_of(bdf: &str) -> Vec<String> {
    let mut out = Vec::new();
    let dev = PathBuf::from(format!("/sys/bus/pci/devices/{bdf}"));
    // nvme: <dev>/nvme/nvmeX/nvmeXnY[/nvmeXnYpZ]
    for ctrl in std::fs::read_dir(dev.join("nvme"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for ns in std::fs::read_dir(ctrl.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = ns.file_name().to_string_lossy().into_owned();
            if ns.path().join("dev").exists()
                && name.contains('n')
                && name != ctrl.file_name().to_string_lossy()
            {
                for part in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                    let p = part.file_name().to_string_lossy().into_owned();
                    if p.starts_with(&name) && part.path().join("dev").exists() {
                        out.push(p);
                    }
                }
                out.push(name);
            }
        }
    }
    out.sort();
    out
}

/// Why `bdf` must not be taken from the kernel: one of its block devices is
/// mounted, used as swap, or held by another block device (LVM, md, dm).
/// `None` if it is free.
pub fn in_use_reason(bdf: &str) -> Option<String> {
    let blocks = block_devices_of(bdf);
    if blocks.is_empty() {
        return None;
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    for b in &blocks {
        let devpath = format!("/dev/{b}");
        if let Some(m) = mounts
            .lines()
            .find(|l| l.split_whitespace().next() == Some(devpath.as_str()))
        {
            let at = m.split_whitespace().nth(1).unwrap_or("?");
            return Some(format!("{devpath} is mounted at {at}"));
        }
        if swaps
            .lines()
            .any(|l| l.split_whitespace().next() == Some(devpath.as_str()))
        {
            return Some(format!("{devpath} is in use as swap"));
        }
        let holders = format!("/sys/class/block/{b}/holders");
        if let Some(h) = std::fs::read_dir(&holders)
            .into_iter()
            .flatten()
            .flatten()
            .next()
        {
            return Some(format!(
                "{devpath} is held by {}",
                h.file_name().to_string_lossy()
            ));
        }
    }
    None
}

fn sysfs_write(path: &Path, value: &str) -> crate::Result<()> {
    std::fs::write(path, value).map_err(|e| crate::EnvError::Sys {
        op: "write",
        detail: format!("'{}' to {}", value.trim(), path.display()),
        source: e,
    })
}

/// Binds `bdf` to `driver` (vfio-pci, uio_pci_generic) through
/// `driver_override`, unbinding it from its current driver first. Refuses a
/// device whose block devices are in use ([`in_use_reason`]).
pub fn bind(bdf: &str, driver: &str) -> crate::Result<()> {
    let bdf = normalize_bdf(bdf)?;
    let dev = PathBuf::from(format!("/sys/bus/pci/devices/{bdf}"));
    if !dev.exists() {
        return Err(crate::EnvError::NotFound(format!("no PCI device {bdf}")));
    }
    let current = link_name(&dev.join("driver"));
    if current.as_deref() == Some(driver) {
        return Ok(());
    }
    if let Some(why) = in_use_reason(&bdf) {
        return Err(crate::EnvError::Device {
            bdf,
            reason: format!("{why}: not taking it from the kernel (unmount it first, or block it with PCI_BLOCKED)"),
        });
    }
    if !Path::new(&format!("/sys/bus/pci/drivers/{driver}")).exists() {
        return Err(crate::EnvError::Device {
            bdf,
            reason: format!(
                "driver {driver} is not loaded: `modprobe {}`",
                driver.replace('-', "_")
            ),
        });
    }
    if current.is_some() {
        sysfs_write(&dev.join("driver/unbind"), &bdf)?;
    }
    sysfs_write(&dev.join("driver_override"), driver)?;
    // uio_pci_generic has no id table to match: drivers_probe with the
    // override binds it.
    sysfs_write(Path::new("/sys/bus/pci/drivers_probe"), &bdf)?;
    let now = link_name(&dev.join("driver"));
    if now.as_deref() != Some(driver) {
        return Err(crate::EnvError::Device {
            bdf,
            reason: format!(
                "binding to {driver} did not take (driver now: {}); see dmesg",
                now.as_deref().unwrap_or("none")
            ),
        });
    }
    Ok(())
}

/// Gives `bdf` back to the kernel: unbinds it, clears `driver_override`
/// and lets the kernel probe its own driver (e.g. nvme). Returns the driver
/// it ends up with.
pub fn unbind_to_kernel(bdf: &str) -> crate::Result<Option<String>> {
    let bdf = normalize_bdf(bdf)?;
    let dev = PathBuf::from(format!("/sys/bus/pci/devices/{bdf}"));
    if link_name(&dev.join("driver")).is_some() {
        sysfs_write(&dev.join("driver/unbind"), &bdf)?;
    }
    sysfs_write(&dev.join("driver_override"), "\n")?;
    sysfs_write(Path::new("/sys/bus/pci/drivers_probe"), &bdf)?;
    Ok(link_name(&dev.join("driver")))
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

    #[test]
    fn bdfs_are_normalised() {
        assert_eq!(normalize_bdf("0000:00:04.0").unwrap(), "0000:00:04.0");
        assert_eq!(normalize_bdf("00:04.0").unwrap(), "0000:00:04.0");
        assert_eq!(normalize_bdf("0000.81.00.1").unwrap(), "0000:81:00.1");
        assert_eq!(normalize_bdf("0000:AF:1F.7").unwrap(), "0000:af:1f.7");
        for bad in [
            "",
            "04.0",
            "0000:00:20.0",
            "0000:00:04.8",
            "zz:00.0",
            "0000:00:04",
        ] {
            assert!(normalize_bdf(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allow_and_block_lists() {
        let f = PciFilter::parse("0000:00:04.0 00:05.0", "").unwrap();
        assert!(f.allows("0000:00:04.0"));
        assert!(f.allows("0000:00:05.0"));
        assert!(!f.allows("0000:00:06.0"));
        let f = PciFilter::parse("", "0000:00:04.0,0000:00:07.0").unwrap();
        assert!(!f.allows("00:04.0"));
        assert!(f.allows("0000:00:06.0"));
        assert!(PciFilter::parse("nonsense", "").is_err());
    }
}
