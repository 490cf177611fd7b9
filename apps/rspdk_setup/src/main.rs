//! `rspdk_setup`: prepares a machine for rspdk, like SPDK's scripts/setup.sh.
//!
//! - `config`: reserve hugepages (HUGEMEM MiB or NRHUGE pages, per node with
//!   HUGENODE), mount hugetlbfs, and bind NVMe controllers (class 0x010802)
//!   to vfio-pci (DRIVER_OVERRIDE / `--driver uio_pci_generic` without an
//!   IOMMU), honouring PCI_ALLOWED / PCI_BLOCKED and never taking a device
//!   whose block devices are mounted or otherwise in use.
//! - `status`: hugepages per node and size, hugetlbfs mounts, PCI storage
//!   devices and their drivers, IOMMU state.
//! - `reset`: give devices bound to vfio-pci/uio_pci_generic back to their
//!   kernel driver and, with CLEAR_HUGE=yes, release the hugepages.
//!
//! setup.sh's environment variables are honoured alongside the flags.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rspdk_env::hugepages::{self, parse_size};
use rspdk_env::pci;
use rspdk_env::sys::{human_size, is_root};

use rspdk_util::outln;

#[derive(Parser)]
#[command(
    name = "rspdk_setup",
    version,
    about = "Prepare hugepages and NVMe devices for rspdk"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Reserve hugepages and mount hugetlbfs.
    Config {
        /// MiB of hugepages to reserve (default 2048, as setup.sh).
        #[arg(long, env = "HUGEMEM")]
        hugemem: Option<u64>,
        /// Number of hugepages to reserve (instead of --hugemem).
        #[arg(
            short = 'n',
            long = "nr-hugepages",
            env = "NRHUGE",
            conflicts_with = "hugemem"
        )]
        nr_hugepages: Option<u64>,
        /// Reserve on this NUMA node only (default: system-wide).
        #[arg(long, env = "HUGENODE")]
        node: Option<u32>,
        /// Hugepage size: 2M or 1G (setup.sh's HUGEPGSZ is in kB; both forms accepted).
        #[arg(long = "page-size", env = "HUGEPGSZ", default_value = "2M")]
        page_size: String,
        /// Where to mount hugetlbfs if no mount of that page size exists.
        #[arg(long = "huge-dir", default_value = "/dev/hugepages")]
        huge_dir: PathBuf,
        #[command(flatten)]
        devices: DeviceArgs,
        /// Leave the hugepages alone (bind devices only).
        #[arg(long = "skip-huge")]
        skip_huge: bool,
    },
    /// Show hugepages, mounts, PCI storage devices and the IOMMU.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Give devices back to the kernel; with --clear-huge also release hugepages.
    Reset {
        /// Release every reserved hugepage.
        #[arg(long = "clear-huge", env = "CLEAR_HUGE", value_parser = parse_yes, default_value = "no")]
        clear_huge: bool,
        #[command(flatten)]
        devices: DeviceArgs,
    },
}

#[derive(clap::Args)]
struct DeviceArgs {
    /// Driver for NVMe devices: vfio-pci (with an IOMMU) or uio_pci_generic.
    #[arg(long, env = "DRIVER_OVERRIDE", default_value = "vfio-pci")]
    driver: String,
    /// Only these devices (BDFs, space or comma separated).
    #[arg(long = "pci-allowed", env = "PCI_ALLOWED", default_value = "")]
    pci_allowed: String,
    /// Never these devices.
    #[arg(long = "pci-blocked", env = "PCI_BLOCKED", default_value = "")]
    pci_blocked: String,
}

fn nvme_devices(d: &DeviceArgs) -> Result<Vec<pci::PciDevice>, String> {
    let filter =
        pci::PciFilter::parse(&d.pci_allowed, &d.pci_blocked).map_err(|e| e.to_string())?;
    Ok(pci::devices()
        .into_iter()
        .filter(|x| x.class == pci::CLASS_NVME && filter.allows(&x.bdf))
        .collect())
}

