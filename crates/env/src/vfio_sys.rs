//! The VFIO ioctls and structures rspdk uses (linux/vfio.h), and the few raw
//! system calls around them (`ioctl`, `pread`/`pwrite` on a device fd,
//! `mmap` of a region). Everything unsafe about VFIO is here; `vfio.rs`
//! builds the safe API on it.

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::error::{EnvError, Result};

/// `VFIO_TYPE` (';') and `VFIO_BASE` from linux/vfio.h: every VFIO ioctl is
/// `_IO(VFIO_TYPE, VFIO_BASE + n)`.
const fn vfio_io(n: u64) -> u64 {
    ((b';' as u64) << 8) | (100 + n)
}

pub(crate) const VFIO_API_VERSION: i32 = 0;
pub(crate) const GET_API_VERSION: u64 = vfio_io(0);
pub(crate) const CHECK_EXTENSION: u64 = vfio_io(1);
pub(crate) const SET_IOMMU: u64 = vfio_io(2);
pub(crate) const GROUP_GET_STATUS: u64 = vfio_io(3);
pub(crate) const GROUP_SET_CONTAINER: u64 = vfio_io(4);
pub(crate) const GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
pub(crate) const DEVICE_GET_INFO: u64 = vfio_io(7);
pub(crate) const DEVICE_GET_REGION_INFO: u64 = vfio_io(8);
pub(crate) const DEVICE_RESET: u64 = vfio_io(11);
pub(crate) const IOMMU_GET_INFO: u64 = vfio_io(12);
pub(crate) const IOMMU_MAP_DMA: u64 = vfio_io(13);
pub(crate) const IOMMU_UNMAP_DMA: u64 = vfio_io(14);

/// `VFIO_TYPE1v2_IOMMU`.
pub(crate) const TYPE1V2_IOMMU: u64 = 3;
/// `VFIO_GROUP_FLAGS_VIABLE`.
pub(crate) const GROUP_FLAGS_VIABLE: u32 = 1 << 0;
/// `VFIO_DEVICE_FLAGS_RESET`.
pub(crate) const DEVICE_FLAGS_RESET: u32 = 1 << 0;
/// `VFIO_REGION_INFO_FLAG_MMAP`.
pub(crate) const REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
/// `VFIO_IOMMU_INFO_CAPS`: `cap_offset` is valid.
pub(crate) const IOMMU_INFO_CAPS: u32 = 1 << 1;
/// `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`.
pub(crate) const IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: u16 = 1;
/// `VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE`.
pub(crate) const DMA_MAP_READ_WRITE: u32 = 0b11;
/// `VFIO_PCI_CONFIG_REGION_INDEX`.
pub(crate) const PCI_CONFIG_REGION_INDEX: u32 = 7;

/// `struct vfio_group_status`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct GroupStatus {
    pub argsz: u32,
    pub flags: u32,
}

/// `struct vfio_device_info`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct DeviceInfo {
    pub argsz: u32,
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
    pub cap_offset: u32,
    pub pad: u32,
}

/// `struct vfio_region_info`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RegionInfo {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub cap_offset: u32,
    pub size: u64,
    pub offset: u64,
}

/// `struct vfio_iommu_type1_info` (the fixed part; capabilities follow).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IommuType1Info {
    pub argsz: u32,
    pub flags: u32,
    pub iova_pgsizes: u64,
    pub cap_offset: u32,
    pub pad: u32,
}

/// `struct vfio_iommu_type1_dma_map`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct DmaMap {
    pub argsz: u32,
    pub flags: u32,
    pub vaddr: u64,
    pub iova: u64,
    pub size: u64,
}

/// `struct vfio_iommu_type1_dma_unmap`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct DmaUnmap {
    pub argsz: u32,
    pub flags: u32,
    pub iova: u64,
    pub size: u64,
}

const _: () = assert!(std::mem::size_of::<RegionInfo>() == 32);
const _: () = assert!(std::mem::size_of::<IommuType1Info>() == 24);
const _: () = assert!(std::mem::size_of::<DmaMap>() == 32);
const _: () = assert!(std::mem::size_of::<DmaUnmap>() == 24);
const _: () = assert!(std::mem::size_of::<DeviceInfo>() == 24);

/// An ioctl whose argument is a plain integer; returns its result.
pub(crate) fn ioctl_val(fd: BorrowedFd<'_>, req: u64, arg: u64, what: &str) -> Result<i32> {
    // SAFETY: the VFIO ioctls called this way take an integer argument (or
    // none); the kernel reads no memory through it.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as libc::c_ulong) };
    if r < 0 {
        return Err(EnvError::last_os("ioctl", what.to_string()));
    }
    Ok(r)
}

