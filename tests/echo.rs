//! Exact echo: tiny, large, binary; many clients at once; long streams.

mod common;

use common::{Plan, echo_once, run_echo_clients, start};
use tcp_reactor::{Config, Echo};

#[test]
fn one_byte_comes_back() {
    let server = start(Config::default(), Echo);
    assert_eq!(echo_once(server.addr, b"x"), b"x");
}

#[test]
fn binary_with_nul_and_ff_comes_back_exactly() {
    let server = start(Config::default(), Echo);
    let data: Vec<u8> = (0..=255u8)
        .chain([0, 0, 0xFF, 0xFF, b'\n', b'\r'])
        .collect();
    assert_eq!(echo_once(server.addr, &data), data);
}

#[test]
fn sixty_four_kib_comes_back_exactly() {
    let server = start(Config::default(), Echo);
    let data: Vec<u8> = (0..64 * 1024u32)
        .map(|i| common::pattern(3, u64::from(i)))
        .collect();
    assert_eq!(echo_once(server.addr, &data), data);
}

#[test]
fn thousand_clients_at_once_each_get_every_message_back() {
    let server = start(Config::default(), Echo);
    let plans = vec![
        Plan {
            total: 5 * 100,
            message: 100,
            half_close: false,
        };
        1000
    ];
    let outcomes = run_echo_clients(server.addr, &plans);
    for (i, outcome) in outcomes.iter().enumerate() {
        assert!(outcome.is_exact(500), "client {i}: {outcome:?}");
    }
    let stats = server.stats();
    assert!(stats.accepted >= 1000, "{stats:?}");
}

#[test]
fn fifty_clients_stream_eight_mib_each_with_hash_check() {
    let server = start(Config::default(), Echo);
    let total = 8 * 1024 * 1024;
    let plans = vec![
        Plan {
            total,
            message: u64::MAX,
            half_close: true,
        };
        50
    ];
    let outcomes = run_echo_clients(server.addr, &plans);
    for (i, outcome) in outcomes.iter().enumerate() {
        assert!(outcome.is_exact(total), "client {i}: {outcome:?}");
        assert!(outcome.eof, "client {i}: no EOF after its echo");
    }
}
