//! Pinning a thread to one CPU (`sched_setaffinity`), for the reactors of a
//! `ReactorSet`: the only `unsafe` in the crate, confined here.
//!
//! Linux and Android only; elsewhere pinning is refused with
//! `ErrorKind::Unsupported` (macOS has no hard affinity; the BSDs spell it
//! `cpuset_setaffinity`).

use std::io;

/// The CPUs this process may run on, in ascending order (its affinity mask
/// as `taskset` or a container left it).
#[cfg(any(target_os = "linux", target_os = "android"))]
#[allow(unsafe_code)]
pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: `cpu_set_t` is a plain bit array: all zeroes is a valid,
    // empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most `size_of::<cpu_set_t>()` bytes into
    // `set`, which lives for the call; pid 0 is this thread.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let bits = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: every `cpu` is below the set's size in bits.
    Ok((0..bits)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins the calling thread to `cpu`.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[allow(unsafe_code)]
pub(crate) fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let bits = 8 * std::mem::size_of::<libc::cpu_set_t>();
    if cpu >= bits {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is past the {bits} a cpu_set_t holds"),
        ));
    }
    // SAFETY: all zeroes is a valid, empty `cpu_set_t`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below the set's size in bits (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the kernel reads `size_of::<cpu_set_t>()` bytes of `set`,
    // which lives for the call; pid 0 is this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "pinning threads to CPUs is supported on Linux and Android only",
    ))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn pin_current_thread(_cpu: usize) -> io::Result<()> {
    allowed_cpus().map(|_| ())
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;

    #[test]
    fn a_thread_pinned_to_an_allowed_cpu_runs_only_there() {
        let cpus = allowed_cpus().expect("sched_getaffinity");
        let last = *cpus.last().expect("at least one CPU is allowed");
        std::thread::spawn(move || {
            pin_current_thread(last).expect("sched_setaffinity");
            assert_eq!(allowed_cpus().expect("sched_getaffinity"), [last]);
        })
        .join()
        .expect("the pinned thread");
    }
}
