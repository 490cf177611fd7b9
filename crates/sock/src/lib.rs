//! # rspdk_sock — socket layer options (SPDK: `lib/sock`)
//!
//! rspdk's NVMe/TCP target, NVMe/TCP host and iSCSI target use the
//! kernel's TCP sockets directly; this crate holds what SPDK keeps per
//! socket implementation (`struct spdk_sock_impl_opts`), serves SPDK's
//! `sock_impl_get_options`, `sock_impl_set_options`,
//! `sock_get_default_impl` and `sock_set_default_impl`, writes the `sock`
//! save_config section, and applies the options to a socket when it is
//! created, accepted or connected ([`apply_listener`], [`apply_server`],
//! [`apply_client`]). Nothing here runs per I/O.
//!
//! The one implementation is SPDK's `posix` (the kernel's sockets).
//! `uring` (rspdk's sockets are not driven through io_uring) and `ssl`
//! (no TLS yet) are refused by name. Of the options, `recv_buf_size`,
//! `send_buf_size` (SO_RCVBUF/SO_SNDBUF, at least 4 KiB as in SPDK) and
//! `enable_quickack` (TCP_QUICKACK) take effect; the others accept only
//! SPDK's default and refuse any other value, naming the option.

use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard};

use rspdk_rpc::{expect_no_params, parse_params, RpcError, RpcRegistry, StateMask};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The one socket implementation rspdk has (SPDK's name).
pub const POSIX: &str = "posix";

/// Smallest socket buffer size applied (SPDK: `MIN_SO_RCVBUF_SIZE`,
/// `MIN_SO_SNDBUF_SIZE`).
pub const MIN_BUF_SIZE: u32 = 4096;

/// Errors of the socket layer.
#[derive(Debug, thiserror::Error)]
pub enum SockError {
    /// An implementation rspdk does not have.
    #[error("sock implementation '{name}': {why}")]
    UnknownImpl {
        /// The name asked for.
        name: String,
        /// Why it is refused and what to use instead.
        why: String,
    },
    /// An option value rspdk cannot honour.
    #[error("{param} {value}: {why}")]
    Unsupported {
        /// SPDK's name of the option.
        param: &'static str,
        /// The value given.
        value: String,
        /// Why, and the value to pass instead.
        why: &'static str,
    },
    /// A setsockopt failed.
    #[error("setsockopt {what} on fd {fd}: {source}")]
    Setsockopt {
        /// The option being set.
        what: &'static str,
        /// The socket.
        fd: RawFd,
        /// The kernel's error.
        source: std::io::Error,
    },
}

/// Options of a socket implementation (SPDK: `struct
/// spdk_sock_impl_opts`, as `sock_impl_get_options` reports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SockImplOpts {
    /// SO_RCVBUF of every socket (at least 4 KiB).
    pub recv_buf_size: u32,
    /// SO_SNDBUF of every socket (at least 4 KiB).
    pub send_buf_size: u32,
    /// SPDK's user-space receive pipe. rspdk's connections always read
    /// into a receive buffer of their own, so only true (SPDK's default).
    pub enable_recv_pipe: bool,
    /// TCP_QUICKACK on every socket.
    pub enable_quickack: bool,
    /// Placement ID source (0 none, 1 NAPI, 2 CPU): only 0.
    pub enable_placement_id: u32,
    /// Zero-copy send on server sockets: SPDK's default (true) only; see
    /// [`set_impl_opts`].
    pub enable_zerocopy_send_server: bool,
    /// Zero-copy send on client sockets: only false (SPDK's default).
    pub enable_zerocopy_send_client: bool,
    /// Size below which zero-copy is not used: only 0.
    pub zerocopy_threshold: u32,
    /// TLS version (ssl only): only 0 on posix.
    pub tls_version: u32,
    /// Kernel TLS (ssl only): only false.
    pub enable_ktls: bool,
}

/// SPDK's defaults of the `posix` implementation.
pub const POSIX_DEFAULTS: SockImplOpts = SockImplOpts {
    recv_buf_size: 2 * 1024 * 1024,
    send_buf_size: 2 * 1024 * 1024,
    enable_recv_pipe: true,
    enable_quickack: false,
    enable_placement_id: 0,
    enable_zerocopy_send_server: true,
    enable_zerocopy_send_client: false,
    zerocopy_threshold: 0,
    tls_version: 0,
    enable_ktls: false,
};

