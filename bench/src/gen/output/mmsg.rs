//! `sendmmsg(2)` for a batch of UDP datagrams, optionally each from its own source address.
//!
//! The only unsafe code of the generator. A source address is set per message with an
//! `IP_PKTINFO` control message (`ipi_spec_dst`); Linux accepts any local address there, and all
//! of 127/8 is local on loopback, so one socket sends for every simulated machine.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::MAX_BATCH;

/// One control message carrying an `in_pktinfo`, laid out as `CMSG_SPACE` requires.
#[repr(C)]
#[derive(Clone, Copy)]
struct PktInfo {
    hdr: libc::cmsghdr,
    info: libc::in_pktinfo,
}

// SAFETY: CMSG_LEN and CMSG_SPACE are pure arithmetic on their argument.
const PKTINFO_LEN: u32 = unsafe { libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) };
// SAFETY: as above.
const PKTINFO_SPACE: u32 = unsafe { libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) };
// The struct's layout is exactly one aligned control message.
const _: () = assert!(size_of::<PktInfo>() == PKTINFO_SPACE as usize);

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn pktinfo(source: Ipv4Addr) -> PktInfo {
    PktInfo {
        hdr: libc::cmsghdr {
            cmsg_len: PKTINFO_LEN as usize,
            cmsg_level: libc::IPPROTO_IP,
            cmsg_type: libc::IP_PKTINFO,
        },
        info: libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from(source).to_be(),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        },
    }
}

/// Sends every message (bytes, optional source address) to `dst`, in order, retrying on
/// `EINTR` and waiting briefly on `EAGAIN`/`ENOBUFS`. At most [`MAX_BATCH`] messages per call;
/// extra ones are an `InvalidInput` error.
pub(crate) fn send_all(
    socket: &UdpSocket,
    dst: SocketAddrV4,
    msgs: &[(&[u8], Option<Ipv4Addr>)],
) -> io::Result<()> {
    let n = msgs.len();
    if n > MAX_BATCH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "batch too large",
        ));
    }
    let mut name = sockaddr_in(dst);
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_BATCH];
    let mut control = [pktinfo(Ipv4Addr::UNSPECIFIED); MAX_BATCH];
    for (i, (bytes, source)) in msgs.iter().enumerate() {
        // The kernel only reads through iov_base; *mut is what the C struct declares.
        iov[i].iov_base = bytes.as_ptr() as *mut libc::c_void;
        iov[i].iov_len = bytes.len();
        if let Some(src) = source {
            control[i] = pktinfo(*src);
        }
    }
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = std::array::from_fn(|i| libc::mmsghdr {
        msg_hdr: libc::msghdr {
            msg_name: (&raw mut name).cast(),
            msg_namelen: size_of::<libc::sockaddr_in>() as libc::socklen_t,
            msg_iov: &raw mut iov[i],
            msg_iovlen: 1,
            msg_control: if msgs.get(i).is_some_and(|m| m.1.is_some()) {
                (&raw mut control[i]).cast()
            } else {
                std::ptr::null_mut()
            },
            msg_controllen: if msgs.get(i).is_some_and(|m| m.1.is_some()) {
                PKTINFO_SPACE as usize
            } else {
                0
            },
            msg_flags: 0,
        },
        msg_len: 0,
    });
    let fd = socket.as_raw_fd();
    let mut done = 0;
    while done < n {
        let pending = &mut hdrs[done..n];
        // SAFETY: `pending` holds `pending.len()` initialised mmsghdr whose pointers refer to
        // `name`, `iov`, `control` (locals that outlive the call and are not moved after the
        // headers were built) and to the caller's byte slices, borrowed for this whole
        // function. The kernel reads those and writes only `msg_len` of each header.
        let rc =
            unsafe { libc::sendmmsg(fd, pending.as_mut_ptr(), pending.len() as libc::c_uint, 0) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN | libc::ENOBUFS) => {
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                _ => return Err(err),
            }
        }
        done += rc as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_message_carries_its_source() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let dst = match rx.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        let tx = UdpSocket::bind("0.0.0.0:0").unwrap();
        let port = tx.local_addr().unwrap().port();
        let a: &[u8] = b"from a";
        let b: &[u8] = b"from b";
        let c: &[u8] = b"default";
        let msgs = [
            (a, Some(Ipv4Addr::new(127, 9, 0, 1))),
            (b, Some(Ipv4Addr::new(127, 9, 3, 254))),
            (c, None),
        ];
        send_all(&tx, dst, &msgs).unwrap();
        let mut buf = [0u8; 64];
        for (want, src) in [
            (a, Ipv4Addr::new(127, 9, 0, 1)),
            (b, Ipv4Addr::new(127, 9, 3, 254)),
            (c, Ipv4Addr::LOCALHOST),
        ] {
            let (n, from) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], want);
            assert_eq!(from, SocketAddrV4::new(src, port).into());
        }
        let too_many = vec![(a, None); MAX_BATCH + 1];
        assert_eq!(
            send_all(&tx, dst, &too_many).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
