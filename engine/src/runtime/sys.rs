//! Every `unsafe` syscall the engine makes, each behind a safe wrapper.
//!
//! The data path talks to sockets directly in two places: a non-blocking
//! `recv` into the shard's shared scratch buffer (so an idle connection owns
//! no read buffer) and a non-blocking `send` of a connection's queued frames
//! (one frame from its shared buffer, or several joined into one buffer);
//! with the io_uring driver, the flusher's sends of one loop turn go to
//! the kernel together through a [`SendRing`], and idle connections wait
//! for input as `POLL_ADD`s on a [`PollRing`] instead of in a task each.
//! Listeners are plain `socket2` sockets with `SO_REUSEPORT`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::{Domain, Protocol, Socket, Type};

/// Binds a TCP listener with `SO_REUSEPORT` (and `SO_REUSEADDR`), so every
/// shard can bind the same port and the kernel spreads accepts over them.
pub fn reuseport_listener(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Options every accepted client socket needs, set once on its listener:
/// Linux copies a listener's `TCP_NODELAY` and `SO_SNDBUF` (with the lock
/// that stops auto-tuning) to each socket it accepts, which saves two
/// `setsockopt` calls per connection. `send_buffer` 0 leaves the kernel's
/// auto-tuned buffer.
pub fn set_accepted_options(
    listener: &std::net::TcpListener,
    send_buffer: usize,
) -> io::Result<()> {
    let sock = socket2::SockRef::from(listener);
    sock.set_nodelay(true)?;
    if send_buffer > 0 {
        // Bounds what a slow consumer holds in the kernel (the rest of its
        // backlog is in its queue, under max_outbound_bytes).
        sock.set_send_buffer_size(send_buffer)?;
    }
    Ok(())
}

/// Fails with `AddrInUse` when another socket already listens on `addr`.
///
/// `SO_REUSEPORT` would let a second ringcast (same user) bind the port
/// silently and take half the connections; a probe bound with
/// `SO_REUSEADDR` only is refused by a live listener but not by
/// connections lingering in TIME_WAIT.
pub fn ensure_not_listening(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into())
}

/// Non-blocking receive into `buf`. `Ok(0)` is end of stream; `WouldBlock`
/// means nothing is there now.
pub fn recv_nonblocking(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid, exclusively borrowed region of `buf.len()`
    // bytes for the duration of the call; `fd` is owned by the caller's live
    // socket. recv never writes past `len`.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Non-blocking send of `buf`; returns how many bytes the kernel took
/// (possibly fewer than offered). `WouldBlock` when the socket buffer is
/// full. Never raises SIGPIPE.
pub fn send_nonblocking(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid region of `buf.len()` bytes, only read by the
    // kernel during the call; `fd` is owned by the caller's live socket.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Many non-blocking sends in one kernel entry: a small io_uring of the
/// shard's own, used by the io_uring driver's flusher. Each send is queued
/// as a `SEND` entry with `MSG_DONTWAIT` (so the kernel completes it at
/// once, with `EAGAIN` when the socket is full, instead of waiting for
/// room), and [`SendRing::send_all`] enters the kernel once for all of
/// them and returns only when every one has completed.
pub struct SendRing {
    ring: io_uring::IoUring,
}

impl SendRing {
    /// A ring for up to `entries` sends per call (a power of two).
    pub fn new(entries: u32) -> io::Result<Self> {
        Ok(SendRing {
            ring: io_uring::IoUring::new(entries)?,
        })
    }

    /// How many sends one [`SendRing::send_all`] takes at most.
    pub fn capacity(&self) -> usize {
        self.ring.params().sq_entries() as usize
    }

    /// Sends `buf[range]` on each `fd` of `sends` (at most
    /// [`capacity`](Self::capacity) of them); `results[i]` gets what the
    /// `i`th send did: the bytes the kernel took (possibly fewer than
    /// offered), or its error (`WouldBlock` when the socket is full). One
    /// `io_uring_enter` for the lot unless a signal interrupts it. Never
    /// raises SIGPIPE.
    pub fn send_all(
        &mut self,
        buf: &[u8],
        sends: &[(RawFd, std::ops::Range<usize>)],
        results: &mut Vec<io::Result<usize>>,
    ) -> io::Result<()> {
        results.clear();
        if sends.is_empty() {
            return Ok(());
        }
        if sends.len() > self.capacity() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "more sends than the ring has entries",
            ));
        }
        {
            let mut sq = self.ring.submission();
            for (i, (fd, range)) in sends.iter().enumerate() {
                let part = &buf[range.clone()];
                let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
                let entry =
                    io_uring::opcode::Send::new(io_uring::types::Fd(*fd), part.as_ptr(), len)
                        .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                        .build()
                        .user_data(i as u64);
                // SAFETY: the entry points into `buf`, which is borrowed for
                // this whole call, and this call does not return before the
                // kernel completed every entry it queued (the wait below):
                // the kernel only reads the region while `buf` is alive.
                // There is room: the ring is empty between calls and
                // `sends` fits in it (checked above).
                if unsafe { sq.push(&entry) }.is_err() {
                    return Err(io::Error::other("send ring full"));
                }
            }
        }
        results.resize_with(sends.len(), || Ok(0));
        let mut done = 0;
        while done < sends.len() {
            match self.ring.submit_and_wait(sends.len() - done) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            for cqe in self.ring.completion() {
                let Some(slot) = results.get_mut(cqe.user_data() as usize) else {
                    continue;
                };
                *slot = match cqe.result() {
                    r if r >= 0 => Ok(r as usize),
                    r => Err(io::Error::from_raw_os_error(-r)),
                };
                done += 1;
            }
        }
        Ok(())
    }
}