/// `sock_impl_set_options` params: every option optional (unset ones keep
/// their value).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetImplOpts {
    /// Implementation name.
    pub impl_name: String,
    /// See [`SockImplOpts`].
    pub recv_buf_size: Option<u32>,
    /// See [`SockImplOpts`].
    pub send_buf_size: Option<u32>,
    /// See [`SockImplOpts`].
    pub enable_recv_pipe: Option<bool>,
    /// See [`SockImplOpts`].
    pub enable_quickack: Option<bool>,
    /// See [`SockImplOpts`].
    pub enable_placement_id: Option<u32>,
    /// See [`SockImplOpts`].
    pub enable_zerocopy_send_server: Option<bool>,
    /// See [`SockImplOpts`].
    pub enable_zerocopy_send_client: Option<bool>,
    /// See [`SockImplOpts`].
    pub zerocopy_threshold: Option<u32>,
    /// See [`SockImplOpts`].
    pub tls_version: Option<u32>,
    /// See [`SockImplOpts`].
    pub enable_ktls: Option<bool>,
}

static OPTS: Mutex<SockImplOpts> = Mutex::new(POSIX_DEFAULTS);

fn opts_lock() -> MutexGuard<'static, SockImplOpts> {
    OPTS.lock().unwrap_or_else(|e| e.into_inner())
}

fn check_impl(name: &str) -> Result<(), SockError> {
    let why = match name {
        POSIX => return Ok(()),
        "uring" => "rspdk's sockets are the kernel's, read and written with plain system calls, not through io_uring; use posix",
        "ssl" => "rspdk has no TLS sockets yet; use posix",
        _ => "not a socket implementation (rspdk has posix)",
    };
    Err(SockError::UnknownImpl {
        name: name.to_string(),
        why: why.to_string(),
    })
}

/// The options of implementation `name`.
pub fn impl_opts(name: &str) -> Result<SockImplOpts, SockError> {
    check_impl(name)?;
    Ok(*opts_lock())
}

/// The options now in force for `posix`.
pub fn posix_opts() -> SockImplOpts {
    *opts_lock()
}

/// Sets the options of an implementation (`sock_impl_set_options`): each
/// given value is checked, and nothing changes unless all are accepted.
pub fn set_impl_opts(p: &SetImplOpts) -> Result<(), SockError> {
    check_impl(&p.impl_name)?;
    let fixed_u32 = [
        (
            "enable_placement_id",
            p.enable_placement_id,
            0,
            "placement IDs (grouping connections by NAPI ID or CPU) are not supported by rspdk, connections go round robin to the poll groups; omit it or pass 0",
        ),
        (
            "zerocopy_threshold",
            p.zerocopy_threshold,
            0,
            "rspdk's sockets send by copy (no MSG_ZEROCOPY); omit it or pass 0",
        ),
        (
            "tls_version",
            p.tls_version,
            0,
            "TLS is not supported by rspdk's posix sockets; omit it or pass 0",
        ),
    ];
    for (param, v, want, why) in fixed_u32 {
        if let Some(v) = v.filter(|v| *v != want) {
            return Err(SockError::Unsupported {
                param,
                value: v.to_string(),
                why,
            });
        }
    }
    let fixed_bool = [
        (
            "enable_recv_pipe",
            p.enable_recv_pipe,
            true,
            "rspdk's connections always read into a receive buffer of their own; omit it or pass true (--recv-pipe)",
        ),
        (
            "enable_zerocopy_send_server",
            p.enable_zerocopy_send_server,
            true,
            "rspdk's server sockets send by copy (writev) and zero-copy cannot be turned off or on; omit it (SPDK's default)",
        ),
        (
            "enable_zerocopy_send_client",
            p.enable_zerocopy_send_client,
            false,
            "zero-copy send (MSG_ZEROCOPY) is not supported by rspdk's client sockets; omit it or pass false",
        ),
        (
            "enable_ktls",
            p.enable_ktls,
            false,
            "kernel TLS is not supported by rspdk; omit it or pass false",
        ),
    ];
    for (param, v, want, why) in fixed_bool {
        if let Some(v) = v.filter(|v| *v != want) {
            return Err(SockError::Unsupported {
                param,
                value: v.to_string(),
                why,
            });
        }
    }
    let mut o = opts_lock();
    if let Some(v) = p.recv_buf_size {
        o.recv_buf_size = v;
    }
    if let Some(v) = p.send_buf_size {
        o.send_buf_size = v;
    }
    if let Some(v) = p.enable_quickack {
        o.enable_quickack = v;
    }
    Ok(())
}

/// The default implementation's name (`sock_get_default_impl`).
pub fn default_impl() -> &'static str {
    POSIX
}

fn setsockopt_int(
    fd: RawFd,
    level: i32,
    opt: i32,
    what: &'static str,
    v: i32,
) -> Result<(), SockError> {
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a c_int on
    // our stack; an invalid fd is reported as EBADF, not undefined.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(SockError::Setsockopt {
            what,
            fd,
            source: std::io::Error::last_os_error(),
        })
    }
}

fn clamp(v: u32) -> i32 {
    i32::try_from(v.max(MIN_BUF_SIZE)).unwrap_or(i32::MAX)
}

