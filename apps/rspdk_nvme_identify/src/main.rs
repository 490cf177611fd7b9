//! `rspdk_nvme_identify`: prints what NVMe controllers report about
//! themselves, like SPDK's spdk_nvme_identify: controller data, every
//! active namespace, the SMART / health log, the firmware slot log and the
//! error log.
//!
//! `rspdk_nvme_identify -r 'trtype:PCIe traddr:0000:00:04.0'`, or over
//! NVMe/TCP `-r 'trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420
//! subnqn:nqn.2016-06.io.spdk:cnode1'` (a discovery NQN, or none, prints
//! the discovery log); without `-r`, every NVMe controller bound to
//! vfio-pci or uio_pci_generic.

use std::process::ExitCode;

use clap::Parser;
use rspdk_nvme::{Controller, ControllerOpts, TransportId, TransportType};

use rspdk_util::outln;

#[derive(Parser)]
#[command(
    name = "rspdk_nvme_identify",
    version,
    about = "Identify NVMe controllers"
)]
struct Cli {
    /// Transport ID of the controller, e.g. 'trtype:PCIe traddr:0000:00:04.0'
    /// or 'trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:NQN'.
    #[arg(short = 'r', long = "transport")]
    trid: Option<String>,
    /// Host NQN for fabrics connections (SPDK's -q).
    #[arg(short = 'q', long = "hostnqn")]
    hostnqn: Option<String>,
    /// NVMe/TCP header digest.
    #[arg(short = 'H', long = "hdgst")]
    hdgst: bool,
    /// NVMe/TCP data digest.
    #[arg(short = 'I', long = "ddgst")]
    ddgst: bool,
    /// Memory to reserve in MiB (SPDK's -s).
    #[arg(short = 's', long = "mem-size", default_value_t = 0)]
    mem_size: usize,
    /// IOVA mode: pa, va or auto.
    #[arg(long = "iova-mode", default_value = "auto")]
    iova_mode: String,
    /// Base virtual address of the DMA heap (SPDK's --base-virtaddr).
    #[arg(long = "base-virtaddr", value_parser = parse_addr)]
    base_virtaddr: Option<usize>,
}

fn parse_addr(s: &str) -> Result<usize, String> {
    let t = s.trim_start_matches("0x").trim_start_matches("0X");
    usize::from_str_radix(t, 16)
        .map_err(|_| format!("'{s}' is not a hex address like 0x200000000000"))
}

fn yes(b: bool) -> &'static str {
    if b {
        "Supported"
    } else {
        "Not Supported"
    }
}

fn print_discovery(c: &Controller) -> Result<(), rspdk_nvme::NvmeError> {
    let log = c.discovery_log()?;
    outln!("=====================================================");
    outln!("Discovery Log Page at {}", c.trid());
    outln!("=====================================================");
    outln!("Number of Records:                     {}", log.len());
    for (i, e) in log.iter().enumerate() {
        outln!("Discovery Log Entry {i}");
        outln!("----------------------");
        let trtype = match e.trtype {
            1 => "RDMA".to_string(),
            2 => "FC".to_string(),
            3 => "TCP".to_string(),
            t => format!("{t}"),
        };
        let adrfam = match e.adrfam {
            1 => "IPv4".to_string(),
            2 => "IPv6".to_string(),
            a => format!("{a}"),
        };
        let subtype = match e.subtype {
            1 => "Referral to a discovery service".to_string(),
            2 => "NVM Subsystem".to_string(),
            3 => "Current Discovery Subsystem".to_string(),
            s => format!("{s}"),
        };
        outln!(
            "Transport Type:                        {} ({trtype})",
            e.trtype
        );
        outln!(
            "Address Family:                        {} ({adrfam})",
            e.adrfam
        );
        outln!(
            "Subsystem Type:                        {} ({subtype})",
            e.subtype
        );
        outln!("Port ID:                               {}", e.portid);
        outln!("Controller ID:                         {:#06x}", e.cntlid);
        outln!("Admin Max SQ Size:                     {}", e.asqsz);
        outln!("Transport Service Identifier:          {}", e.trsvcid);
        outln!("NVM Subsystem Qualified Name:          {}", e.subnqn);
        outln!("Transport Address:                     {}", e.traddr);
    }
    Ok(())
}