/// Readiness waits of idle connections on a small io_uring of the shard's
/// own: one `POLL_ADD` per waiting socket, no task and no buffer per
/// connection. [`PollRing::arm`] queues a wait (one-shot: it completes
/// once, when the socket has input, end of stream or an error);
/// [`PollRing::disarm`] queues its cancellation; [`PollRing::submit`]
/// hands what was queued to the kernel in one entry; [`PollRing::reap`]
/// collects the completions, a read of shared memory. The ring's own
/// descriptor is readable while completions wait ([`PollRing::waiter`]),
/// so the shard's runtime sleeps on it like on any socket.
pub struct PollRing {
    ring: io_uring::IoUring,
}

/// The `user_data` of cancellations: their own completions are ignored.
const DISARM_TAG: u64 = u64::MAX;

impl PollRing {
    /// A ring for `entries` queued waits per submission (a power of two;
    /// more are submitted early, see [`PollRing::arm`]). Waits in the
    /// kernel are not bounded by it.
    pub fn new(entries: u32) -> io::Result<Self> {
        let build = |coop: bool| {
            let mut b = io_uring::IoUring::builder();
            b.setup_cqsize(entries.saturating_mul(8));
            if coop {
                b.setup_coop_taskrun();
            }
            b.build(entries)
        };
        // COOP_TASKRUN (Linux 5.19+): a wait's completion is posted when the
        // shard next enters the kernel, not by interrupting it.
        let ring = build(true).or_else(|_| build(false))?;
        Ok(PollRing { ring })
    }

    /// Queues a wait for input (or end of stream, or an error) on `fd`,
    /// completing with `token`. Submits what is queued first if the
    /// submission queue is full.
    pub fn arm(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        let events = (libc::POLLIN | libc::POLLRDHUP | libc::POLLERR | libc::POLLHUP) as u32;
        let entry = io_uring::opcode::PollAdd::new(io_uring::types::Fd(fd), events)
            .build()
            .user_data(token);
        self.push(&entry)
    }

    /// Queues the cancellation of the wait armed with `token`; its
    /// completion then arrives with `-ECANCELED` (or not at all, if it
    /// had completed already).
    pub fn disarm(&mut self, token: u64) -> io::Result<()> {
        let entry = io_uring::opcode::PollRemove::new(token)
            .build()
            .user_data(DISARM_TAG);
        self.push(&entry)
    }

    fn push(&mut self, entry: &io_uring::squeue::Entry) -> io::Result<()> {
        if self.ring.submission().is_full() {
            self.submit()?;
        }
        // SAFETY: poll and poll-remove entries carry no pointers (a
        // descriptor, an event mask, a token), so nothing the kernel reads
        // later can dangle; a descriptor closed before its wait completes
        // stays open in the kernel until the wait is cancelled or completes.
        unsafe { self.ring.submission().push(entry) }
            .map_err(|_| io::Error::other("poll ring full"))
    }

