//! The netoops UDP socket: batched, non-blocking receive with `recvmmsg(2)`.
//!
//! [`BatchSocket`] owns a bound UDP socket and one batch of [`BATCH`] receive buffers of
//! [`BUF_LEN`] bytes, allocated once: receiving never allocates. Each call to
//! [`BatchSocket::recv_batch`] is one `recvmmsg` with `MSG_DONTWAIT` and hands every datagram
//! to a callback as `(source, bytes)` borrowed from the batch. Datagrams longer than a buffer
//! (`MSG_TRUNC`) and sources of an unknown address family are counted and skipped. The kernel's
//! own drops (receive buffer full) are read with `SO_MEMINFO`, so loss before the relay is
//! visible too.
//!
//! This module is the only place in the relay with `unsafe` code: the `libc` calls and the
//! reading of the addresses the kernel wrote.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::ptr;

use libc::{c_int, c_uint, socklen_t};

/// Datagrams received per `recvmmsg` call.
pub const BATCH: usize = 64;
/// Bytes per receive buffer: every netoops datagram (at most 1412 bytes) fits.
pub const BUF_LEN: usize = 2048;

/// Counters of the socket layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketStats {
    /// `recvmmsg` calls that returned datagrams.
    pub batches: u64,
    /// Datagrams handed to the callback.
    pub datagrams: u64,
    /// Datagrams longer than [`BUF_LEN`], dropped.
    pub truncated: u64,
    /// Datagrams whose source address was not IPv4 or IPv6, dropped.
    pub unknown_source: u64,
    /// `recvmmsg` calls that failed with something other than "would block".
    pub errors: u64,
}

/// What the kernel says about the socket (`SO_MEMINFO`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Bytes queued for the relay now.
    pub queued: u32,
    /// Receive buffer size in bytes.
    pub rcvbuf: u32,
    /// Datagrams the kernel dropped on this socket since it was opened (buffer full).
    pub drops: u32,
}

/// One batch of receive buffers and the `recvmmsg` headers pointing into them.
struct Batch {
    buffers: Vec<u8>,
    iovecs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    headers: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new() -> Box<Batch> {
        // SAFETY: iovec, sockaddr_storage and mmsghdr are plain C structs (integers and raw
        // pointers) for which all-zero bytes are a valid value.
        let (iovec, name, header) = unsafe {
            (
                std::mem::zeroed::<libc::iovec>(),
                std::mem::zeroed::<libc::sockaddr_storage>(),
                std::mem::zeroed::<libc::mmsghdr>(),
            )
        };
        Box::new(Batch {
            buffers: vec![0u8; BATCH * BUF_LEN],
            iovecs: vec![iovec; BATCH],
            names: vec![name; BATCH],
            headers: vec![header; BATCH],
        })
    }

    /// Points every header at its buffer and address slot again (the kernel rewrites
    /// `msg_namelen`, `msg_flags` and `msg_len` on every call).
    fn prepare(&mut self) {
        let buffers = self.buffers.as_mut_ptr();
        let iovecs = self.iovecs.as_mut_ptr();
        let names = self.names.as_mut_ptr();
        for i in 0..BATCH {
            self.iovecs[i] = libc::iovec {
                iov_base: buffers.wrapping_add(i * BUF_LEN).cast(),
                iov_len: BUF_LEN,
            };
            let h = &mut self.headers[i];
            h.msg_len = 0;
            h.msg_hdr.msg_name = names.wrapping_add(i).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as socklen_t;
            h.msg_hdr.msg_iov = iovecs.wrapping_add(i);
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
        }
    }
}

/// A bound, non-blocking UDP socket with a receive batch. See the module documentation.
pub struct BatchSocket {
    socket: UdpSocket,
    batch: Box<Batch>,
    stats: SocketStats,
    forced_buffer: bool,
}

