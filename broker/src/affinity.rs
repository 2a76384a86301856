//! Pinning each core's thread to one CPU of those the process may use.
//!
//! The CPUs come from `sched_getaffinity` of the thread that starts the broker, read once
//! before any core is pinned: `taskset`, a cpuset cgroup or a container's `--cpuset-cpus`
//! can leave the process, say, CPUs 4 and 5, and core *i* must go to the *i*-th of those,
//! not to CPU *i* (which the kernel refuses, EINVAL). Reading the mask from a pinned thread
//! would find its single CPU, hence "once, before".
//!
//! Pinning is Linux only; elsewhere [`allowed_cpus`] is empty and nothing is pinned.

use std::io;

/// The CPUs this thread may run on, in ascending order (empty where unknown).
#[cfg(target_os = "linux")]
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is a plain bitmask for which all zeroes is valid;
    // sched_getaffinity(0, ..) writes it for the calling thread, within its size, and
    // CPU_ISSET only reads inside it (every index is below CPU_SETSIZE).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect()
    }
}

#[cfg(not(target_os = "linux"))]
pub fn allowed_cpus() -> Vec<usize> {
    Vec::new()
}

/// The CPU for core `index`: the cores take the allowed CPUs in turn (`None`: none known).
pub fn cpu_for_core(allowed: &[usize], index: usize) -> Option<usize> {
    (!allowed.is_empty()).then(|| allowed[index % allowed.len()])
}

/// Pins the calling thread to `cpu`.
#[cfg(target_os = "linux")]
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("CPU {cpu} is beyond CPU_SETSIZE")));
    }
    // SAFETY: as above; CPU_ZERO and CPU_SET write only inside the set (cpu < CPU_SETSIZE,
    // checked), and sched_setaffinity(0, ..) applies to the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub fn pin_current_thread(_cpu: usize) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_take_the_allowed_cpus_in_turn() {
        // A process restricted to CPUs 4 and 5 (taskset -c 4,5): core 0 on 4, not on 0.
        assert_eq!(cpu_for_core(&[4, 5], 0), Some(4));
        assert_eq!(cpu_for_core(&[4, 5], 1), Some(5));
        assert_eq!(cpu_for_core(&[4, 5], 2), Some(4));
        assert_eq!(cpu_for_core(&[], 0), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_pinned_to_an_allowed_cpu_runs_only_there() {
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty(), "sched_getaffinity found no CPU");
        let last = *allowed.last().unwrap_or(&0);
        let seen =
            std::thread::spawn(move || pin_current_thread(last).map(|()| allowed_cpus())).join().expect("thread");
        assert_eq!(seen.expect("pin"), vec![last]);
        // A CPU outside the mask is refused (and reported), not silently ignored.
        assert!(pin_current_thread(libc::CPU_SETSIZE as usize).is_err());
    }
}