    /// Whether the kernel must be entered: waits or cancellations are
    /// queued, or completions overflowed the completion queue (the kernel
    /// keeps them aside, and everything after them, until an entry
    /// flushes them; the ring's descriptor stays readable meanwhile).
    pub fn needs_submit(&mut self) -> bool {
        let sq = self.ring.submission();
        !sq.is_empty() || sq.cq_overflow()
    }

    /// Hands everything queued to the kernel (one `io_uring_enter`; it also
    /// flushes completions that overflowed the completion queue).
    pub fn submit(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// The completed waits since last asked: `(token, result)`, result
    /// being the poll's event mask, or a negative errno (`-ECANCELED` for
    /// a cancelled wait). Cancellations' own completions are left out.
    pub fn reap(&mut self, out: &mut Vec<(u64, i32)>) {
        for cqe in self.ring.completion() {
            if cqe.user_data() != DISARM_TAG {
                out.push((cqe.user_data(), cqe.result()));
            }
        }
    }

    /// A second descriptor of the ring as a monoio stream, only to await
    /// its readability (`readable()`: completions are waiting). The type
    /// is monoio's Unix stream because monoio has no readiness wait for a
    /// bare descriptor; nothing is ever read from or written to it.
    pub fn waiter(&self) -> io::Result<monoio::net::UnixStream> {
        use std::os::fd::AsRawFd;
        // SAFETY: the ring's descriptor is open for as long as `self` is,
        // which covers this call; only a duplicate (a new descriptor we
        // own) leaves it.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.ring.as_raw_fd()) };
        let owned = borrowed.try_clone_to_owned()?;
        monoio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(owned))
    }
}

