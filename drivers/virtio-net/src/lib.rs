//! Poll-mode virtio-net driver for the netoops relay.
//!
//! Owns one virtio network device: its transport registers, its receive and transmit
//! split virtqueues and their DMA buffers. It implements [`netoops_nic::Device`], lending
//! each received frame in place in its DMA slot and letting the caller write transmitted
//! frames straight into theirs. It never allocates after start-up, never uses interrupts,
//! never panics on device input (bad used entries are counted), and reaches the machine
//! only through the [`netoops_driver_platform`] traits (shared with the e1000 driver), so
//! it does not depend on the kernel.
//!
//! Layers, bottom up:
//! - [`netoops_driver_platform`]: what the kernel provides (DMA memory, MMIO mappings, PCI
//!   configuration access) and the bounds-checked volatile accessors all other code goes
//!   through.
//! - [`queue`]: one split virtqueue: descriptor table and rings, batched publishing.
//! - [`transport`]: modern virtio-pci and virtio-mmio (v1 legacy and v2), plus the
//!   `virtio_mmio.device=` command-line parser for QEMU's microvm machine.
//! - [`net`]: the device: feature negotiation, slot bookkeeping, tokens, counters.
//!
//! # Why our own split-virtqueue driver rather than `virtio-drivers` 0.13
//!
//! `virtio-drivers` is a good general driver, but its data path does not fit a relay that
//! must keep up with bursts from thousands of crashing machines:
//! - Queue size is a const generic shared by both queues, while the device decides the
//!   size at run time (QEMU: 256 by default, up to 1024 with `rx_queue_size`).
//! - `VirtIONetRaw::receive_begin` adds one buffer and notifies the device per buffer
//!   (when the device has not suppressed notifications); there is no way to post a batch
//!   with one index update and one notification.
//! - Every add and pop rewrites descriptors from a free list and calls `Hal::share`/`unshare`,
//!   and `pop_used` is `unsafe`: the caller must hand back the very buffers it added, so
//!   in-place parsing means juggling raw slices and tokens outside any lifetime.
//! - It brings in `log`, `zerocopy`, `bitflags`, `safe-mmio`, `enumn` and `thiserror` for
//!   the few hundred lines we need.
//!
//! Here every descriptor owns one fixed 2 KiB slot for the life of the driver, so the data
//! path only moves ring indices, buffers are reposted in batches, the device is notified
//! only when it asked to be (`VIRTQ_USED_F_NO_NOTIFY`), and receive tokens borrow the slot
//! directly. The ring code is about 200 lines of safe code over [`netoops_driver_platform::DmaRegion`],
//! tested on the host against a device-side model of the ring written from the spec, and
//! end to end under QEMU.
//!
//! Features negotiated: `VERSION_1` (modern transports), `MAC`, `STATUS`, `MRG_RXBUF`
//! (only so that a frame too big for one slot is split by the device, and then dropped
//! and counted here, instead of the device failing). No checksum or segmentation offloads:
//! frames arrive complete with checksums and leave as the caller wrote them.
#![no_std]

pub mod net;
pub mod queue;
pub mod transport;

pub use net::{Config, Error, VirtioNet, VirtioNetStats};
pub use transport::mmio::{cmdline_devices, MmioDevice, MmioTransport};
pub use transport::pci::{is_virtio_net, PciTransport};
pub use transport::{Transport, TransportError};