fn apply_bufs(fd: RawFd, o: &SockImplOpts) -> Result<(), SockError> {
    setsockopt_int(
        fd,
        libc::SOL_SOCKET,
        libc::SO_RCVBUF,
        "SO_RCVBUF (recv_buf_size)",
        clamp(o.recv_buf_size),
    )?;
    setsockopt_int(
        fd,
        libc::SOL_SOCKET,
        libc::SO_SNDBUF,
        "SO_SNDBUF (send_buf_size)",
        clamp(o.send_buf_size),
    )
}

/// Applies the buffer sizes to a listening socket (an accepted socket
/// starts from them, and TCP's window scale is chosen from the listener's
/// receive buffer). Call once per listener.
pub fn apply_listener(fd: RawFd) -> Result<(), SockError> {
    apply_bufs(fd, &posix_opts())
}

/// Applies the options to an accepted connection's socket (once, at
/// accept).
pub fn apply_server(fd: RawFd) -> Result<(), SockError> {
    apply_conn(fd)
}

/// Applies the options to a connected client socket (once, at connect).
pub fn apply_client(fd: RawFd) -> Result<(), SockError> {
    apply_conn(fd)
}

fn apply_conn(fd: RawFd) -> Result<(), SockError> {
    let o = posix_opts();
    apply_bufs(fd, &o)?;
    if o.enable_quickack {
        setsockopt_int(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            "TCP_QUICKACK (enable_quickack)",
            1,
        )?;
    }
    Ok(())
}

fn rpc_err(e: SockError) -> RpcError {
    RpcError::invalid_params(e.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImplName {
    impl_name: String,
}

/// Registers SPDK's four `sock_*` methods.
pub fn register_rpcs(reg: &RpcRegistry) -> Result<(), rspdk_rpc::Error> {
    let any = StateMask::STARTUP | StateMask::RUNTIME;
    reg.register("sock_impl_get_options", any, |p, r| {
        let res = parse_params::<ImplName>(p)
            .and_then(|p| impl_opts(&p.impl_name).map_err(rpc_err))
            .map(|o| json!(o));
        r.complete(res)
    })?;
    reg.register("sock_impl_set_options", any, |p, r| {
        let res = parse_params::<SetImplOpts>(p)
            .and_then(|p| set_impl_opts(&p).map_err(rpc_err))
            .map(|()| json!(true));
        r.complete(res)
    })?;
    reg.register("sock_set_default_impl", any, |p, r| {
        let res = parse_params::<ImplName>(p)
            .and_then(|p| check_impl(&p.impl_name).map_err(rpc_err))
            .map(|()| json!(true));
        r.complete(res)
    })?;
    reg.register("sock_get_default_impl", any, |p, r| {
        if let Err(e) = expect_no_params("sock_get_default_impl", &p) {
            return r.error(e);
        }
        r.success(&json!({"impl_name": default_impl()}))
    })?;
    Ok(())
}

/// The `sock` save_config section, as SPDK writes it: the default
/// implementation, then each implementation's options.
pub fn config_json() -> Vec<Value> {
    let mut params = json!({"impl_name": POSIX});
    if let (Some(m), Value::Object(o)) = (params.as_object_mut(), json!(posix_opts())) {
        m.extend(o);
    }
    vec![
        json!({"method": "sock_set_default_impl", "params": {"impl_name": default_impl()}}),
        json!({"method": "sock_impl_set_options", "params": params}),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn getsockopt_int(fd: RawFd, level: i32, opt: i32) -> i32 {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                level,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        v
    }

    #[test]
    fn options_are_checked_applied_and_saved() {
        assert!(impl_opts("uring")
            .unwrap_err()
            .to_string()
            .contains("io_uring"));
        assert!(impl_opts("ssl").is_err());
        let bad = SetImplOpts {
            impl_name: POSIX.into(),
            recv_buf_size: Some(1 << 16),
            enable_placement_id: Some(1),
            ..Default::default()
        };
        let e = set_impl_opts(&bad).unwrap_err().to_string();
        assert!(e.contains("enable_placement_id"), "{e}");
        // A refused call changes nothing.
        assert_eq!(posix_opts(), POSIX_DEFAULTS);
        let good = SetImplOpts {
            impl_name: POSIX.into(),
            recv_buf_size: Some(1 << 16),
            send_buf_size: Some(3 << 15),
            enable_quickack: Some(true),
            ..Default::default()
        };
        set_impl_opts(&good).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        apply_client(c.as_raw_fd()).unwrap();
        // Linux doubles the value for its bookkeeping.
        assert_eq!(
            getsockopt_int(c.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF),
            2 << 16
        );
        assert_eq!(
            getsockopt_int(c.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF),
            3 << 16
        );
        let cfg = config_json();
        assert_eq!(cfg[0]["method"], "sock_set_default_impl");
        assert_eq!(cfg[1]["params"]["recv_buf_size"], 1 << 16);
        assert_eq!(cfg[1]["params"]["enable_quickack"], true);
        assert_eq!(cfg[1]["params"]["impl_name"], "posix");
    }
}