/// `shutdown(2)` on a socket: wakes any reader with end-of-stream. Errors
/// (e.g. already disconnected) are ignored; there is nothing to do about them.
pub fn shutdown_socket(fd: RawFd, how: std::net::Shutdown) {
    let how = match how {
        std::net::Shutdown::Read => libc::SHUT_RD,
        std::net::Shutdown::Write => libc::SHUT_WR,
        std::net::Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: shutdown on a socket fd owned by the caller has no memory effects.
    unsafe {
        libc::shutdown(fd, how);
    }
}

/// A second descriptor of the socket `fd` (`F_DUPFD_CLOEXEC`), as a std
/// stream another shard can take over; the caller keeps (and closes) its
/// own. The two share the open file and its flags (non-blocking).
pub fn dup_stream(fd: RawFd) -> io::Result<std::net::TcpStream> {
    // SAFETY: the caller owns the open socket `fd` for the whole call; the
    // borrow ends when this function returns, and only a duplicate of it
    // (a new descriptor we own) leaves.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    Ok(std::net::TcpStream::from(borrowed.try_clone_to_owned()?))
}

/// The process's `RLIMIT_NOFILE` as (soft, hard).
pub fn open_file_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer for getrlimit.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft open-file limit to the hard limit (what servers do at
/// start); returns the new soft limit.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let (soft, hard) = open_file_limit()?;
    if soft >= hard {
        return Ok(soft);
    }
    let lim = libc::rlimit {
        rlim_cur: hard as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: `lim` is a valid in-pointer for setrlimit.
    let r = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(hard)
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`):
/// later page faults map 4 KiB pages even where the allocator asked for
/// huge ones.
pub fn disable_transparent_huge_pages() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) only sets a flag on the
    // process's memory descriptor; no pointers are passed.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A global allocator wrapper that counts live bytes and allocations into
/// [`crate::ops::alloc_count`] (cargo feature `count-alloc`).
pub struct CountingAlloc<A>(pub A);

// SAFETY: every call forwards to the wrapped allocator with the same
// arguments; the counters have no effect on the memory returned.
unsafe impl<A: std::alloc::GlobalAlloc> std::alloc::GlobalAlloc for CountingAlloc<A> {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        crate::ops::alloc_count::on_alloc(layout.size());
        // SAFETY: forwarded as received; the caller upholds alloc's contract.
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        crate::ops::alloc_count::on_dealloc(layout.size());
        // SAFETY: forwarded as received; `ptr` came from this allocator.
        unsafe { self.0.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        crate::ops::alloc_count::on_dealloc(layout.size());
        crate::ops::alloc_count::on_alloc(new_size);
        // SAFETY: forwarded as received; `ptr` came from this allocator.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

// mimalloc's C API (linked through the `mimalloc` crate, the binary's
// global allocator).
use mimalloc as _;
extern "C" {
    fn mi_collect(force: bool);
}

/// Asks mimalloc to give the calling thread's free memory back to the
/// system: empty pages go back to the OS now (`force`) or once their purge
/// delay expires. mimalloc purges only when it is called, so an idle shard
/// would otherwise keep what abusive clients made it allocate. Harmless
/// when mimalloc is not the global allocator (its heap is then empty).
pub fn allocator_collect(force: bool) {
    // SAFETY: mi_collect takes no pointers and may be called from any
    // thread at any time; it only works on mimalloc's own structures.
    unsafe { mi_collect(force) }
}

/// CPU time (user + system) consumed by the calling thread, in nanoseconds.
pub fn thread_cpu_time_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for clock_gettime.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    /// Reaps `want` completions (waiting up to `ms`), entering the kernel
    /// whenever it must.
    fn reap_for(ring: &mut PollRing, want: usize, ms: u64) -> Vec<(u64, i32)> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(ms);
        let mut got = Vec::new();
        while got.len() < want && std::time::Instant::now() < deadline {
            if ring.needs_submit() {
                ring.submit().unwrap();
            }
            ring.reap(&mut got);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        got
    }

    #[test]
    fn poll_ring_delivers_every_wait_past_a_full_completion_queue() {
        // 4 entries (32 completions): 100 sockets ready at once overflow it.
        let mut ring = PollRing::new(4).unwrap();
        let pairs: Vec<_> = (0..100)
            .map(|_| std::os::unix::net::UnixStream::pair().unwrap())
            .collect();
        for (i, (a, _)) in pairs.iter().enumerate() {
            ring.arm(a.as_raw_fd(), i as u64).unwrap();
        }
        ring.submit().unwrap();
        assert!(
            reap_for(&mut ring, 1, 100).is_empty(),
            "nothing is readable yet"
        );
        for (_, b) in &pairs {
            (&*b).write_all(b"x").unwrap();
        }
        let mut got = reap_for(&mut ring, 100, 5000);
        got.sort();
        assert_eq!(got.len(), 100, "{got:?}");
        for (i, (token, events)) in got.iter().enumerate() {
            assert_eq!(*token, i as u64);
            assert!(*events & libc::POLLIN as i32 != 0, "{events:#x}");
        }
        // One-shot: nothing more without a new arm.
        (&pairs[0].1).write_all(b"y").unwrap();
        assert!(reap_for(&mut ring, 1, 100).is_empty());
    }

    #[test]
    fn poll_ring_disarm_cancels_a_wait_and_end_of_stream_completes_one() {
        let mut ring = PollRing::new(8).unwrap();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (c, d) = std::os::unix::net::UnixStream::pair().unwrap();
        ring.arm(a.as_raw_fd(), 1).unwrap();
        ring.arm(c.as_raw_fd(), 2).unwrap();
        ring.disarm(1).unwrap();
        ring.submit().unwrap();
        assert_eq!(reap_for(&mut ring, 1, 5000), [(1, -libc::ECANCELED)]);
        drop(d);
        let got = reap_for(&mut ring, 1, 5000);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 2);
        assert!(
            got[0].1 & (libc::POLLRDHUP | libc::POLLHUP) as i32 != 0,
            "{got:?}"
        );
        drop(b);
    }

    #[test]
    fn nonblocking_send_and_recv_over_loopback() {
        let listener = reuseport_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        listener.set_nonblocking(false).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        let n = send_nonblocking(server.as_raw_fd(), b"hello world").unwrap();
        assert_eq!(n, 11);
        let mut got = [0u8; 11];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello world");

        let mut buf = [0u8; 8];
        let e = recv_nonblocking(server.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        client.write_all(b"ping").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(recv_nonblocking(server.as_raw_fd(), &mut buf).unwrap(), 4);
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(recv_nonblocking(server.as_raw_fd(), &mut buf).unwrap(), 0);
    }

    /// Three sockets in one kernel entry; one whose peer stopped reading
    /// reports `WouldBlock` (the call does not wait for room) and the
    /// others are unaffected.
    #[test]
    fn a_send_ring_sends_to_many_sockets_at_once() {
        let listener = reuseport_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        listener.set_nonblocking(false).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut pairs = Vec::new();
        for _ in 0..3 {
            let client = std::net::TcpStream::connect(addr).unwrap();
            let (server, _) = listener.accept().unwrap();
            pairs.push((client, server));
        }
        // Fill the third socket: its peer never reads.
        let full = pairs[2].1.as_raw_fd();
        socket2::SockRef::from(&pairs[2].1)
            .set_send_buffer_size(4096)
            .unwrap();
        let junk = vec![0u8; 1 << 16];
        while send_nonblocking(full, &junk).is_ok() {}

        let mut ring = SendRing::new(8).unwrap();
        assert_eq!(ring.capacity(), 8);
        let buf = b"helloworld!";
        let sends = [
            (pairs[0].1.as_raw_fd(), 0..5),
            (pairs[1].1.as_raw_fd(), 5..11),
            (full, 0..5),
        ];
        let mut results = Vec::new();
        ring.send_all(buf, &sends, &mut results).unwrap();
        assert_eq!(results[0].as_ref().unwrap(), &5);
        assert_eq!(results[1].as_ref().unwrap(), &6);
        let e = results[2].as_ref().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let mut got = [0u8; 5];
        pairs[0].0.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        let mut got = [0u8; 6];
        pairs[1].0.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"world!");

        // Reused: a closed peer is an error of its own.
        let (client, server) = pairs.remove(0);
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let gone = server.as_raw_fd();
        let mut failed = false;
        for _ in 0..3 {
            ring.send_all(buf, &[(gone, 0..11)], &mut results).unwrap();
            failed |= results[0].is_err();
        }
        assert!(failed, "a send to a reset peer fails");
        let too_many: Vec<_> = (0..9).map(|_| (gone, 0..1)).collect();
        assert!(ring.send_all(buf, &too_many, &mut results).is_err());
    }

    #[test]
    fn send_buffer_is_set() {
        let listener = reuseport_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(64 << 10)
            .unwrap();
        let got = socket2::SockRef::from(&server).send_buffer_size().unwrap();
        assert_eq!(got, 128 << 10, "Linux doubles SO_SNDBUF");
    }

    #[test]
    fn accepted_sockets_inherit_the_listeners_options() {
        let listener = reuseport_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        listener.set_nonblocking(false).unwrap();
        set_accepted_options(&listener, 64 << 10).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let sock = socket2::SockRef::from(&server);
        assert!(sock.nodelay().unwrap(), "TCP_NODELAY is inherited");
        assert_eq!(sock.send_buffer_size().unwrap(), 128 << 10, "SO_SNDBUF too");
        // And without a send buffer the kernel's own stays.
        let plain = reuseport_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        plain.set_nonblocking(false).unwrap();
        set_accepted_options(&plain, 0).unwrap();
        let _c = std::net::TcpStream::connect(plain.local_addr().unwrap()).unwrap();
        let (s, _) = plain.accept().unwrap();
        assert!(socket2::SockRef::from(&s).nodelay().unwrap());
        assert_ne!(
            socket2::SockRef::from(&s).send_buffer_size().unwrap(),
            128 << 10
        );
    }

    #[test]
    fn two_listeners_share_a_port() {
        let a = reuseport_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let port = a.local_addr().unwrap().port();
        let b = reuseport_listener(SocketAddr::from(([127, 0, 0, 1], port)), 16).unwrap();
        assert_eq!(b.local_addr().unwrap().port(), port);
    }

    #[test]
    fn a_live_listener_is_detected() {
        let a = reuseport_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = a.local_addr().unwrap();
        let e = ensure_not_listening(addr).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        drop(a);
        ensure_not_listening(addr).unwrap();
    }

    #[test]
    fn open_file_limit_is_readable() {
        let (soft, hard) = open_file_limit().unwrap();
        assert!(soft > 0 && soft <= hard);
    }
}
