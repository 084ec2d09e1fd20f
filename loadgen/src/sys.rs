//! The few system calls the loadgen needs that std does not wrap: file
//! limits, its own CPU time, and the socket option that lets many source
//! addresses share the ephemeral port range. All `unsafe` lives here.

use std::io;
use std::os::fd::AsRawFd;

/// The soft and hard open-file limits of this process.
pub fn fd_limits() -> io::Result<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid, writable rlimit for the duration of the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r.rlim_cur, r.rlim_max))
}

/// Raises the soft open-file limit to the hard one; returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let (cur, max) = fd_limits()?;
    if cur >= max {
        return Ok(cur);
    }
    let r = libc::rlimit {
        rlim_cur: max,
        rlim_max: max,
    };
    // SAFETY: `r` is a valid rlimit read by the call.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    if rc != 0 {
        return Ok(cur);
    }
    Ok(max)
}

/// CPU time (user + system) this process has used so far, in ns.
pub fn own_cpu_ns() -> u64 {
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable rusage for the duration of the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    if rc != 0 {
        return 0;
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Lets `bind(ip, 0)` defer the port choice to `connect`, so each source
/// address gets the whole ephemeral range (Linux `IP_BIND_ADDRESS_NO_PORT`).
pub fn set_bind_address_no_port(sock: &impl AsRawFd) -> io::Result<()> {
    const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;
    let one: libc::c_int = 1;
    // SAFETY: the fd is a live socket owned by `sock`; the option value
    // points at a c_int of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Kernel clock ticks per second, for /proc/PID/stat times.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Whether standard error is a terminal (progress bars go there).
pub fn stderr_is_tty() -> bool {
    use std::io::IsTerminal;
    io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_cpu_are_readable() {
        let (cur, max) = fd_limits().unwrap();
        assert!(cur > 0 && cur <= max);
        let a = own_cpu_ns();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(own_cpu_ns() >= a);
        assert!(clock_ticks() >= 100);
    }
}
