//! Controller RPCs beyond attach/detach: `bdev_nvme_get_controller_health_info`
//! (SMART / Health log), `bdev_nvme_send_cmd` (admin or I/O passthrough),
//! `bdev_nvme_add_error_injection` / `bdev_nvme_remove_error_injection`
//! (per I/O queue pair, as `spdk_nvme_qpair_add_cmd_error_injection`),
//! `bdev_nvme_enable_controller` / `bdev_nvme_disable_controller`,
//! `bdev_nvme_get_io_paths` and `bdev_nvme_get_transport_statistics`.
//! Every command to a controller runs on a helper thread ([`off_thread`]).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine;
use rspdk_nvme::spec::Sqe;
use rspdk_nvme::{CmdErrorInjection, Controller, Status};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ctrlrs, no_ctrlr, nvme_err, off_thread, trid_json, Health, CHANNELS};
use rspdk_bdev::rpc::{method, method_async, rpc_error};
use rspdk_bdev::BdevError;

fn find(name: &str) -> Result<(Controller, std::sync::Arc<Health>), BdevError> {
    ctrlrs()
        .iter()
        .find(|c| c.name == name)
        .map(|c| (c.ctrlr.clone(), c.health.clone()))
        .ok_or_else(|| no_ctrlr(name))
}

