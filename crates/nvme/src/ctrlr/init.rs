//! The enable sequence (section 3.5.1) and the shutdown notification
//! (section 3.6.1), through the transport's register access: MMIO for
//! PCIe, Property Get/Set for fabrics (SPDK: `nvme_ctrlr_process_init`).

use std::time::{Duration, Instant};

use crate::error::{NvmeError, Result};
use crate::spec::{cc, csts, reg, Arbitration, Cap};
use crate::transport::Transport;

/// The initialisation steps, each with a deadline (CAP.TO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InitState {
    /// CC.EN is 1 and CSTS.RDY is 0: wait for RDY before disabling.
    WaitReadyBeforeDisable,
    /// Clear CC.EN.
    Disable,
    /// Wait for CSTS.RDY = 0.
    WaitDisabled,
    /// Hand over the admin queue and set CC.EN.
    Enable,
    /// Wait for CSTS.RDY = 1.
    WaitEnabled,
    /// Done.
    Ready,
}

/// Reads CAP and VS, then disables the controller if it is enabled
/// (waiting for RDY as CAP.TO allows), hands it the admin queue, sets
/// CC.EN and waits for CSTS.RDY. A timeout or fatal status fails the
/// controller.
pub(crate) fn enable(t: &dyn Transport) -> Result<()> {
    let c = t.common();
    let cap = Cap(t.get_reg_8(reg::CAP)?);
    let vs = t.get_reg_4(reg::VS)?;
    c.set_regs(cap, vs);
    let to = Duration::from_millis(cap.timeout_ms().max(500));
    let ccv = t.get_reg_4(reg::CC)?;
    let stv = t.get_reg_4(reg::CSTS)?;
    let mut st = match (ccv & cc::EN != 0, stv & csts::RDY != 0) {
        (true, false) => InitState::WaitReadyBeforeDisable,
        (true, true) => InitState::Disable,
        // Disabled, but RDY has not followed yet.
        (false, true) => InitState::WaitDisabled,
        (false, false) => InitState::Enable,
    };
    let mut deadline = Instant::now() + to;
    loop {
        let csts_v = t.get_reg_4(reg::CSTS)?;
        if csts_v == csts::ALL_ONES {
            return Err(c.fail("registers read all ones during init: the device is gone"));
        }
        match st {
            InitState::WaitReadyBeforeDisable => {
                if csts_v & csts::RDY != 0 {
                    st = InitState::Disable;
                }
            }
            InitState::Disable => {
                let v = t.get_reg_4(reg::CC)?;
                t.set_reg_4(reg::CC, v & !cc::EN)?;
                st = InitState::WaitDisabled;
                deadline = Instant::now() + to;
            }
            InitState::WaitDisabled => {
                if csts_v & csts::RDY == 0 {
                    st = InitState::Enable;
                }
            }
            InitState::Enable => {
                t.enable_admin_queue()?;
                let ams = c.opts.arb_mechanism;
                let cap_ams = ((cap.0 >> 17) & 0b11) as u32;
                let ams_ok = match ams {
                    Arbitration::RoundRobin => true,
                    Arbitration::WeightedRoundRobin => cap_ams & 1 != 0,
                    Arbitration::VendorSpecific => cap_ams & 2 != 0,
                };
                if !ams_ok {
                    return Err(NvmeError::NotSupported(format!(
                        "arbitration mechanism {ams:?} (CAP.AMS = {cap_ams:#b})"
                    )));
                }
                let v = cc::EN
                    | (6 << cc::IOSQES_SHIFT)
                    | (4 << cc::IOCQES_SHIFT)
                    | (ams.cc_value() << cc::AMS_SHIFT);
                t.set_reg_4(reg::CC, v)?;
                st = InitState::WaitEnabled;
                deadline = Instant::now() + to;
            }
            InitState::WaitEnabled => {
                if csts_v & csts::CFS != 0 {
                    return Err(c.fail("controller fatal status (CSTS.CFS) while enabling"));
                }
                if csts_v & csts::RDY != 0 {
                    st = InitState::Ready;
                }
            }
            InitState::Ready => return Ok(()),
        }
        if st != InitState::Ready && Instant::now() > deadline {
            let e = NvmeError::Timeout {
                traddr: c.trid.traddr.clone(),
                what: format!("{st:?} (CSTS {csts_v:#x}, CAP.TO {} ms)", cap.timeout_ms()),
                ms: to.as_millis() as u64,
            };
            c.fail(&e.to_string());
            return Err(e);
        }
        if matches!(
            st,
            InitState::WaitDisabled | InitState::WaitEnabled | InitState::WaitReadyBeforeDisable
        ) {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

/// The normal shutdown notification: CC.SHN, then CSTS.SHST polled until
/// complete, the device gone, a register error, or CAP.TO (at least 2 s).
pub(crate) fn shutdown(t: &dyn Transport) {
    let c = t.common();
    let Ok(v) = t.get_reg_4(reg::CC) else {
        return;
    };
    if t.set_reg_4(reg::CC, (v & !cc::SHN_MASK) | cc::SHN_NORMAL)
        .is_err()
    {
        return;
    }
    let to = Duration::from_millis(c.cap().timeout_ms().max(2000));
    let end = Instant::now() + to;
    loop {
        match t.get_reg_4(reg::CSTS) {
            Ok(s) if s == csts::ALL_ONES || s & csts::SHST_MASK == csts::SHST_COMPLETE => break,
            Ok(_) => {}
            Err(_) => break,
        }
        if Instant::now() > end {
            tracing::warn!(trid = %c.trid, "shutdown did not complete in {} ms", to.as_millis());
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}
