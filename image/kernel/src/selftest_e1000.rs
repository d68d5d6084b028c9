//! `selftest=e1000-echo`: bring up the first Intel 82540EM or 82574L on PCI, answer ARP for
//! one IPv4 address, echo UDP datagrams sent to port 7, count (and drop) those sent to port
//! 9, report link changes, and print counters on the console every 250 ms while they change.
//!
//! The e1000 twin of `selftest=virtio-echo` (selftest_net.rs), whose frame parsing and reply
//! building it calls, so both drivers are tested against the same frame code. It drives the
//! real driver end to end under QEMU (tests/tests/e1000.rs, `-device e1000` and
//! `-device e1000e`) without the TCP/IP stack: frames are parsed in place in the receive
//! buffer and replies written straight into the transmit buffer.
//!
//! Command line: `selftest=e1000-echo [selftest.ip=A.B.C.D]` (default 10.0.2.15, the
//! address QEMU's user network gives its guest).
//!
//! Console lines the tests read:
//! - `e1000-echo: ready model=<82540em|82574l> pci=<bus:dev.fn> mac=<mac> eeprom_mac=<mac|none>
//!   mac_source=<..> ip=<ip> rx_ring=<n> tx_ring=<n> link=<up|down> speed=<mbps> bringup_us=<n>`
//! - `e1000-echo: link <up|down>` whenever STATUS.LU changes
//! - `e1000-echo: t_us=<micros> rx=<n> echo=<n> discard=<n> arp=<n> other=<n> tx=<n> ...`
//! - `e1000-echo: no device` / `e1000-echo: <model> at <pci>: bring-up failed: <error>`

#[cfg(all(target_os = "none", not(test)))]
pub use machine::run;

/// The part that drives the machine (bare-metal builds only).
#[cfg(all(target_os = "none", not(test)))]
mod machine {
    use crate::platform;
    use crate::println;
    use crate::selftest_net::frame;
    use crate::selftest_net::machine::{echo_burst, Counters, REPORT_INTERVAL_US};
    use crate::virtio_hal::{KernelPlatform, PciFunction};
    use netoops_e1000::{is_supported, Config, E1000Stats, E1000};
    use netoops_nic::{Device, LinkState};

    /// Address answered when the command line names none.
    const DEFAULT_IP: [u8; 4] = [10, 0, 2, 15];

    /// Runs the self-test; never returns.
    pub fn run(cmdline: &str) -> ! {
        let ip = platform::bootinfo::cmdline_param(cmdline, "selftest.ip")
            .and_then(frame::parse_ipv4)
            .unwrap_or(DEFAULT_IP);
        for dev in platform::pci_devices() {
            let Some(model) = is_supported(dev.vendor_id, dev.device_id) else {
                continue;
            };
            let start = platform::now_micros();
            let config = Config::with_clock(platform::now_micros);
            match E1000::with_config(&PciFunction(*dev), &KernelPlatform, config) {
                Ok(mut nic) => {
                    let took = platform::now_micros() - start;
                    serve(&mut nic, &dev.address, ip, took)
                }
                Err(e) => {
                    println!(
                        "e1000-echo: {} at {}: bring-up failed: {e:?}",
                        model.name(),
                        dev.address
                    );
                    platform::halt_forever()
                }
            }
        }
        println!("e1000-echo: no device");
        platform::halt_forever()
    }

    fn serve(nic: &mut E1000, pci: &dyn core::fmt::Display, ip: [u8; 4], bringup_us: u64) -> ! {
        let me = frame::Identity {
            mac: nic.hardware_address().0,
            ip,
        };
        let caps = nic.capabilities();
        let link = nic.link_status();
        let eeprom = nic.eeprom_mac();
        println!(
            "e1000-echo: ready model={} pci={pci} mac={} eeprom_mac={} mac_source={:?} \
             ip={}.{}.{}.{} rx_ring={} tx_ring={} link={} speed={} bringup_us={bringup_us}",
            nic.model().name(),
            nic.hardware_address(),
            Maybe(eeprom),
            nic.mac_source(),
            ip[0],
            ip[1],
            ip[2],
            ip[3],
            caps.rx_ring_len,
            caps.tx_ring_len,
            if link.up { "up" } else { "down" },
            link.speed_mbps,
        );
        let mut link_up = link.up;
        let mut c = Counters::default();
        let mut reported = (c, E1000Stats::default());
        let mut next_report = platform::now_micros() + REPORT_INTERVAL_US;
        let mut idle: u64 = 0;
        loop {
            echo_burst(nic, &me, &mut c, &mut idle);
            let now = platform::now_micros();
            if now < next_report {
                continue;
            }
            next_report = now + REPORT_INTERVAL_US;
            let up = nic.link_state() == LinkState::Up;
            if up != link_up {
                link_up = up;
                println!("e1000-echo: link {}", if up { "up" } else { "down" });
            }
            let s = nic.driver_stats();
            if (c, s) != reported {
                reported = (c, s);
                println!(
                    "e1000-echo: t_us={now} rx={} echo={} discard={} arp={} other={} tx={} \
                     rx_err={} rx_runt={} rx_oversize={} dev_err={} missed={} no_buf={} \
                     hw_oversize={} tx_full={} tx_truncated={} rdt_writes={} tdt_writes={} \
                     idle={idle}",
                    c.rx,
                    c.echo,
                    c.discard,
                    c.arp,
                    c.other,
                    s.tx.frames,
                    s.rx.errors,
                    s.rx.runts,
                    s.rx.oversize,
                    s.rx.device_errors,
                    s.device.missed,
                    s.device.no_buffer,
                    s.device.oversize,
                    s.tx.ring_full,
                    s.tx.truncated,
                    s.rx.tail_writes,
                    s.tx.tail_writes,
                );
            }
        }
    }

    /// Prints an optional MAC address as the address or `none`.
    struct Maybe(Option<netoops_nic::MacAddress>);

    impl core::fmt::Display for Maybe {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            match self.0 {
                Some(mac) => write!(f, "{mac}"),
                None => f.write_str("none"),
            }
        }
    }
}