impl BatchSocket {
    /// Binds `addr`, makes the socket non-blocking and asks for a receive buffer of
    /// `recv_buffer` bytes: `SO_RCVBUFFORCE` first (needs CAP_NET_ADMIN), else `SO_RCVBUF`
    /// (capped by `net.core.rmem_max`).
    pub fn bind(addr: SocketAddr, recv_buffer: usize) -> io::Result<BatchSocket> {
        let socket = UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        let fd = socket.as_raw_fd();
        // The kernel doubles the value it is given; stay clear of overflow.
        let size = c_int::try_from(recv_buffer)
            .unwrap_or(c_int::MAX)
            .min(c_int::MAX / 2);
        let forced_buffer =
            set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_ok() || {
                set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, size)?;
                false
            };
        Ok(BatchSocket {
            socket,
            batch: Batch::new(),
            stats: SocketStats::default(),
            forced_buffer,
        })
    }

    /// The address actually bound (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The socket's file descriptor, for readiness polling.
    pub fn raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Whether the buffer size was forced past `net.core.rmem_max`.
    pub fn forced_buffer(&self) -> bool {
        self.forced_buffer
    }

    /// Socket-layer counters.
    pub fn stats(&self) -> SocketStats {
        self.stats
    }

    /// The kernel's view of the socket: queued bytes, buffer size, drops.
    pub fn kernel_counters(&self) -> io::Result<KernelCounters> {
        // struct sk_meminfo: u32 values indexed by SK_MEMINFO_* (include/uapi/linux/sock_diag.h).
        const RMEM_ALLOC: usize = 0;
        const RCVBUF: usize = 1;
        const DROPS: usize = 8;
        let mut info = [0u32; 9];
        let mut len = size_of::<[u32; 9]>() as socklen_t;
        // SAFETY: `info` is a live, writable array of `len` bytes and `len` is a valid pointer
        // to its size; the kernel writes at most `len` bytes and updates `len`. The fd is the
        // socket this struct owns.
        let rc = unsafe {
            libc::getsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MEMINFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(KernelCounters {
            queued: info[RMEM_ALLOC],
            rcvbuf: info[RCVBUF],
            drops: info[DROPS],
        })
    }

    /// Receives up to [`BATCH`] datagrams without waiting and calls `each(source, bytes)` for
    /// every one. Returns how many datagrams the kernel handed over; 0 means the socket is
    /// drained (would block).
    pub fn recv_batch(&mut self, mut each: impl FnMut(SocketAddr, &[u8])) -> io::Result<usize> {
        let fd = self.socket.as_raw_fd();
        let batch = &mut *self.batch;
        let n = loop {
            batch.prepare();
            // SAFETY: every header points at one iovec, one 2048-byte buffer and one
            // sockaddr_storage of `batch`, all allocated once and not moved or resized while
            // the call runs; `msg_namelen`/`iov_len` state their true sizes and there is no
            // control buffer. `BATCH` headers exist. The fd is the socket this struct owns.
            let rc = unsafe {
                libc::recvmmsg(
                    fd,
                    batch.headers.as_mut_ptr(),
                    BATCH as c_uint,
                    libc::MSG_DONTWAIT,
                    ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break rc as usize;
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::WouldBlock => return Ok(0),
                io::ErrorKind::Interrupted => continue,
                _ => {
                    self.stats.errors += 1;
                    return Err(err);
                }
            }
        };
        if n > 0 {
            self.stats.batches += 1;
        }
        for i in 0..n.min(BATCH) {
            let h = &batch.headers[i];
            if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                self.stats.truncated += 1;
                continue;
            }
            let Some(source) = socket_addr(&batch.names[i], h.msg_hdr.msg_namelen) else {
                self.stats.unknown_source += 1;
                continue;
            };
            let len = (h.msg_len as usize).min(BUF_LEN);
            let start = i * BUF_LEN;
            self.stats.datagrams += 1;
            each(source, &batch.buffers[start..start + len]);
        }
        Ok(n)
    }
}

fn set_int_option(fd: RawFd, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its exact size is passed; the kernel only reads it.
    // `fd` is a socket owned by the caller.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const c_int).cast(),
            size_of::<c_int>() as socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The source address the kernel wrote, IPv4-mapped IPv6 turned back into IPv4 (so allowlists
/// and collectors see one form per sender).
fn socket_addr(name: &libc::sockaddr_storage, len: socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match c_int::from(name.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the kernel wrote a sockaddr_in, and sockaddr_storage is
            // large and aligned enough to hold one.
            let a =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says the kernel wrote a sockaddr_in6, and sockaddr_storage is
            // large and aligned enough to hold one.
            let a =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            let port = u16::from_be(a.sin6_port);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    port,
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn drain(socket: &mut BatchSocket, want: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < want && Instant::now() < deadline {
            let n = socket
                .recv_batch(|src, bytes| got.push((src, bytes.to_vec())))
                .unwrap();
            if n == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        got
    }

    #[test]
    fn receives_batches_with_sources_and_exact_lengths() {
        let mut socket = BatchSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let to = socket.local_addr().unwrap();
        let a = UdpSocket::bind("127.0.0.7:0").unwrap();
        let b = UdpSocket::bind("127.0.0.8:0").unwrap();
        let total = BATCH * 2 + 5;
        for i in 0..total {
            let from = if i % 2 == 0 { &a } else { &b };
            let len = 1 + i * 7 % 1412;
            from.send_to(&vec![i as u8; len], to).unwrap();
        }
        let got = drain(&mut socket, total);
        assert_eq!(got.len(), total);
        for (i, (src, bytes)) in got.iter().enumerate() {
            let from = if i % 2 == 0 { &a } else { &b };
            assert_eq!(*src, from.local_addr().unwrap());
            assert_eq!(bytes.len(), 1 + i * 7 % 1412);
            assert!(bytes.iter().all(|&x| x == i as u8));
        }
        assert!(socket.stats().batches >= 3);
        assert_eq!(socket.stats().datagrams, total as u64);
        assert_eq!(
            socket.recv_batch(|_, _| panic!("nothing queued")).unwrap(),
            0
        );
    }

    #[test]
    fn oversized_datagrams_are_counted_and_skipped() {
        let mut socket = BatchSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let to = socket.local_addr().unwrap();
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(&[1u8; BUF_LEN + 1], to).unwrap();
        s.send_to(&[2u8; BUF_LEN], to).unwrap();
        let got = drain(&mut socket, 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.len(), BUF_LEN);
        assert_eq!(socket.stats().truncated, 1);
    }

    #[test]
    fn ipv4_mapped_sources_come_out_as_ipv4() {
        let Ok(mut socket) = BatchSocket::bind("[::]:0".parse().unwrap(), 1 << 20) else {
            return; // no IPv6 on this machine
        };
        let port = socket.local_addr().unwrap().port();
        let s = UdpSocket::bind("127.0.0.9:0").unwrap();
        s.send_to(b"x", ("127.0.0.1", port)).unwrap();
        let got = drain(&mut socket, 1);
        assert_eq!(got[0].0, s.local_addr().unwrap());
    }

    #[test]
    fn kernel_counters_report_the_buffer_and_the_queue() {
        let socket = BatchSocket::bind("127.0.0.1:0".parse().unwrap(), 4 << 20).unwrap();
        let k = socket.kernel_counters().unwrap();
        assert!(k.rcvbuf >= 256 * 1024, "{k:?}");
        assert_eq!((k.queued, k.drops), (0, 0));
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(&[0u8; 1000], socket.local_addr().unwrap())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while socket.kernel_counters().unwrap().queued == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(socket.kernel_counters().unwrap().queued >= 1000);
    }
}
