#![cfg(feature = "testbed")]
//! virtio-net under viaduct in the nested testbed (scenario virtio-net): viaduct creates a tap
//! in level 1, the guest's virtio-net negotiates checksum/TSO offloads, mergeable buffers and
//! EVENT_IDX, pings level 1 and is pinged, and 2 MiB cross each way over HTTP with matching
//! digests; the packet and byte counters of both ends agree that the traffic went through.

mod common;

const RUN: &str = "viaduct-net";
const BLOB: u64 = 2 * 1024 * 1024;

fn results() -> common::Scenario {
    common::scenario("virtio-net").expect("virtio-net results")
}

fn num(s: &common::Scenario, key: &str) -> u64 {
    s.value_u64(&format!("{RUN}/{key}")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn tap_is_created_and_removed_with_the_vmm() {
    let s = results();
    s.assert_check("tap-absent-before");
    s.assert_check(&format!("{RUN}/tap-created"));
    s.assert_check(&format!("{RUN}/tap-removed"));
}

#[test]
fn guest_sees_virtio_net_with_offloads() {
    let s = results();
    s.assert_check(&format!("{RUN}/boot"));
    s.assert_check(&format!("{RUN}/net-function"));
    s.assert_check(&format!("{RUN}/mac"));
    s.assert_check(&format!("{RUN}/offloads-negotiated"));
    let features = s.value(&format!("{RUN}/features")).expect("features").to_string();
    for (bit, name) in
        [(0, "CSUM"), (1, "GUEST_CSUM"), (7, "GUEST_TSO4"), (11, "HOST_TSO4"), (15, "MRG_RXBUF"), (29, "EVENT_IDX")]
    {
        assert_eq!(features.as_bytes().get(bit), Some(&b'1'), "{name} (bit {bit}) not negotiated: {features}");
    }
    // RX, TX and the configuration vector.
    assert_eq!(num(&s, "msix_vectors"), 3);
    s.assert_check(&format!("{RUN}/net-msix-interrupts"));
}

#[test]
fn packets_flow_both_ways() {
    let s = results();
    s.assert_check(&format!("{RUN}/ping-l1"));
    s.assert_check(&format!("{RUN}/l1-ping-guest"));
    s.assert_check(&format!("{RUN}/download-from-l1"));
    s.assert_check(&format!("{RUN}/download-from-guest"));
    assert_eq!(s.value(&format!("{RUN}/l1_got_guest_blob_md5")), s.value(&format!("{RUN}/guest_blob_md5")));
    // Both ends counted the traffic: the guest's eth0 and level 1's tap (tap RX = guest TX).
    let (g_rx, g_tx) = (num(&s, "guest_rx_bytes"), num(&s, "guest_tx_bytes"));
    let (t_rx, t_tx) = (num(&s, "tap_rx_bytes"), num(&s, "tap_tx_bytes"));
    assert!(g_rx >= BLOB && g_tx >= BLOB, "guest rx {g_rx} tx {g_tx} bytes");
    assert!(t_rx >= BLOB && t_tx >= BLOB, "tap rx {t_rx} tx {t_tx} bytes");
    // The tap's counters were read before the guest's last packets: never more than the guest's.
    assert!(t_tx <= g_rx && t_rx <= g_tx, "tap tx {t_tx} > guest rx {g_rx} or tap rx {t_rx} > guest tx {g_tx}");
    assert!(num(&s, "guest_rx_packets") >= 10 && num(&s, "tap_rx_packets") >= 10);
    assert_eq!(num(&s, "guest_rx_dropped"), 0);
    assert_eq!(num(&s, "guest_rx_errors"), 0);
    s.assert_check(&format!("{RUN}/done"));
    s.assert_passed();
}
