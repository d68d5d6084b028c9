//! The board: wires the platform to the relay. Placeholder until the relay core, the
//! network stack and the NIC driver are connected here (the lead replaces this file).

use crate::platform::{self, Platform};
use crate::println;

/// Runs the appliance; never returns.
pub fn run(platform: &mut Platform, config: &str) -> ! {
    println!(
        "board: no relay wired yet ({} PCI functions, config {:?}); idling",
        platform.pci_devices().len(),
        config
    );
    platform::halt_forever()
}
