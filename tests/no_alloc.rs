//! No allocation per message: once warmed up, the reactor's thread serves a
//! steady ping-pong of 100,000 echoed messages without a single heap
//! allocation (a counting global allocator, per thread, says so).
//! Its own test binary: it installs the global allocator.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use common::{DEADLINE, any_local_address, connect};
use tcp_reactor::{Config, Echo, Reactor};

/// Counts allocations made by the current thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counter is a const-initialised thread-local Cell, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded with the caller's arguments.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What the test thread asks of the reactor thread between turns.
const RUN: u8 = 0;
const MARK: u8 = 1;
const DONE: u8 = 2;

#[test]
fn a_steady_ping_pong_of_100_000_messages_allocates_nothing_on_the_reactor_thread() {
    const WARM_UP: usize = 1_000;
    const MESSAGES: usize = 100_000;
    let mut reactor =
        Reactor::bind(any_local_address(), Config::default(), Echo).expect("bind on port 0");
    let addr = reactor.local_addr().expect("a TCP listener");
    let phase = Arc::new(AtomicU8::new(RUN));
    let (counts, counted) = mpsc::channel();
    let reactor_phase = Arc::clone(&phase);
    let server = std::thread::spawn(move || {
        // The channel allocates on its first send: make that one now, so
        // the counts sent later cost nothing between them.
        let _ = counts.send(allocations());
        let mut marked = false;
        loop {
            reactor
                .run_once(Some(Duration::from_millis(5)))
                .expect("run_once");
            match reactor_phase.load(Ordering::SeqCst) {
                MARK if !marked => {
                    marked = true;
                    let _ = counts.send(allocations());
                }
                DONE => {
                    let _ = counts.send(allocations());
                    return;
                }
                _ => {}
            }
        }
    });

    let mut client = connect(addr);
    let message = [7u8; 64];
    let mut reply = [0u8; 64];
    let mut round_trip = |client: &mut std::net::TcpStream| {
        client.write_all(&message).expect("write");
        client.read_exact(&mut reply).expect("echo");
        assert_eq!(reply, message);
    };
    // Warm up: the connection is open, buffers and queues have their size.
    for _ in 0..WARM_UP {
        round_trip(&mut client);
    }
    counted
        .recv_timeout(DEADLINE)
        .expect("the reactor thread started");
    phase.store(MARK, Ordering::SeqCst);
    let before = counted.recv_timeout(DEADLINE).expect("the reactor's mark");
    for _ in 0..MESSAGES {
        round_trip(&mut client);
    }
    phase.store(DONE, Ordering::SeqCst);
    let after = counted.recv_timeout(DEADLINE).expect("the reactor's count");
    server.join().expect("reactor thread");
    assert_eq!(
        after - before,
        0,
        "{} allocations on the reactor thread for {MESSAGES} echoed messages",
        after - before
    );
}
