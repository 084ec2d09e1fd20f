//! Small I/O helpers shared by the WebSocket sessions and the backend port.

use std::os::fd::AsRawFd;

use monoio::net::TcpStream;

use crate::runtime::sys;

/// Writes `data` fully with non-blocking sends, waiting for writability
/// when the socket is full (for answers written outside the shard's
/// flusher: handshakes, backend responses).
pub async fn write_all(stream: &TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    let fd = stream.as_raw_fd();
    while !data.is_empty() {
        match sys::send_nonblocking(fd, data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => stream.writable(false).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
