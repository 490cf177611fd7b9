//! The PCIe transport (SPDK: `lib/nvme/nvme_pcie.c`,
//! `nvme_pcie_common.c`): controllers bound to vfio-pci or
//! uio_pci_generic, registers in BAR0, queues in DMA memory.

mod ctrlr;
mod qpair;

pub(crate) use ctrlr::PcieCtrlr;
pub(crate) use qpair::PcieQpair;

use crate::trid::TransportId;

/// Every NVMe controller (class 0x010802) bound to vfio-pci or
/// uio_pci_generic that `filter` allows, as transport IDs.
pub fn probe_pcie(filter: &rspdk_env::pci::PciFilter) -> Vec<TransportId> {
    rspdk_env::pci::devices()
        .into_iter()
        .filter(|d| d.class == rspdk_env::pci::CLASS_NVME && filter.allows(&d.bdf))
        .filter(|d| {
            matches!(
                d.driver.as_deref(),
                Some("vfio-pci") | Some("uio_pci_generic")
            )
        })
        .filter_map(|d| TransportId::pcie(&d.bdf).ok())
        .collect()
}