fn invalid(m: String) -> BdevError {
    BdevError::InvalidParam(m)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

/// The health JSON SPDK writes for a controller.
fn health_json(c: &Controller) -> Result<Value, BdevError> {
    let h = c
        .health_log()
        .map_err(|e| nvme_err("Get Log Page (SMART / Health Information)", e))?;
    let d = c.data();
    let n = |v: u128| u64::try_from(v).unwrap_or(u64::MAX);
    let mut v = json!({
        "model_number": d.model(),
        "serial_number": d.serial(),
        "firmware_revision": d.firmware(),
        "traddr": c.trid().traddr,
        "critical_warning": h.critical_warning(),
        "temperature_celsius": (h.temperature() as i64 - 273),
        "available_spare_percentage": h.available_spare(),
        "available_spare_threshold_percentage": h.available_spare_threshold(),
        "percentage_used": h.percentage_used(),
        "data_units_read": n(h.data_units_read()),
        "data_units_written": n(h.data_units_written()),
        "host_read_commands": n(h.host_read_commands()),
        "host_write_commands": n(h.host_write_commands()),
        "controller_busy_time": n(h.counter(rspdk_nvme::spec::health_field::CONTROLLER_BUSY_TIME)),
        "power_cycles": n(h.power_cycles()),
        "power_on_hours": n(h.power_on_hours()),
        "unsafe_shutdowns": n(h.unsafe_shutdowns()),
        "media_errors": n(h.media_errors()),
        "num_err_log_entries": n(h.num_error_log_entries()),
        "warning_temperature_time_minutes": h.warning_temp_time(),
        "critical_composite_temperature_time_minutes": h.critical_temp_time(),
    });
    // SPDK writes each implemented sensor under the same key.
    if let Some(k) = (0..8).map(|i| h.temp_sensor(i)).find(|&k| k != 0) {
        v["temperature_sensor_celsius"] = json!(k as i64 - 273);
    }
    Ok(v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendCmdParams {
    name: String,
    cmd_type: String,
    data_direction: String,
    cmdbuf: String,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    metadata: Option<String>,
    #[serde(default)]
    data_len: Option<u32>,
    #[serde(default)]
    metadata_len: Option<u32>,
    #[serde(default)]
    timeout_ms: Option<u32>,
}

const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// A checked `bdev_nvme_send_cmd`.
struct SendCmd {
    admin: bool,
    c2h: bool,
    sqe: Sqe,
    data: Vec<u8>,
    timeout: Option<Duration>,
}

impl SendCmdParams {
    fn check(&self) -> Result<SendCmd, BdevError> {
        let admin = match self.cmd_type.as_str() {
            "admin" => true,
            "io" => false,
            t => return Err(invalid(format!("cmd_type '{t}': use admin or io"))),
        };
        let c2h = match self.data_direction.as_str() {
            "c2h" => true,
            "h2c" => false,
            t => return Err(invalid(format!("data_direction '{t}': use c2h or h2c"))),
        };
        if self.metadata.is_some() || self.metadata_len.is_some_and(|l| l != 0) {
            return Err(invalid(
                "metadata/metadata_len: separate metadata buffers are not supported by rspdk's NVMe driver; omit them".into(),
            ));
        }
        let raw = B64
            .decode(&self.cmdbuf)
            .map_err(|e| invalid(format!("cmdbuf is not base64 (urlsafe): {e}")))?;
        if raw.len() != 64 {
            return Err(invalid(format!(
                "cmdbuf decodes to {} bytes: give the 64-byte submission queue entry",
                raw.len()
            )));
        }
        let mut sqe = Sqe::default();
        for (i, w) in raw.chunks_exact(4).enumerate() {
            sqe.dw[i] = u32::from_le_bytes(w.try_into().expect("4 bytes"));
        }
        let data = match &self.data {
            Some(t) => {
                let d = B64
                    .decode(t)
                    .map_err(|e| invalid(format!("data is not base64 (urlsafe): {e}")))?;
                if let Some(l) = self.data_len.filter(|&l| l as usize != d.len()) {
                    return Err(invalid(format!(
                        "data_len {l} differs from the {} bytes of data",
                        d.len()
                    )));
                }
                d
            }
            None => vec![0u8; self.data_len.unwrap_or(0) as usize],
        };
        if !c2h && self.data.is_none() && !data.is_empty() {
            return Err(invalid("h2c with data_len needs data".into()));
        }
        Ok(SendCmd {
            admin,
            c2h,
            sqe,
            data,
            timeout: self
                .timeout_ms
                .filter(|&t| t > 0)
                .map(|t| Duration::from_millis(t as u64)),
        })
    }
}

/// The 16-byte completion queue entry SPDK returns (DW0, DW1 0, SQ head
/// and id 0, CID 0, phase 0, status).
fn cqe_bytes(cdw0: u32, status: Status) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&cdw0.to_le_bytes());
    b[12..16].copy_from_slice(&((status.raw() as u32) << 17).to_le_bytes());
    b
}

/// Runs the command (blocking; on a helper thread) and gives SPDK's result.
fn run_cmd(c: Controller, cmd: SendCmd) -> Result<Value, BdevError> {
    let len = cmd.data.len();
    let mut buf = if len > 0 {
        let mut b = rspdk_env::DmaBuf::zeroed(len.max(4096))
            .map_err(|e| invalid(format!("no DMA memory for {len} bytes: {e}")))?;
        b[..len].copy_from_slice(&cmd.data);
        Some(b)
    } else {
        None
    };
    let (cdw0, status) = if cmd.admin {
        let cpl = c
            .admin_raw(cmd.sqe, buf.as_mut())
            .map_err(|e| nvme_err("bdev_nvme_send_cmd", e))?;
        (cpl.cdw0, cpl.status)
    } else {
        let mut qp = c
            .alloc_io_qpair(None)
            .map_err(|e| nvme_err("an I/O queue pair for bdev_nvme_send_cmd", e))?;
        let (p, l) = match buf.as_mut() {
            Some(b) => (b.as_mut_ptr(), len),
            None => (std::ptr::null_mut(), 0),
        };
        // SAFETY: `buf` is DMA memory of at least `l` bytes owned here and
        // untouched until the completion is reaped below (or the queue
        // pair is dropped, which takes its commands back first).
        unsafe { qp.io_raw(cmd.sqe, p, l, 1) }.map_err(|e| nvme_err("bdev_nvme_send_cmd", e))?;
        let end = Instant::now() + cmd.timeout.unwrap_or(Duration::from_secs(30));
        let mut got = None;
        while got.is_none() {
            qp.process_completions(0, |cpl| got = Some((cpl.cdw0, cpl.status)))
                .map_err(|e| nvme_err("bdev_nvme_send_cmd", e))?;
            if got.is_none() {
                if Instant::now() > end {
                    return Err(BdevError::Module {
                        errno: libc::ETIMEDOUT,
                        message: "bdev_nvme_send_cmd: the I/O command timed out".into(),
                    });
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        got.expect("loop ends with a completion")
    };
    let mut out = json!({"cpl": B64.encode(cqe_bytes(cdw0, status))});
    if cmd.c2h && len > 0 {
        let b = buf.expect("len > 0");
        out["data"] = json!(B64.encode(&b[..len]));
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectParams {
    name: String,
    cmd_type: String,
    opc: u8,
    #[serde(default)]
    do_not_submit: Option<bool>,
    #[serde(default)]
    timeout_in_us: Option<u64>,
    #[serde(default)]
    err_count: Option<u32>,
    #[serde(default)]
    sct: Option<u8>,
    #[serde(default)]
    sc: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveInjectParams {
    name: String,
    cmd_type: String,
    opc: u8,
}

fn check_io_type(cmd_type: &str) -> Result<(), BdevError> {
    match cmd_type {
        "io" => Ok(()),
        "admin" => Err(invalid(
            "cmd_type admin: error injection on the admin queue is not supported by rspdk yet; use io".into(),
        )),
        t => Err(invalid(format!("cmd_type '{t}': use admin or io"))),
    }
}

static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn add_injection(p: &InjectParams) -> Result<(), BdevError> {
    check_io_type(&p.cmd_type)?;
    if p.sct.is_some_and(|s| s > 7) {
        return Err(invalid(format!(
            "sct {}: a status code type is 0..=7",
            p.sct.unwrap_or(0)
        )));
    }
    let (_, h) = find(&p.name)?;
    let e = CmdErrorInjection {
        opc: p.opc,
        do_not_submit: p.do_not_submit.unwrap_or(false),
        timeout_us: p.timeout_in_us.unwrap_or(0),
        err_count: p.err_count.unwrap_or(1),
        status: Status::new(p.sct.unwrap_or(0), p.sc.unwrap_or(0)),
    };
    let mut list = h.inject.lock().unwrap_or_else(|e| e.into_inner());
    list.retain(|(_, x)| x.opc != e.opc);
    list.push((SERIAL.fetch_add(1, Ordering::Relaxed), e));
    h.inject_gen.fetch_add(1, Ordering::AcqRel);
    Ok(())
}

fn remove_injection(p: &RemoveInjectParams) -> Result<(), BdevError> {
    check_io_type(&p.cmd_type)?;
    let (_, h) = find(&p.name)?;
    h.inject
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(_, x)| x.opc != p.opc);
    h.inject_gen.fetch_add(1, Ordering::AcqRel);
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnableParams {
    name: String,
    #[serde(default)]
    cntlid: Option<u16>,
}

fn check_cntlid(c: &Controller, p: &EnableParams) -> Result<(), BdevError> {
    match p.cntlid {
        Some(id) if id != c.cntlid() => Err(BdevError::Module {
            errno: libc::ENODEV,
            message: format!(
                "NVMe controller '{}' has no path with cntlid {id} (its cntlid is {})",
                p.name,
                c.cntlid()
            ),
        }),
        _ => Ok(()),
    }
}

/// Disables a controller: I/O fails from now on, the connection is closed
/// (PCIe: CC.EN cleared), no reconnect is tried until it is enabled.
fn disable(p: EnableParams, resp: rspdk_rpc::Responder) {
    let (c, h) = match find(&p.name).and_then(|(c, h)| check_cntlid(&c, &p).map(|()| (c, h))) {
        Ok(x) => x,
        Err(e) => return resp.error(rpc_error(e)),
    };
    if h.disabled.swap(true, Ordering::AcqRel) {
        return resp.complete(Ok(json!(true)));
    }
    h.io_fail.store(true, Ordering::Release);
    h.reconnecting.store(true, Ordering::Release);
    off_thread(
        resp,
        move || c.disable("disabled by bdev_nvme_disable_controller"),
        |()| Ok(json!(true)),
    );
}

/// Enables a disabled controller: reconnects (resets) it, then I/O flows.
fn enable(p: EnableParams, resp: rspdk_rpc::Responder) {
    let (c, h) = match find(&p.name).and_then(|(c, h)| check_cntlid(&c, &p).map(|()| (c, h))) {
        Ok(x) => x,
        Err(e) => return resp.error(rpc_error(e)),
    };
    if !h.disabled.load(Ordering::Acquire) {
        return resp.complete(Ok(json!(true)));
    }
    let name = p.name.clone();
    off_thread(
        resp,
        move || {
            c.reset()
                .map_err(|e| nvme_err("enabling (reconnecting)", e))
        },
        move |r| {
            r?;
            if let Some(c) = ctrlrs().iter_mut().find(|c| c.name == name) {
                c.failed_at = None;
                c.next_try = None;
            }
            h.reset_tried.store(false, Ordering::Release);
            h.io_fail.store(false, Ordering::Release);
            h.reconnecting.store(false, Ordering::Release);
            h.disabled.store(false, Ordering::Release);
            Ok(json!(true))
        },
    );
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IoPathsParams {
    #[serde(default)]
    name: Option<String>,
}

/// `bdev_nvme_get_io_paths`: each thread's NVMe channels (one path each).
fn io_paths(name: Option<&str>) -> Value {
    let chans = CHANNELS.lock().unwrap_or_else(|e| e.into_inner());
    let list = ctrlrs();
    let mut groups: Vec<(String, Vec<Value>)> = Vec::new();
    for ch in chans.iter().filter(|c| name.is_none_or(|n| n == c.bdev)) {
        let Some(c) = list.iter().find(|c| c.name == ch.ctrlr) else {
            continue;
        };
        let up = !c.ctrlr.is_failed() && !c.health.disabled.load(Ordering::Acquire);
        let path = json!({
            "bdev_name": ch.bdev,
            "cntlid": c.ctrlr.cntlid(),
            "current": up,
            "connected": up,
            "accessible": true,
            "transport": trid_json(c.ctrlr.trid()),
        });
        match groups.iter_mut().find(|g| g.0 == ch.thread) {
            Some(g) => g.1.push(path),
            None => groups.push((ch.thread.clone(), vec![path])),
        }
    }
    json!({"poll_groups": groups
        .into_iter()
        .map(|(t, p)| json!({"thread": t, "io_paths": p}))
        .collect::<Vec<_>>()})
}

/// `bdev_nvme_get_transport_statistics`: per thread, per transport, the
/// NVMe channels' poll and command counters (SPDK's field names).
fn transport_statistics() -> Value {
    let chans = CHANNELS.lock().unwrap_or_else(|e| e.into_inner());
    // Per thread: per transport, polls, idle polls, completions,
    // submitted, queued.
    type Counters = (String, [u64; 5]);
    let mut groups: Vec<(String, Vec<Counters>)> = Vec::new();
    for ch in chans.iter() {
        let s = &ch.stats;
        let v = [
            s.polls.load(Ordering::Relaxed),
            s.idle_polls.load(Ordering::Relaxed),
            s.completions.load(Ordering::Relaxed),
            s.submitted.load(Ordering::Relaxed),
            s.queued.load(Ordering::Relaxed),
        ];
        let g = match groups.iter_mut().position(|g| g.0 == ch.thread) {
            Some(i) => &mut groups[i],
            None => {
                groups.push((ch.thread.clone(), Vec::new()));
                groups.last_mut().expect("just pushed")
            }
        };
        match g.1.iter_mut().find(|t| t.0 == ch.trtype) {
            Some(t) => {
                for (a, b) in t.1.iter_mut().zip(v) {
                    *a += b;
                }
            }
            None => g.1.push((ch.trtype.clone(), v)),
        }
    }
    let tr = |name: &str, v: [u64; 5]| {
        if name == "PCIe" {
            json!({"trname": "PCIE", "polls": v[0], "idle_polls": v[1], "completions": v[2],
                "cq_mmio_doorbell_updates": v[2], "cq_shadow_doorbell_updates": 0,
                "queued_requests": v[4], "submitted_requests": v[3],
                "sq_mmio_doorbell_updates": v[3], "sq_shadow_doorbell_updates": 0})
        } else {
            json!({"trname": name, "polls": v[0], "idle_polls": v[1],
                "socket_completions": v[2], "nvme_completions": v[2],
                "queued_requests": v[4], "submitted_requests": v[3]})
        }
    };
    json!({"poll_groups": groups.into_iter().map(|(t, trs)| json!({
        "thread": t,
        "transports": trs.into_iter().map(|(n, v)| tr(&n, v)).collect::<Vec<_>>(),
    })).collect::<Vec<_>>()})
}

/// Registers the methods of this file.
pub fn register_rpcs(reg: &rspdk_rpc::RpcRegistry) {
    let rt = rspdk_rpc::StateMask::RUNTIME;
    method_async(
        reg,
        "bdev_nvme_get_controller_health_info",
        rt,
        |p: NameParams, resp| match find(&p.name) {
            Ok((c, _)) => off_thread(resp, move || health_json(&c), |r| r),
            Err(e) => resp.error(rpc_error(e)),
        },
    );
    method_async(reg, "bdev_nvme_send_cmd", rt, |p: SendCmdParams, resp| {
        let cmd = match p.check() {
            Ok(c) => c,
            Err(e) => return resp.error(rpc_error(e)),
        };
        let c = match find(&p.name) {
            Ok((c, _)) => c,
            Err(e) => return resp.error(rpc_error(e)),
        };
        let timeout = cmd.timeout;
        off_thread(
            resp,
            move || {
                if !cmd.admin {
                    return run_cmd(c, cmd);
                }
                // An admin command waits in the driver; timeout_ms bounds
                // the answer (the command itself is left to finish).
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let _ = tx.send(run_cmd(c, cmd));
                });
                match timeout {
                    Some(t) => rx.recv_timeout(t).unwrap_or_else(|_| {
                        Err(BdevError::Module {
                            errno: libc::ETIMEDOUT,
                            message: "bdev_nvme_send_cmd: the admin command timed out".into(),
                        })
                    }),
                    None => rx.recv().unwrap_or_else(|_| {
                        Err(invalid(
                            "bdev_nvme_send_cmd: the command thread died".into(),
                        ))
                    }),
                }
            },
            |r| r,
        );
    });
    method(
        reg,
        "bdev_nvme_add_error_injection",
        rt,
        |p: InjectParams| add_injection(&p).map(|()| json!(true)),
    );
    method(
        reg,
        "bdev_nvme_remove_error_injection",
        rt,
        |p: RemoveInjectParams| remove_injection(&p).map(|()| json!(true)),
    );
    method_async(reg, "bdev_nvme_disable_controller", rt, disable);
    method_async(reg, "bdev_nvme_enable_controller", rt, enable);
    method(reg, "bdev_nvme_get_io_paths", rt, |p: IoPathsParams| {
        Ok(io_paths(p.name.as_deref()))
    });
    method(
        reg,
        "bdev_nvme_get_transport_statistics",
        rt,
        |_: Option<Value>| Ok(transport_statistics()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_cmd_params_decode_as_spdk() {
        let p: SendCmdParams = serde_json::from_value(json!({"name": "Nvme0", "cmd_type": "admin",
            "data_direction": "c2h",
            "cmdbuf": "BgAAAAEAAAAAAAAAAAAAAAAAAAAAAAAAsGUs9P5_AAAAAAAAABAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",
            "data_len": 60}))
        .unwrap();
        let c = p.check().unwrap();
        assert!(c.admin && c.c2h);
        assert_eq!(c.sqe.dw[0] & 0xff, 0x06);
        assert_eq!(c.sqe.dw[1], 1);
        assert_eq!(c.data.len(), 60);
        let cqe = cqe_bytes(7, Status::new(0, 0x02));
        assert_eq!(
            u32::from_le_bytes(cqe[12..16].try_into().unwrap()) >> 17,
            0x02
        );
        for (v, want) in [
            (json!({"cmd_type": "x"}), "cmd_type"),
            (json!({"cmdbuf": "AAAA"}), "64-byte"),
            (json!({"metadata_len": 8}), "metadata"),
            (json!({"data": "AAAA", "data_len": 9}), "data_len 9"),
        ] {
            let mut base = json!({"name": "N", "cmd_type": "io", "data_direction": "c2h",
                "cmdbuf": B64.encode([0u8; 64])});
            for (k, x) in v.as_object().unwrap() {
                base[k] = x.clone();
            }
            let p: SendCmdParams = serde_json::from_value(base).unwrap();
            let e = p.check().err().unwrap().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
