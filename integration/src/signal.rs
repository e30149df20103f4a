//! Sending POSIX signals to server processes by pid.
//!
//! `std::process::Child::kill` can only send SIGKILL, but the servers need their own
//! graceful signals (PostgreSQL: SIGINT = fast shutdown, SIGQUIT = immediate; mysqld and
//! moto: SIGTERM). That needs `libc::kill`, which is an `unsafe fn` only because it is a raw
//! FFI call: it takes two integers, touches no memory of ours and cannot violate Rust's
//! memory safety. This module is the one place of the crate that allows `unsafe_code`.
#![allow(unsafe_code)]

/// The signals the harness sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
    Quit,
    Kill,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Int => libc::SIGINT,
            Signal::Term => libc::SIGTERM,
            Signal::Quit => libc::SIGQUIT,
            Signal::Kill => libc::SIGKILL,
        }
    }
}

/// Sends `sig` to process `pid`. Returns false when the process no longer exists
/// (or cannot be signalled).
pub fn send(pid: u32, sig: Signal) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        // 0 and negative pids address process groups: never do that by accident.
        return false;
    }
    // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig.raw()) == 0 }
}