fn print_ctrlr(c: &Controller) -> Result<(), rspdk_nvme::NvmeError> {
    if c.is_discovery() {
        return print_discovery(c);
    }
    let d = c.data();
    let cap = c.cap();
    let (maj, min, ter) = c.version();
    outln!("=====================================================");
    outln!(
        "NVMe Controller at {} [{:04x}:{:04x}] ({})",
        if c.is_fabrics() {
            c.trid().to_string()
        } else {
            c.trid().traddr.clone()
        },
        d.vid(),
        d.ssvid(),
        c.driver()
    );
    outln!("=====================================================");
    outln!("Controller Capabilities/Features");
    outln!("================================");
    outln!("Vendor ID:                             {:04x}", d.vid());
    outln!("Subsystem Vendor ID:                   {:04x}", d.ssvid());
    outln!("Serial Number:                         {}", d.serial());
    outln!("Model Number:                          {}", d.model());
    outln!("Firmware Version:                      {}", d.firmware());
    outln!("IEEE OUI Identifier:                   {:06x}", d.ieee());
    outln!("Controller ID:                         {}", d.cntlid());
    outln!("NVMe Specification Version (VS):       {maj}.{min}.{ter}");
    outln!(
        "Maximum Data Transfer Size:            {}",
        if d.mdts() == 0 {
            "Unlimited".to_string()
        } else {
            format!("{}", 4096u64 << d.mdts())
        }
    );
    outln!(
        "Maximum Queue Entries:                 {}",
        cap.mqes() as u32 + 1
    );
    outln!(
        "Contiguous Queues Required:            {}",
        if cap.cqr() { "Yes" } else { "No" }
    );
    outln!(
        "Reset Timeout:                         {} ms",
        cap.timeout_ms()
    );
    outln!(
        "Doorbell Stride:                       {} bytes",
        4u32 << cap.dstrd()
    );
    outln!(
        "NVM Subsystem Reset:                   {}",
        yes(cap.nssrs())
    );
    outln!(
        "Memory Page Size Minimum:              {} bytes",
        4096u64 << cap.mpsmin()
    );
    outln!(
        "Memory Page Size Maximum:              {} bytes",
        4096u64 << cap.mpsmax()
    );
    outln!("Number of Namespaces:                  {}", d.nn());
    outln!(
        "I/O Queue Pairs Granted:               {}",
        c.max_io_qpairs()
    );
    outln!(
        "Abort Command Limit:                   {}",
        d.acl() as u32 + 1
    );
    outln!(
        "Async Event Request Limit:             {}",
        d.aerl() as u32 + 1
    );
    outln!(
        "Error Log Page Entries:                {}",
        d.elpe() as u32 + 1
    );
    outln!(
        "Volatile Write Cache:                  {}",
        if d.vwc_present() {
            "Present"
        } else {
            "Not Present"
        }
    );
    if d.vwc_present() {
        outln!(
            "Volatile Write Cache Enabled:          {}",
            if c.write_cache()? { "Yes" } else { "No" }
        );
    }
    outln!(
        "SGL Support:                           {}",
        yes(d.sgl_supported())
    );
    outln!("Subsystem NQN:                         {}", d.subnqn());
    outln!();
    outln!("NVM Command Set Attributes");
    outln!("==========================");
    let oncs = d.oncs();
    use rspdk_nvme::spec::oncs as o;
    outln!(
        "Compare Command:                       {}",
        yes(oncs & o::COMPARE != 0)
    );
    outln!(
        "Write Uncorrectable Command:           {}",
        yes(oncs & o::WRITE_UNCORRECTABLE != 0)
    );
    outln!(
        "Dataset Management Command:            {}",
        yes(oncs & o::DSM != 0)
    );
    outln!(
        "Write Zeroes Command:                  {}",
        yes(oncs & o::WRITE_ZEROES != 0)
    );
    outln!(
        "Reservation:                           {}",
        yes(oncs & o::RESERVATIONS != 0)
    );
    outln!();
    let h = c.health_log()?;
    outln!("Health Information");
    outln!("==================");
    outln!(
        "Critical Warnings:                     {:#04x}",
        h.critical_warning()
    );
    outln!(
        "Current Temperature:                   {} Kelvin ({} Celsius)",
        h.temperature(),
        h.temperature() as i32 - 273
    );
    outln!(
        "Available Spare:                       {}% (threshold {}%)",
        h.available_spare(),
        h.available_spare_threshold()
    );
    outln!(
        "Life Percentage Used:                  {}%",
        h.percentage_used()
    );
    outln!(
        "Data Units Read:                       {}",
        h.data_units_read()
    );
    outln!(
        "Data Units Written:                    {}",
        h.data_units_written()
    );
    outln!(
        "Host Read Commands:                    {}",
        h.host_read_commands()
    );
    outln!(
        "Host Write Commands:                   {}",
        h.host_write_commands()
    );
    outln!(
        "Power Cycles:                          {}",
        h.power_cycles()
    );
    outln!(
        "Power On Hours:                        {} hours",
        h.power_on_hours()
    );
    outln!(
        "Unsafe Shutdowns:                      {}",
        h.unsafe_shutdowns()
    );
    outln!(
        "Media Errors:                          {}",
        h.media_errors()
    );
    outln!(
        "Error Log Entries:                     {}",
        h.num_error_log_entries()
    );
    outln!();
    let fw = c.firmware_log()?;
    outln!("Firmware Slot Information");
    outln!("=========================");
    outln!(
        "Active slot:                           {}",
        fw.active_slot()
    );
    for s in 1..=7 {
        let r = fw.revision(s);
        if !r.is_empty() {
            outln!("Slot {s} Firmware Revision:              {r}");
        }
    }
    outln!();
    let errs = c.error_log(4)?;
    outln!("Error Log");
    outln!("=========");
    let mut any = false;
    for e in errs.iter().filter(|e| e.error_count() != 0) {
        any = true;
        outln!(
            "Entry {}: SQID {} CID {} LBA {} NSID {}: {}",
            e.error_count(),
            e.sqid(),
            e.cid(),
            e.lba(),
            e.nsid(),
            e.status()
        );
    }
    if !any {
        outln!("No errors logged");
    }
    outln!();
    for ns in c.namespaces() {
        let n = &ns.data;
        outln!("Namespace ID:{}", ns.id);
        outln!(
            "Size (in LBAs):                        {} ({}M)",
            n.nsze(),
            ns.size() >> 20
        );
        outln!("Capacity (in LBAs):                    {}", n.ncap());
        outln!("Utilization (in LBAs):                 {}", n.nuse());
        outln!(
            "Thin Provisioning:                     {}",
            yes(n.nsfeat() & 1 != 0)
        );
        outln!(
            "Number of LBA Formats:                 {}",
            n.nlbaf() as u32 + 1
        );
        outln!(
            "Current LBA Format:                    LBA Format #{:02}",
            n.flbas_index()
        );
        for i in 0..=n.nlbaf() as usize {
            let f = n.lbaf(i);
            outln!(
                "LBA Format #{i:02}: Data Size: {:5}  Metadata Size: {:5}",
                1u64 << f.lbads,
                f.ms
            );
        }
        outln!("EUI64:                                 {:016x}", n.eui64());
        outln!("NGUID:                                 {:032x}", n.nguid());
        outln!();
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let iova_mode = match cli.iova_mode.parse() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("rspdk_nvme_identify: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut opts = rspdk_env::EnvOpts {
        name: "identify".into(),
        mem_size_mb: cli.mem_size,
        iova_mode,
        ..Default::default()
    };
    if let Some(b) = cli.base_virtaddr {
        opts.base_virtaddr = b;
    }
    let trids: Vec<TransportId> = match &cli.trid {
        Some(s) => match s.parse() {
            Ok(t) => vec![t],
            Err(e) => {
                eprintln!("rspdk_nvme_identify: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => Vec::new(),
    };
    // The fabrics host needs no DMA memory.
    if trids
        .iter()
        .any(|t: &TransportId| t.trtype != TransportType::Tcp)
        || trids.is_empty()
    {
        if let Err(e) = rspdk_env::init(&opts) {
            eprintln!("rspdk_nvme_identify: env init: {e}");
            return ExitCode::FAILURE;
        }
    }
    let trids = if cli.trid.is_none() {
        rspdk_nvme::probe_pcie(&Default::default())
    } else {
        trids
    };
    let mut copts = ControllerOpts {
        header_digest: cli.hdgst,
        data_digest: cli.ddgst,
        ..Default::default()
    };
    if let Some(h) = &cli.hostnqn {
        copts.hostnqn = h.clone();
    }
    if trids.is_empty() {
        eprintln!("rspdk_nvme_identify: no NVMe controllers bound to vfio-pci or uio_pci_generic (run rspdk_setup config)");
        return ExitCode::FAILURE;
    }
    let mut rc = ExitCode::SUCCESS;
    for t in trids {
        match Controller::connect(&t, &copts) {
            Ok(c) => {
                if let Err(e) = print_ctrlr(&c) {
                    eprintln!("rspdk_nvme_identify: {t}: {e}");
                    rc = ExitCode::FAILURE;
                }
                let _ = c.detach();
            }
            Err(e) => {
                eprintln!("rspdk_nvme_identify: attaching {t}: {e}");
                rc = ExitCode::FAILURE;
            }
        }
    }
    rc
}