fn bind_devices(d: &DeviceArgs) -> Result<(), String> {
    if !matches!(d.driver.as_str(), "vfio-pci" | "uio_pci_generic") {
        return Err(format!(
            "driver '{}' is not vfio-pci or uio_pci_generic",
            d.driver
        ));
    }
    let devs = nvme_devices(d)?;
    if devs.is_empty() {
        outln!("no NVMe devices to bind");
    }
    let mut failed = 0;
    for dev in devs {
        let from = dev.driver.clone().unwrap_or_else(|| "no driver".into());
        match pci::bind(&dev.bdf, &d.driver) {
            Ok(()) => outln!(
                "{} ({:04x} {:04x}): {} -> {}",
                dev.bdf,
                dev.vendor,
                dev.device,
                from,
                d.driver
            ),
            Err(e) => {
                eprintln!("{}: not bound: {e}", dev.bdf);
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(format!("{failed} device(s) could not be bound"));
    }
    Ok(())
}

fn parse_yes(s: &str) -> Result<bool, String> {
    match s {
        "yes" | "1" | "true" => Ok(true),
        "no" | "0" | "false" | "" => Ok(false),
        other => Err(format!("'{other}' is not yes or no")),
    }
}

/// 2M, 1G, 2048 (kB, setup.sh's HUGEPGSZ), 1048576 -> bytes.
fn page_size_arg(s: &str) -> Result<usize, String> {
    let bytes = match s.parse::<usize>() {
        Ok(kb) => kb * 1024,
        Err(_) => parse_size(s).ok_or_else(|| format!("page size '{s}' is not like 2M or 1G"))?,
    };
    let sizes = hugepages::sizes();
    if sizes.is_empty() {
        return Err("this kernel has no hugetlbfs support (CONFIG_HUGETLBFS): run rspdk apps with --no-huge".into());
    }
    if !sizes.contains(&bytes) {
        return Err(format!(
            "the kernel offers no {} hugepages; it has {}",
            human_size(bytes),
            sizes
                .iter()
                .map(|s| human_size(*s))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(bytes)
}

fn config(
    hugemem: Option<u64>,
    nr: Option<u64>,
    node: Option<u32>,
    page_size: &str,
    huge_dir: &std::path::Path,
    devices: &DeviceArgs,
    skip_huge: bool,
) -> Result<(), String> {
    if !skip_huge {
        config_huge(hugemem, nr, node, page_size, huge_dir)?;
    }
    if !is_root() {
        return Err("binding devices needs root".into());
    }
    bind_devices(devices)
}

fn config_huge(
    hugemem: Option<u64>,
    nr: Option<u64>,
    node: Option<u32>,
    page_size: &str,
    huge_dir: &std::path::Path,
) -> Result<(), String> {
    let page = page_size_arg(page_size)?;
    if !is_root() {
        return Err("config needs root: it writes nr_hugepages and mounts hugetlbfs. Run `sudo rspdk_setup config`, or start rspdk apps with --no-huge".into());
    }
    let want = match (nr, hugemem) {
        (Some(n), _) => n,
        (None, Some(mb)) => (mb << 20).div_ceil(page as u64),
        (None, None) => (2048u64 << 20).div_ceil(page as u64),
    };
    if let Some(n) = node {
        if !rspdk_env::sys::nodes_with_memory().contains(&n) {
            return Err(format!(
                "NUMA node {n} has no memory; nodes with memory: {:?}",
                rspdk_env::sys::nodes_with_memory()
            ));
        }
    }
    let got = hugepages::set_reserved(node, page, want).map_err(|e| e.to_string())?;
    let where_ = node.map_or("system-wide".to_string(), |n| format!("on node {n}"));
    if got < want {
        eprintln!(
            "warning: asked for {want} {} hugepages {where_}, the kernel reserved {got} (memory is fragmented or short; \
             reserve at boot with hugepages={want} on the kernel command line, or ask for less)",
            human_size(page)
        );
        if got == 0 {
            return Err("no hugepages could be reserved".into());
        }
    }
    outln!(
        "reserved {got} {} hugepages {where_} ({})",
        human_size(page),
        human_size(got as usize * page)
    );
    match hugepages::mounts()
        .into_iter()
        .find(|m| m.page_size == page)
    {
        Some(m) => outln!(
            "hugetlbfs ({}) already mounted at {}",
            human_size(page),
            m.path.display()
        ),
        None => {
            hugepages::mount(huge_dir, page).map_err(|e| e.to_string())?;
            outln!(
                "mounted hugetlbfs ({}) at {}",
                human_size(page),
                huge_dir.display()
            );
        }
    }
    Ok(())
}

fn status(json: bool) -> Result<(), String> {
    let pools = hugepages::pools();
    let mounts = hugepages::mounts();
    let storage: Vec<_> = pci::devices()
        .into_iter()
        .filter(|d| d.is_storage())
        .collect();
    let iommu = pci::iommu_state();
    if json {
        let v = serde_json::json!({
            "hugepages": pools, "hugetlbfs_mounts": mounts, "pci_storage": storage, "iommu": iommu,
        });
        outln!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    outln!("Hugepages");
    outln!(
        "{:<8} {:>10} {:>10} {:>10}",
        "node",
        "size",
        "total",
        "free"
    );
    for p in &pools {
        let node = p.node.map_or("-".to_string(), |n| format!("node{n}"));
        outln!(
            "{node:<8} {:>10} {:>10} {:>10}",
            human_size(p.page_size),
            p.total,
            p.free
        );
    }
    if pools.is_empty() {
        outln!("  (this kernel has no hugepage support: use --no-huge)");
    }
    outln!("\nhugetlbfs mounts");
    for m in &mounts {
        outln!("  {} ({})", m.path.display(), human_size(m.page_size));
    }
    if mounts.is_empty() {
        outln!("  none (rspdk uses anonymous hugepages; `rspdk_setup config` mounts one)");
    }
    outln!("\nPCI storage devices");
    outln!(
        "{:<14} {:>9} {:>8} {:>8} {:<14}",
        "BDF",
        "vendor",
        "device",
        "class",
        "driver"
    );
    for d in &storage {
        outln!(
            "{:<14} {:>#9x} {:>#8x} {:>8} {:<14}",
            d.bdf,
            d.vendor,
            d.device,
            format!("{:06x}", d.class),
            d.driver.as_deref().unwrap_or("-")
        );
    }
    if storage.is_empty() {
        outln!("  none");
    }
    outln!(
        "\nIOMMU: {} unit(s), {} group(s); vfio-pci {}; {}",
        iommu.units,
        iommu.groups,
        if iommu.vfio_pci {
            "available"
        } else {
            "not loaded (modprobe vfio-pci)"
        },
        if iommu.units == 0 {
            "IOMMU off: user-space drivers need physical addresses (IOVA mode pa, hugepages, uio_pci_generic) \
             or enable it (intel_iommu=on / amd_iommu=on)"
        } else {
            "IOVA=VA available through VFIO"
        }
    );
    Ok(())
}

fn reset(clear_huge: bool, devices: &DeviceArgs) -> Result<(), String> {
    let filter = pci::PciFilter::parse(&devices.pci_allowed, &devices.pci_blocked)
        .map_err(|e| e.to_string())?;
    let ours: Vec<_> = pci::devices()
        .into_iter()
        .filter(|d| {
            matches!(
                d.driver.as_deref(),
                Some("vfio-pci") | Some("uio_pci_generic")
            ) && filter.allows(&d.bdf)
        })
        .collect();
    if ours.is_empty() {
        outln!("no devices bound to vfio-pci or uio_pci_generic");
    }
    let mut failed = 0;
    for d in &ours {
        match pci::unbind_to_kernel(&d.bdf) {
            Ok(now) => outln!(
                "{}: {} -> {}",
                d.bdf,
                d.driver.as_deref().unwrap_or("?"),
                now.as_deref()
                    .unwrap_or("no driver (is its kernel driver loaded?)")
            ),
            Err(e) => {
                eprintln!("{}: {e}", d.bdf);
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(format!("{failed} device(s) could not be given back"));
    }
    if clear_huge {
        if !is_root() {
            return Err(
                "releasing hugepages needs root: sudo CLEAR_HUGE=yes rspdk_setup reset".into(),
            );
        }
        for p in hugepages::pools() {
            hugepages::set_reserved(p.node, p.page_size, 0).map_err(|e| e.to_string())?;
        }
        outln!("released all hugepages");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match &cli.cmd {
        Cmd::Config {
            hugemem,
            nr_hugepages,
            node,
            page_size,
            huge_dir,
            devices,
            skip_huge,
        } => config(
            *hugemem,
            *nr_hugepages,
            *node,
            page_size,
            huge_dir,
            devices,
            *skip_huge,
        ),
        Cmd::Status { json } => status(*json),
        Cmd::Reset {
            clear_huge,
            devices,
        } => reset(*clear_huge, devices),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rspdk_setup: {e}");
            ExitCode::FAILURE
        }
    }
}
