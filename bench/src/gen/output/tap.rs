//! Raw frames into a TAP device, for QEMU's `-netdev tap`.
//!
//! QEMU holds the TAP's file descriptor; frames the host *transmits* on the TAP interface are
//! what the guest receives. [`TapOutput`] transmits on it with an `AF_PACKET` socket bound
//! to the interface (protocol 0: it receives nothing), one `send` per frame, frames built in
//! place by the [`FrameWriter`] exactly as for the dgram and stream outputs. The interface
//! must be up, and must belong to the generator's network namespace: run the generator with
//! `ip netns exec NS` when the TAP lives in a namespace of its own (which keeps the host's
//! own traffic off it). Needs `CAP_NET_RAW`.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::frame::{FrameConfig, FrameWriter};
use super::{write_frames, Batch, Output, MAX_BATCH, PREFIX_LEN};

/// Frames to a TAP (or any) interface through `AF_PACKET`.
pub struct TapOutput {
    socket: OwnedFd,
    ifname: String,
    frames: FrameWriter,
}

/// The interface index of `ifname` in this network namespace (`/sys/class/net`, which
/// `ip netns exec` remounts for the namespace).
pub fn interface_index(ifname: &str) -> io::Result<i32> {
    if ifname.is_empty() || ifname.len() > 15 || ifname.contains('/') || ifname.starts_with('.') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {ifname:?}"),
        ));
    }
    let text =
        std::fs::read_to_string(format!("/sys/class/net/{ifname}/ifindex")).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("no interface {ifname} in this namespace: {e}"),
            )
        })?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::other(format!("bad ifindex for {ifname}: {text:?}")))
}

impl TapOutput {
    /// A socket transmitting on `ifname`.
    pub fn new(ifname: &str, frames: FrameConfig) -> io::Result<Self> {
        let index = interface_index(ifname)?;
        // SAFETY: socket(2) with constant arguments; it returns a new descriptor or -1.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let addr = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            // Receive nothing (protocol 0); the interface is all that matters for sending.
            sll_protocol: 0,
            sll_ifindex: index,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        // SAFETY: `addr` is a fully initialised sockaddr_ll that lives across the call, and
        // the length passed is its size; bind(2) only reads it.
        let rc = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            socket,
            ifname: ifname.to_string(),
            frames: FrameWriter::new(frames),
        })
    }

    fn send_frame(&self, frame: &[u8]) -> io::Result<()> {
        loop {
            // SAFETY: `frame` is a valid, initialised byte slice for the whole call; send(2)
            // only reads `frame.len()` bytes from it.
            let rc = unsafe {
                libc::send(
                    self.socket.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                )
            };
            if rc >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => {}
                // The interface queue is full: wait for it rather than drop.
                Some(libc::EAGAIN | libc::ENOBUFS) => {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
                _ => {
                    return Err(io::Error::new(
                        err.kind(),
                        format!("sending on {}: {err}", self.ifname),
                    ))
                }
            }
        }
    }
}

impl Output for TapOutput {
    fn send(&mut self, batch: &mut Batch) -> io::Result<()> {
        let lens = write_frames(&mut self.frames, batch)?;
        for (i, len) in lens.iter().enumerate().take(batch.len().min(MAX_BATCH)) {
            let frame = batch
                .slot(i)
                .get(PREFIX_LEN..PREFIX_LEN + len)
                .unwrap_or_default();
            self.send_frame(frame)?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let c = self.frames.config();
        format!(
            "frames via tap {} (to {} at {})",
            self.ifname, c.dst, c.dst_mac
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_an_index_and_junk_does_not() {
        assert!(interface_index("lo").unwrap() >= 1);
        assert!(interface_index("no-such-if0").is_err());
        assert!(interface_index("").is_err());
        assert!(interface_index("..").is_err());
        assert!(interface_index("a/b").is_err());
    }
}
