//! The two NICs the image drives, each its real driver over host memory with a simulated
//! device that fills the receive ring the way the hardware does.
//!
//! - virtio-net: the driver (`netoops-virtio-net`) over a modern transport whose device side
//!   is the crate's split-ring model: the device takes the next buffer from the available
//!   ring, writes the 12-byte `virtio_net_hdr` (`num_buffers` 1) and the frame into it, then
//!   the used ring entry and the used index.
//! - e1000e: the driver (`netoops-e1000`, 82574L) over the crate's device model: the device
//!   writes the frame to the buffer address of the descriptor at RDH, writes back length and
//!   status (DD, EOP), and advances RDH while it differs from the RDT the driver wrote.
//!
//! The device's work ([`SimNic::fill`]) is what a NIC's DMA engine does, not the CPU: the
//! benchmark keeps it out of every figure.

use std::cell::Cell;

use netoops_driver_platform::host::HostPlatform;
use netoops_e1000::model::DeviceModel;
use netoops_e1000::{Model, E1000};
use netoops_nic::Device;
use netoops_virtio_net::net::features;
use netoops_virtio_net::queue::model::RingModel;
use netoops_virtio_net::queue::{QueueAddresses, QueueSetup};
use netoops_virtio_net::transport::status;
use netoops_virtio_net::{Transport, TransportError, VirtioNet};

/// A driver with its device.
pub trait SimNic {
    /// The driver.
    type Driver: Device;
    /// Short name for tables and JSON.
    fn name(&self) -> &'static str;
    /// The driver, for receive and poll.
    fn driver(&mut self) -> &mut Self::Driver;
    /// Device side: receives `frames` into posted buffers, in order; returns how many fit
    /// (fewer when the ring has no free buffer).
    fn fill<'a>(&mut self, frames: impl Iterator<Item = &'a [u8]>) -> usize;
    /// Housekeeping between timed runs (nothing on the data path).
    fn settle(&mut self) {}
}

/// Register state of a modern virtio-net device; the rings are the [`RingModel`]'s.
pub struct SimTransport {
    status: u8,
    queues: [Option<(u16, QueueAddresses)>; 2],
    notifies: [Cell<u64>; 2],
}

/// The queue size QEMU gives virtio-net by default.
const VIRTIO_QUEUE: u16 = 256;

impl Transport for SimTransport {
    fn reset(&mut self) {
        self.status = 0;
        self.queues = [None; 2];
    }
    fn status(&self) -> u8 {
        self.status
    }
    fn set_status(&mut self, status: u8) {
        self.status = status;
    }
    fn device_features(&mut self) -> u64 {
        features::VERSION_1 | features::NET_MAC | features::NET_STATUS | features::NET_MRG_RXBUF
    }
    fn set_driver_features(&mut self, _features: u64) {}
    fn max_queue_size(&mut self, queue: u16) -> u16 {
        if queue < 2 {
            VIRTIO_QUEUE
        } else {
            0
        }
    }
    fn setup_queue(&mut self, setup: QueueSetup) -> Result<(), TransportError> {
        let QueueSetup { queue, size, addrs } = setup;
        let q = self
            .queues
            .get_mut(usize::from(queue))
            .ok_or(TransportError::QueueUnavailable(queue))?;
        *q = Some((size, addrs));
        Ok(())
    }
    fn notify(&self, queue: u16) {
        if let Some(c) = self.notifies.get(usize::from(queue)) {
            c.set(c.get() + 1);
        }
    }
    fn config_generation(&self) -> u32 {
        0
    }
    fn read_config_u8(&self, offset: usize) -> u8 {
        [0x52, 0x54, 0, 0x12, 0x34, 0x56]
            .get(offset)
            .copied()
            .unwrap_or(0)
    }
    fn read_config_u16(&self, offset: usize) -> u16 {
        // Link up.
        u16::from(offset == 6)
    }
    fn is_legacy(&self) -> bool {
        false
    }
}

/// virtio-net: the driver and the device side of its receive queue.
pub struct SimVirtio {
    nic: VirtioNet<SimTransport>,
    rx: RingModel,
}

impl SimVirtio {
    /// Brings the driver up over a fresh device.
    pub fn new() -> Self {
        let t = SimTransport {
            status: 0,
            queues: [None; 2],
            notifies: [Cell::new(0), Cell::new(0)],
        };
        let nic = VirtioNet::new(t, &HostPlatform, netoops_virtio_net::Config::default())
            .expect("virtio-net comes up over the model");
        assert_ne!(nic.transport().status & status::DRIVER_OK, 0);
        let (size, addrs) = nic.transport().queues[0].expect("receive queue set up");
        Self {
            nic,
            rx: RingModel::new(addrs, size),
        }
    }
}

impl Default for SimVirtio {
    fn default() -> Self {
        Self::new()
    }
}

impl SimNic for SimVirtio {
    type Driver = VirtioNet<SimTransport>;
    fn name(&self) -> &'static str {
        "virtio-net"
    }
    fn driver(&mut self) -> &mut Self::Driver {
        &mut self.nic
    }
    fn fill<'a>(&mut self, frames: impl Iterator<Item = &'a [u8]>) -> usize {
        // virtio_net_hdr_v1: no offloads, num_buffers = 1.
        const HDR: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        let mut n = 0;
        for frame in frames {
            let Some((id, desc)) = self.rx.pop_avail() else {
                break;
            };
            RingModel::write_buffer(desc.addr, &HDR);
            RingModel::write_buffer(desc.addr + HDR.len() as u64, frame);
            self.rx
                .push_used(u32::from(id), (HDR.len() + frame.len()) as u32);
            n += 1;
        }
        n
    }
}

/// e1000e (82574L): the driver over the device model.
pub struct SimE1000 {
    nic: E1000<DeviceModel>,
}

impl SimE1000 {
    /// Brings the driver up over a fresh 82574L model with the image's ring settings.
    pub fn new() -> Self {
        let nic = E1000::from_registers(
            Model::I82574L,
            DeviceModel::new(Model::I82574L),
            &HostPlatform,
            netoops_e1000::Config::default(),
        )
        .expect("e1000e comes up over the model");
        Self { nic }
    }
}

impl Default for SimE1000 {
    fn default() -> Self {
        Self::new()
    }
}

impl SimNic for SimE1000 {
    type Driver = E1000<DeviceModel>;
    fn name(&self) -> &'static str {
        "e1000e"
    }
    fn driver(&mut self) -> &mut Self::Driver {
        &mut self.nic
    }
    fn fill<'a>(&mut self, frames: impl Iterator<Item = &'a [u8]>) -> usize {
        let dev = self.nic.registers();
        let mut n = 0;
        for frame in frames {
            if !dev.deliver(frame) {
                break;
            }
            n += 1;
        }
        n
    }
    fn settle(&mut self) {
        self.nic.registers().forget_writes();
    }
}