/// Marks the `repr(C)` argument structs of VFIO ioctls.
///
/// # Safety
/// Implementors must be `repr(C)` plain data matching the kernel's layout for
/// the ioctls they are passed to.
pub(crate) unsafe trait IoctlArg {}
// SAFETY: all of these are repr(C) copies of linux/vfio.h structures.
unsafe impl IoctlArg for GroupStatus {}
// SAFETY: as above.
unsafe impl IoctlArg for DeviceInfo {}
// SAFETY: as above.
unsafe impl IoctlArg for RegionInfo {}
// SAFETY: as above.
unsafe impl IoctlArg for DmaMap {}
// SAFETY: as above.
unsafe impl IoctlArg for DmaUnmap {}
// SAFETY: an i32 file descriptor, as VFIO_GROUP_SET_CONTAINER takes.
unsafe impl IoctlArg for i32 {}

/// An ioctl with a pointer to a `repr(C)` structure the kernel reads and
/// may write.
pub(crate) fn ioctl_ptr<T: IoctlArg>(
    fd: BorrowedFd<'_>,
    req: u64,
    arg: &mut T,
    what: &str,
) -> Result<i32> {
    // SAFETY: `arg` is a live, exclusive, correctly laid out structure
    // (IoctlArg) for the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
    if r < 0 {
        return Err(EnvError::last_os("ioctl", what.to_string()));
    }
    Ok(r)
}

/// `VFIO_GROUP_GET_DEVICE_FD` with the device's name; returns the new fd.
pub(crate) fn get_device_fd(group: BorrowedFd<'_>, name: &str) -> Result<i32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| EnvError::InvalidArgument(format!("device name '{name}' has a NUL byte")))?;
    // SAFETY: the kernel reads a NUL-terminated string that lives across the call.
    let r = unsafe { libc::ioctl(group.as_raw_fd(), GROUP_GET_DEVICE_FD as _, c.as_ptr()) };
    if r < 0 {
        return Err(EnvError::last_os(
            "ioctl",
            format!("VFIO_GROUP_GET_DEVICE_FD {name}"),
        ));
    }
    Ok(r)
}

/// `VFIO_IOMMU_GET_INFO` with room for capabilities; returns the fixed part
/// and the whole buffer (capabilities at their offsets).
pub(crate) fn iommu_info(container: BorrowedFd<'_>) -> Result<(IommuType1Info, Vec<u8>)> {
    let mut size = std::mem::size_of::<IommuType1Info>();
    loop {
        // u64 storage keeps the buffer 8-byte aligned for the header.
        let mut buf = vec![0u64; size.div_ceil(8)];
        let p = buf.as_mut_ptr() as *mut IommuType1Info;
        // SAFETY: `buf` has at least size_of::<IommuType1Info>() bytes, is
        // aligned for it and is exclusively ours.
        unsafe { (*p).argsz = size as u32 };
        // SAFETY: the kernel writes at most `argsz` bytes into `buf`.
        let r = unsafe { libc::ioctl(container.as_raw_fd(), IOMMU_GET_INFO as _, p) };
        if r < 0 {
            return Err(EnvError::last_os("ioctl", "VFIO_IOMMU_GET_INFO"));
        }
        // SAFETY: as above; the kernel filled the fixed part.
        let info = unsafe { p.read() };
        if info.argsz as usize > size {
            size = info.argsz as usize;
            continue;
        }
        let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
        return Ok((info, bytes));
    }
}

/// `pread` on a device fd (config space).
pub(crate) fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], off: u64, what: &str) -> Result<()> {
    // SAFETY: `buf` is a valid writable slice of the given length.
    let r = unsafe {
        libc::pread(
            fd.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            off as i64,
        )
    };
    if r != buf.len() as isize {
        return Err(EnvError::last_os("pread", what.to_string()));
    }
    Ok(())
}

/// `pwrite` on a device fd (config space).
pub(crate) fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], off: u64, what: &str) -> Result<()> {
    // SAFETY: `buf` is a valid readable slice of the given length.
    let r = unsafe {
        libc::pwrite(
            fd.as_raw_fd(),
            buf.as_ptr() as *const libc::c_void,
            buf.len(),
            off as i64,
        )
    };
    if r != buf.len() as isize {
        return Err(EnvError::last_os("pwrite", what.to_string()));
    }
    Ok(())
}

/// Maps `len` bytes of `fd` at `off`, shared, read-write.
pub(crate) fn mmap_shared(fd: BorrowedFd<'_>, len: usize, off: u64, what: &str) -> Result<*mut u8> {
    // SAFETY: a new shared mapping chosen by the kernel; it replaces nothing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            off as i64,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(EnvError::last_os("mmap", what.to_string()));
    }
    Ok(p as *mut u8)
}

/// Unmaps a mapping made by [`mmap_shared`].
///
/// # Safety
/// `[ptr, ptr + len)` must be a mapping from [`mmap_shared`] that nothing
/// uses any more.
pub(crate) unsafe fn munmap(ptr: *mut u8, len: usize) {
    // SAFETY: the caller guarantees the mapping is ours and unused.
    unsafe { libc::munmap(ptr as *mut libc::c_void, len) };
}

/// Takes ownership of a raw fd returned by an ioctl.
pub(crate) fn owned_fd(fd: i32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was just returned by the kernel to us and nothing else owns it.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}
