//! One handle for a PCI device a user-space driver owns, whichever way it
//! was handed to user space (SPDK: `spdk_pci_device`):
//!
//! - **vfio-pci**: through [`VfioDevice`] (IOMMU, IOVA = VA by default).
//! - **uio_pci_generic**: BARs from sysfs `resourceN`, config space from
//!   sysfs `config`; no IOMMU, so DMA addresses are physical (IOVA mode pa,
//!   hugepages only).

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::error::{EnvError, Result};
use crate::mmio::Bar;
use crate::vfio::VfioDevice;
use crate::vfio_sys;
use crate::vtophys::IovaMode;

/// How the device is reached.
#[derive(Debug)]
enum Access {
    Vfio(VfioDevice),
    Uio { config: File },
}

/// An open PCI device.
#[derive(Debug)]
pub struct PciHandle {
    bdf: String,
    sysfs: PathBuf,
    access: Access,
}

/// PCI config space: command register offset and its bus-master bit.
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;

impl PciHandle {
    /// Opens `bdf` through the driver it is bound to (vfio-pci or
    /// uio_pci_generic). Other drivers, or none, are an error that says how
    /// to bind it.
    pub fn open(bdf: &str) -> Result<PciHandle> {
        let bdf = crate::pci::normalize_bdf(bdf)?;
        let sysfs = PathBuf::from(format!("/sys/bus/pci/devices/{bdf}"));
        if !sysfs.exists() {
            return Err(EnvError::NotFound(format!("no PCI device {bdf}")));
        }
        let drv = std::fs::read_link(sysfs.join("driver"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        let access = match drv.as_deref() {
            Some("vfio-pci") => Access::Vfio(VfioDevice::open(&bdf)?),
            Some("uio_pci_generic") => {
                match crate::env().map(|e| e.iova_mode()) {
                    Some(IovaMode::Pa) => {}
                    Some(m) => {
                        return Err(EnvError::Device {
                            bdf: bdf.clone(),
                            reason: format!(
                                "bound to uio_pci_generic (no IOMMU), which needs physical DMA addresses, but the env runs in IOVA mode {m}: use --iova-mode pa (as root, with hugepages) or bind it to vfio-pci"
                            ),
                        })
                    }
                    None => {
                        return Err(EnvError::State(
                            "the env is not initialised: call rspdk_env::init before opening devices".into(),
                        ))
                    }
                }
                let config = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(sysfs.join("config"))
                    .map_err(|e| EnvError::Sys {
                        op: "open",
                        detail: format!("{bdf} config space"),
                        source: e,
                    })?;
                Access::Uio { config }
            }
            other => {
                return Err(EnvError::Device {
                    bdf: bdf.clone(),
                    reason: format!(
                        "bound to {}, not to vfio-pci or uio_pci_generic: run `rspdk_setup config` (PCI_ALLOWED={bdf}), \
                         with --driver uio_pci_generic on machines without an IOMMU",
                        other.unwrap_or("no driver")
                    ),
                })
            }
        };
        Ok(PciHandle { bdf, sysfs, access })
    }

    /// The device's address.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// "vfio-pci" or "uio_pci_generic".
    pub fn driver(&self) -> &'static str {
        match self.access {
            Access::Vfio(_) => "vfio-pci",
            Access::Uio { .. } => "uio_pci_generic",
        }
    }

    /// The VFIO device, when opened through VFIO.
    pub fn vfio(&self) -> Option<&VfioDevice> {
        match &self.access {
            Access::Vfio(v) => Some(v),
            Access::Uio { .. } => None,
        }
    }

    /// Maps BAR `index`.
    pub fn map_bar(&self, index: u32) -> Result<Bar> {
        match &self.access {
            Access::Vfio(v) => v.map_bar(index),
            Access::Uio { .. } => {
                let path = self.sysfs.join(format!("resource{index}"));
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| EnvError::Sys {
                        op: "open",
                        detail: path.display().to_string(),
                        source: e,
                    })?;
                let len = f
                    .metadata()
                    .map_err(|e| EnvError::Sys {
                        op: "stat",
                        detail: path.display().to_string(),
                        source: e,
                    })?
                    .len() as usize;
                if len == 0 {
                    return Err(EnvError::InvalidArgument(format!(
                        "{} BAR{index} is empty",
                        self.bdf
                    )));
                }
                let fd: OwnedFd = f.into();
                let p = vfio_sys::mmap_shared(fd.as_fd(), len, 0, &path.display().to_string())?;
                // SAFETY: a fresh shared mapping of the whole BAR, owned by the Bar.
                Ok(unsafe { Bar::from_raw(p, len, index, Some(fd)) })
            }
        }
    }

    /// Reads `buf.len()` bytes of config space at `off`.
    pub fn config_read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        match &self.access {
            Access::Vfio(v) => v.config_read(off, buf),
            Access::Uio { config } => config.read_exact_at(buf, off).map_err(|e| EnvError::Sys {
                op: "pread",
                detail: format!("{} config space", self.bdf),
                source: e,
            }),
        }
    }

    /// Writes config space at `off`.
    pub fn config_write(&self, off: u64, buf: &[u8]) -> Result<()> {
        match &self.access {
            Access::Vfio(v) => v.config_write(off, buf),
            Access::Uio { config } => config.write_all_at(buf, off).map_err(|e| EnvError::Sys {
                op: "pwrite",
                detail: format!("{} config space", self.bdf),
                source: e,
            }),
        }
    }

    /// Reads the 16-bit config register at `off`.
    pub fn config_read16(&self, off: u64) -> Result<u16> {
        let mut b = [0u8; 2];
        self.config_read(off, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Reads the 32-bit config register at `off`.
    pub fn config_read32(&self, off: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        self.config_read(off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Enables memory decoding and bus mastering (the device may DMA).
    pub fn enable_bus_master(&self) -> Result<()> {
        let cmd = self.config_read16(PCI_COMMAND)?;
        let want = cmd | PCI_COMMAND_MASTER | PCI_COMMAND_MEMORY;
        if want != cmd {
            self.config_write(PCI_COMMAND, &want.to_le_bytes())?;
        }
        Ok(())
    }

    /// Resets the function: `VFIO_DEVICE_RESET`, or sysfs `reset` for uio.
    pub fn reset(&self) -> Result<()> {
        match &self.access {
            Access::Vfio(v) => v.reset(),
            Access::Uio { .. } => {
                std::fs::write(self.sysfs.join("reset"), "1").map_err(|e| EnvError::Sys {
                    op: "write",
                    detail: format!("{}/reset", self.sysfs.display()),
                    source: e,
                })
            }
        }
    }

    /// True once the device has gone from sysfs (hot removal).
    pub fn is_removed(&self) -> bool {
        !self.sysfs.exists()
    }
}
