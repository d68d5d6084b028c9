//! Issue 16, the appliance image's HTTP endpoint end to end: the release image under QEMU
//! (TCG) with `http_port=9100`, its one NIC on user networking with the netoops port and the
//! HTTP port forwarded from the host, no collector reachable. A crash is sent as real
//! netoops datagrams; `/metrics` must count it and pass `promtool check metrics`,
//! `/healthz` answers, and `/dumps` serves the dump's text from the appliance's RAM.

use std::net::SocketAddr;

use netoops_e2e::appliance::{free_tcp_port, free_udp_port, vm_lock, Ingress, Vm, VmSpec};
use netoops_e2e::hosted::{fleet, send_storm, wait_until, Plan, Rng};
use netoops_e2e::metrics::{get, promtool_check, sample};
use serde_json::Value;

#[test]
fn the_image_serves_metrics_health_and_dumps() {
    let _one_vm = vm_lock();
    let udp_port = free_udp_port();
    let http_port = free_tcp_port();
    // Nothing listens at the collector port.
    let mut spec = VmSpec::new(Ingress::User { udp_port }, free_tcp_port());
    spec.extra = "memory=16M quiet=2s http_port=9100 http_dumps=256K".into();
    spec.tcp_forward = vec![(http_port, 9100)];
    let mut vm = Vm::boot(&spec);
    vm.wait_for("http: listening on tcp/9100");
    vm.wait_for("ready: listening on udp/2004");
    let http = SocketAddr::from(([127, 0, 0, 1], http_port));

    let machines = fleet(0x1616, 62, 1, 6 << 10, 6 << 10);
    let plans = vec![Plan::new(&machines[0], 0.0, &mut Rng::new(1))];
    send_storm(
        SocketAddr::from(([127, 0, 0, 1], udp_port)),
        &machines,
        &plans,
    );
    let context = || vm.process.describe();
    wait_until(
        "the dump complete in the image's /metrics",
        || {
            netoops_e2e::metrics::exchange(http, b"GET /metrics HTTP/1.1\r\n\r\n")
                .is_ok_and(|r| sample(&r.text(), "netoops_dumps_complete_total") == Some(1.0))
        },
        context,
    );
    let metrics = get(http, "/metrics");
    let text = metrics.text();
    promtool_check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let sent = plans[0].packets.len() as f64;
    assert_eq!(
        sample(&text, "netoops_datagrams_total"),
        Some(sent),
        "{text}"
    );
    assert_eq!(sample(&text, "netoops_fastpath_accepted_total"), Some(sent));
    assert_eq!(sample(&text, "netoops_upstream_connected"), Some(0.0));
    assert!(sample(&text, "netoops_nic_rx_frames_total{nic=\"ingress\"}").unwrap() >= sent);
    assert!(sample(&text, "netoops_loop_turns_total").unwrap() > 0.0);

    let health = get(http, "/healthz");
    assert_eq!(health.status, 200);
    assert!(
        health.text().starts_with("ok\nupstream_connected 0\n"),
        "{}",
        health.text()
    );

    let index: Value = serde_json::from_slice(&get(http, "/dumps").body).unwrap();
    let dumps = index["dumps"].as_array().unwrap();
    assert_eq!(dumps.len(), 1, "{index}");
    assert_eq!(dumps[0]["complete"], true);
    assert_eq!(dumps[0]["kernel"], machines[0].kernel_version());
    // QEMU's RTC gives the appliance a wall clock.
    let utc = dumps[0]["emitted_utc"].as_str().unwrap_or_default();
    assert!(utc.len() == 24 && utc.ends_with('Z'), "{index}");
    let key = dumps[0]["key"].as_str().unwrap();
    let dump = get(http, &format!("/dumps/{key}"));
    assert_eq!(dump.status, 200);
    assert_eq!(dump.body, plans[0].want(&machines[0]).text);
    assert_eq!(get(http, "/dumps/0-nothing").status, 404);
    assert_eq!(get(http, "/dumps/a%2Fb").status, 400);
}
