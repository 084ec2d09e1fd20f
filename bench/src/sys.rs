//! Raw syscalls for the benches: `write`/`writev`/`read` on file
//! descriptors, an `eventfd` and a Unix `socketpair`. Every `unsafe` block
//! of the bench crate is here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `writev(2)` of `iov`; returns bytes written.
pub fn writev(fd: &impl AsRawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    let cnt = libc::c_int::try_from(iov.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `iov` is a live slice of `cnt` iovecs whose buffers the caller
    // keeps alive for the duration of the call; the kernel only reads them.
    let n = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), cnt) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// An iovec pointing at `buf` (read-only use: `writev`/`sendmsg`).
pub fn iovec(buf: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    }
}

/// `write(2)`; returns bytes written.
pub fn write(fd: &impl AsRawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid readable slice for the call's duration.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `read(2)`; returns bytes read (0 at EOF).
pub fn read(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid writable slice for the call's duration.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A blocking `eventfd` counter starting at 0.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant flags.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to an eventfd counter (wakes a reader blocked on it).
pub fn eventfd_signal(fd: &impl AsRawFd) -> io::Result<()> {
    write(fd, &1u64.to_ne_bytes()).map(drop)
}

/// Blocks until the eventfd counter is non-zero, then resets it.
pub fn eventfd_wait(fd: &impl AsRawFd) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    read(fd, &mut buf)?;
    Ok(u64::from_ne_bytes(buf))
}

/// A connected pair of Unix stream sockets; the second is non-blocking
/// (it is drained with [`drain`]).
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid out-array of two ints.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by no one else.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on a valid fd with standard flags.
    let rc = unsafe { libc::fcntl(b.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((a, b))
}

/// Reads everything currently readable from a non-blocking `fd`.
pub fn drain(fd: &impl AsRawFd, scratch: &mut [u8]) -> usize {
    let mut total = 0;
    while let Ok(n) = read(fd, scratch) {
        if n == 0 {
            break;
        }
        total += n;
    }
    total
}
