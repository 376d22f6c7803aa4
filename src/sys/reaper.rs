//! Child reaping for a subreaper.
//!
//! nanolet marks itself a child subreaper (`PR_SET_CHILD_SUBREAPER`), so the container processes
//! that `runc run --detach` leaves behind are re-parented to it and their exit statuses come
//! here, not to init. One task waits for `SIGCHLD` and reaps with `waitpid(-1, WNOHANG)` until
//! nothing is left; each status goes to the waiter registered for that pid, or is kept until one
//! registers (a container may exit before its pid is known).
//!
//! Nothing else in nanolet may call `wait`: `std::process::Child::wait` would race this reaper.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::rc::Rc;

use async_signal::{Signal, Signals};
use futures_lite::StreamExt;
use rustix::process::{Pid, WaitOptions, WaitStatus};

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `exit(code)`.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

impl Exit {
    /// The exit code as a shell and Kubernetes report it: 128 + signal for a signal.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }

    fn from_status(status: WaitStatus) -> Option<Exit> {
        if let Some(code) = status.exit_status() {
            Some(Exit::Code(code))
        } else {
            status.terminating_signal().map(Exit::Signal)
        }
    }
}

/// `__WALL`: also reap "clone" children, whose exit signal is not SIGCHLD. runc starts the
/// container process that way, and it stays so after it is re-parented to nanolet.
const WALL: WaitOptions = WaitOptions::from_bits_retain(0x4000_0000);

#[derive(Default)]
struct Table {
    /// Exits nobody has asked for yet.
    unclaimed: HashMap<i32, Exit>,
    /// Waiters by pid.
    waiters: HashMap<i32, async_channel::Sender<Exit>>,
}

/// Hands out child exit statuses. Cheap to clone.
#[derive(Clone, Default)]
pub struct Reaper {
    table: Rc<RefCell<Table>>,
}

impl Reaper {
    /// Makes this process a child subreaper and returns a reaper; call [`Reaper::run`] on the
    /// executor.
    pub fn install() -> io::Result<(Reaper, Signals)> {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
        let signals = Signals::new([Signal::Child])?;
        Ok((Reaper::default(), signals))
    }

    /// Reaps children forever. Run it as one task on the executor.
    pub async fn run(self, mut signals: Signals) {
        // Reap whatever exited before the signal handler was in place.
        self.reap_all();
        while signals.next().await.is_some() {
            self.reap_all();
        }
    }

    /// Reaps every child that has exited, without blocking.
    pub fn reap_all(&self) {
        loop {
            // `wait`, not `waitpid(None)`: the latter waits only for our own process group, and runc
            // puts each container in a session of its own.
            match rustix::process::wait(WaitOptions::NOHANG | WALL) {
                Ok(Some((pid, status))) => {
                    if let Some(exit) = Exit::from_status(status) {
                        self.deliver(pid.as_raw_nonzero().get(), exit);
                    }
                }
                // No child has changed state, or there are no children at all.
                Ok(None) | Err(_) => return,
            }
        }
    }

    fn deliver(&self, pid: i32, exit: Exit) {
        log::debug!("reaped pid {pid}: {exit:?}");
        let mut table = self.table.borrow_mut();
        match table.waiters.remove(&pid) {
            Some(tx) => {
                let _ = tx.try_send(exit);
            }
            None => {
                table.unclaimed.insert(pid, exit);
            }
        }
    }

    /// Waits for child `pid` to exit. The pid must be a child of this process (or re-parented
    /// to it); for any other process use [`wait_foreign`].
    pub async fn wait(&self, pid: i32) -> Exit {
        let rx = {
            let mut table = self.table.borrow_mut();
            if let Some(exit) = table.unclaimed.remove(&pid) {
                return exit;
            }
            let (tx, rx) = async_channel::bounded(1);
            table.waiters.insert(pid, tx);
            rx
        };
        // A status may have arrived between the last reap and the registration.
        self.reap_all();
        // The sender lives in the table until delivery; `recv` fails only if the table is
        // dropped, which happens only at shutdown: report that as unknown (255).
        rx.recv().await.unwrap_or(Exit::Code(255))
    }
}

/// Waits until a process that is not our child (a container adopted after nanolet restarted)
/// has exited, with a pidfd. Its exit status cannot be known: only its parent could reap it.
pub async fn wait_foreign(pid: i32) -> io::Result<()> {
    let Some(pid) = Pid::from_raw(pid) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "pid 0"));
    };
    let fd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        // Already gone.
        Err(rustix::io::Errno::SRCH) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let fd = async_io::Async::new(std::fs::File::from(fd))?;
    fd.readable().await
}

/// Whether a process with this pid exists now and has not exited (a zombie has).
pub fn is_alive(pid: i32) -> bool {
    let exists = Pid::from_raw(pid).is_some_and(|p| rustix::process::test_kill_process(p).is_ok());
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name, which is in parentheses and may hold anything.
    let is_zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    exists && !is_zombie
}
