//! The NICs the appliance drives, found and brought up at boot, behind one type.
//!
//! [`discover`] brings up every supported device: virtio-mmio devices announced on the
//! command line (`virtio_mmio.device=`, which QEMU's microvm appends with `acpi=off`) or in
//! the DSDT (microvm with ACPI on, [`crate::platform::aml`]), then virtio-net and
//! Intel 82540EM/82574L (e1000/e1000e) PCI functions in enumeration order. [`AnyNic`] is an enum over the concrete drivers, so the
//! board, the fast path and the stack adapter are written once against
//! [`netoops_nic::Device`] and compiled once; a new driver (e1000) is one more variant here
//! and in [`AnyNic::location`]'s match, nothing elsewhere.

use crate::virtio_hal::{KernelPlatform, PciFunction};
use alloc::vec::Vec;
use core::fmt;
use netoops_driver_platform::{MmioRegion, Platform};
use netoops_e1000::{E1000RxToken, E1000TxToken, E1000};
use netoops_nic::{Capabilities, Device, DeviceStats, LinkState, MacAddress, RxToken, TxToken};
use netoops_pci::PciAddress;
use netoops_virtio_net::net::{VirtioRxToken, VirtioTxToken};
use netoops_virtio_net::transport::mmio::WINDOW_LEN;
use netoops_virtio_net::{
    cmdline_devices, is_virtio_net, Config, MmioTransport, PciTransport, TransportError, VirtioNet,
};

/// Receive descriptors of an Intel NIC (the driver's default is 256). A dying kernel's
/// netconsole burst arrives at line rate while the relay may be busy (under TCG, translating
/// the code the burst runs for the first time); 1,024 buffers of 2 KiB (2 MiB) absorb four
/// times as much before the NIC drops.
const E1000_RX_RING: u16 = 1024;

/// One brought-up NIC of any supported kind.
pub enum AnyNic {
    /// virtio-net over modern virtio-pci.
    VirtioPci(VirtioNet<PciTransport>),
    /// virtio-net over virtio-mmio (v1 legacy or v2).
    VirtioMmio(VirtioNet<MmioTransport>),
    /// Intel 82540EM (QEMU `e1000`) or 82574L (`e1000e`).
    E1000(E1000),
}

/// Where a NIC sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// A PCI function.
    Pci(PciAddress),
    /// A virtio-mmio register window at this physical address.
    Mmio(u64),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Pci(a) => write!(f, "pci {a}"),
            Location::Mmio(base) => write!(f, "mmio {base:#x}"),
        }
    }
}

/// A NIC found at boot.
pub struct FoundNic {
    /// The driver.
    pub nic: AnyNic,
    /// Where it sits.
    pub location: Location,
}

impl AnyNic {
    /// The transport's short name: `pci`, `mmio-v1` or `mmio-v2` (`pci` for e1000).
    pub fn transport_name(&self) -> &'static str {
        match self {
            AnyNic::VirtioPci(_) | AnyNic::E1000(_) => "pci",
            AnyNic::VirtioMmio(n) if n.transport().version() == 1 => "mmio-v1",
            AnyNic::VirtioMmio(_) => "mmio-v2",
        }
    }

    /// The driver and its transport or model, e.g. `virtio-net/pci` or `e1000/82574l`.
    pub fn kind(&self) -> Kind {
        match self {
            AnyNic::E1000(n) => Kind("e1000", n.model().name()),
            _ => Kind("virtio-net", self.transport_name()),
        }
    }
}

/// A NIC's driver and its transport or model; displayed as `driver/transport`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind(pub &'static str, pub &'static str);

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}

