//! `netoops-gen --output tap:IFNAME` end to end, inside a network namespace this test
//! creates: the generator transmits frames on a TAP interface, a real QEMU attached to that
//! TAP (`-netdev tap`) forwards everything through a hub to a `-netdev dgram` netdev, and the
//! benchmark's counting receiver gets one UDP datagram per frame. Counts and bytes must match
//! what the generator says it sent. Nothing leaves the namespace; it is deleted afterwards.

use std::process::Command;
use std::time::{Duration, Instant};

use netoops_bench::harness::baseline::Counts;
use netoops_bench::harness::process::Process;
use serde_json::Value;

const GEN: &str = env!("CARGO_BIN_EXE_netoops-gen");
const BENCH: &str = env!("CARGO_BIN_EXE_netoops-bench");
/// Ethernet, IPv4 and UDP headers around each datagram.
const HEADERS: u64 = 42;

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("netoops-tap-{}", std::process::id());
        // A namespace left over by a killed run of this process id.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        let ns = Netns(name);
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        // No IPv6 autoconfiguration traffic of the namespace's own on the TAP.
        ns.exec_ok(&[
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]);
        ns
    }

    /// `ip netns exec NS program args...` as a command.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]).args(args);
        c
    }

    fn exec_ok(&self, argv: &[&str]) {
        let status = self.command(argv[0], &argv[1..]).status().unwrap();
        assert!(status.success(), "in {}: {argv:?} failed", self.0);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program} is needed: {e}"));
    assert!(status.success(), "{program} {args:?} failed");
}

#[test]
fn frames_on_a_tap_reach_qemu_exactly() {
    let ns = Netns::new();
    let tap = "nbtap0";
    ns.exec_ok(&["ip", "tuntap", "add", "dev", tap, "mode", "tap"]);
    // Up before QEMU attaches: the carrier then shows when QEMU holds the TAP.
    ns.exec_ok(&["ip", "link", "set", tap, "up"]);
    // QEMU forwards between the TAP and a dgram netdev; nothing is bound before it starts.
    let qemu = ns.command(
        "qemu-system-x86_64",
        &[
            "-M",
            "none",
            "-nodefaults",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "none",
            "-netdev",
            "tap,id=t,ifname=nbtap0,script=no,downscript=no",
            "-netdev",
            "dgram,id=d,local.type=inet,local.host=127.0.0.1,local.port=47601,\
             remote.type=inet,remote.host=127.0.0.1,remote.port=47602",
            "-netdev",
            "hubport,id=h1,hubid=0,netdev=t",
            "-netdev",
            "hubport,id=h2,hubid=0,netdev=d",
        ],
    );
    let mut qemu = Process::spawn("qemu", qemu).unwrap();
    let receiver = ns.command(
        BENCH,
        &[
            "baseline",
            "--listen",
            "127.0.0.1:47602",
            "--recv-buffer",
            "4194304",
        ],
    );
    let mut receiver = Process::spawn("baseline", receiver).unwrap();
    receiver
        .wait_for(0, "baseline: listening on", Duration::from_secs(30))
        .unwrap();
    // QEMU attached to the TAP once the link reports a carrier.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(qemu.running(), "QEMU exited:\n{}", qemu.tail(10));
        let out = ns
            .command("ip", &["-o", "link", "show", tap])
            .output()
            .unwrap();
        if !String::from_utf8_lossy(&out.stdout).contains("NO-CARRIER") {
            break;
        }
        assert!(Instant::now() < deadline, "QEMU never attached to {tap}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let gen = ns
        .command(
            GEN,
            &[
                "--output",
                "tap:nbtap0",
                "--machines",
                "12",
                "--log-size",
                "1K-12K",
                "--rate",
                "5000",
                "--json",
            ],
        )
        .output()
        .unwrap();
    assert!(
        gen.status.success(),
        "netoops-gen failed: {}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let summary: Value = serde_json::from_slice(&gen.stdout).unwrap();
    let frames = summary["datagrams_sent"].as_u64().unwrap();
    let bytes = summary["bytes_sent"].as_u64().unwrap() + HEADERS * frames;
    assert!(frames > 12 * 3);

    let deadline = Instant::now() + Duration::from_secs(30);
    let counts = loop {
        let last = receiver
            .last_line_with(0, "baseline: datagrams")
            .and_then(|l| Counts::parse(&l.text));
        if let Some(c) = last.filter(|c| c.datagrams >= frames) {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "received {last:?} of {frames} frames"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Exactly what was sent: no frame lost, none extra (the namespace sends nothing itself).
    assert_eq!(counts.datagrams, frames);
    assert_eq!(counts.bytes, bytes);
    receiver.stop(Duration::from_secs(2));
    qemu.stop(Duration::from_secs(2));
}