/// Brings up every supported NIC; failures are reported through `report` and skipped.
pub fn discover(cmdline: &str, mut report: impl FnMut(fmt::Arguments<'_>)) -> Vec<FoundNic> {
    // Room up front: growing a vector is code run only here before `ready` (translation
    // under TCG); a machine with more NICs still fits.
    let mut found = Vec::with_capacity(4);
    // The command line's devices in its order, then the DSDT's that it did not list.
    let mut mmio: Vec<u64> = cmdline_devices(cmdline).map(|d| d.base).collect();
    for d in crate::platform::acpi_virtio_mmio_devices() {
        if !mmio.contains(&d.base) {
            mmio.push(d.base);
        }
    }
    for base in mmio {
        let Some(regs) = KernelPlatform.map_mmio(base, WINDOW_LEN) else {
            report(format_args!("mmio {base:#x}: cannot map"));
            continue;
        };
        match MmioTransport::new(regs) {
            Ok(t) => match VirtioNet::new(t, &KernelPlatform, Config::default()) {
                Ok(n) => found.push(FoundNic {
                    nic: AnyNic::VirtioMmio(n),
                    location: Location::Mmio(base),
                }),
                Err(e) => report(format_args!("mmio {base:#x}: bring-up failed: {e:?}")),
            },
            Err(TransportError::NotVirtioNet) => {}
            Err(e) => report(format_args!("mmio {base:#x}: {e:?}")),
        }
    }
    for dev in crate::platform::pci_devices() {
        let e1000 = netoops_e1000::is_supported(dev.vendor_id, dev.device_id);
        if e1000.is_none() && !is_virtio_net(dev.vendor_id, dev.device_id) {
            continue;
        }
        // Its driver switches memory decoding on, which a BAR at 0 must not get.
        if let Some(bar) = dev.unassigned_memory_bar() {
            report(format_args!(
                "pci {}: bar{bar} has no address: not brought up",
                dev.address
            ));
            continue;
        }
        if let Some(model) = e1000 {
            let mut config = netoops_e1000::Config::with_clock(crate::platform::now_micros);
            config.rx_ring_len = E1000_RX_RING;
            match E1000::with_config(&PciFunction(*dev), &KernelPlatform, config) {
                Ok(n) => found.push(FoundNic {
                    nic: AnyNic::E1000(n),
                    location: Location::Pci(dev.address),
                }),
                Err(e) => report(format_args!(
                    "pci {} {}: bring-up failed: {e:?}",
                    dev.address,
                    model.name()
                )),
            }
            continue;
        }
        let transport = match PciTransport::new(&PciFunction(*dev), &KernelPlatform) {
            Ok(t) => t,
            Err(e) => {
                report(format_args!("pci {}: {e:?}", dev.address));
                continue;
            }
        };
        match VirtioNet::new(transport, &KernelPlatform, Config::default()) {
            Ok(n) => found.push(FoundNic {
                nic: AnyNic::VirtioPci(n),
                location: Location::Pci(dev.address),
            }),
            Err(e) => report(format_args!("pci {}: bring-up failed: {e:?}", dev.address)),
        }
    }
    found
}

/// Receive token of any [`AnyNic`].
pub enum AnyRx<'a> {
    /// virtio-pci.
    VirtioPci(VirtioRxToken<'a, PciTransport>),
    /// virtio-mmio.
    VirtioMmio(VirtioRxToken<'a, MmioTransport>),
    /// e1000.
    E1000(E1000RxToken<'a, MmioRegion>),
}

/// Transmit token of any [`AnyNic`].
pub enum AnyTx<'a> {
    /// virtio-pci.
    VirtioPci(VirtioTxToken<'a, PciTransport>),
    /// virtio-mmio.
    VirtioMmio(VirtioTxToken<'a, MmioTransport>),
    /// e1000.
    E1000(E1000TxToken<'a, MmioRegion>),
}

impl RxToken for AnyRx<'_> {
    #[inline]
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        match self {
            AnyRx::VirtioPci(t) => t.consume(f),
            AnyRx::VirtioMmio(t) => t.consume(f),
            AnyRx::E1000(t) => t.consume(f),
        }
    }
}

impl TxToken for AnyTx<'_> {
    #[inline]
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        match self {
            AnyTx::VirtioPci(t) => t.consume(len, f),
            AnyTx::VirtioMmio(t) => t.consume(len, f),
            AnyTx::E1000(t) => t.consume(len, f),
        }
    }
}

/// Runs `$body` with `$n` bound to the concrete driver.
macro_rules! each_driver {
    ($nic:expr, $n:ident => $body:expr) => {
        match $nic {
            AnyNic::VirtioPci($n) => $body,
            AnyNic::VirtioMmio($n) => $body,
            AnyNic::E1000($n) => $body,
        }
    };
}

impl Device for AnyNic {
    type RxToken<'a> = AnyRx<'a>;
    type TxToken<'a> = AnyTx<'a>;

    #[inline]
    fn receive(&mut self) -> Option<(AnyRx<'_>, AnyTx<'_>)> {
        match self {
            AnyNic::VirtioPci(n) => n
                .receive()
                .map(|(r, t)| (AnyRx::VirtioPci(r), AnyTx::VirtioPci(t))),
            AnyNic::VirtioMmio(n) => n
                .receive()
                .map(|(r, t)| (AnyRx::VirtioMmio(r), AnyTx::VirtioMmio(t))),
            AnyNic::E1000(n) => n.receive().map(|(r, t)| (AnyRx::E1000(r), AnyTx::E1000(t))),
        }
    }

    #[inline]
    fn transmit(&mut self) -> Option<AnyTx<'_>> {
        match self {
            AnyNic::VirtioPci(n) => n.transmit().map(AnyTx::VirtioPci),
            AnyNic::VirtioMmio(n) => n.transmit().map(AnyTx::VirtioMmio),
            AnyNic::E1000(n) => n.transmit().map(AnyTx::E1000),
        }
    }

    fn poll(&mut self) {
        each_driver!(self, n => n.poll())
    }

    fn hardware_address(&self) -> MacAddress {
        each_driver!(self, n => n.hardware_address())
    }

    fn link_state(&mut self) -> LinkState {
        each_driver!(self, n => n.link_state())
    }

    fn capabilities(&self) -> Capabilities {
        each_driver!(self, n => n.capabilities())
    }

    fn stats(&self) -> DeviceStats {
        each_driver!(self, n => n.stats())
    }
}
