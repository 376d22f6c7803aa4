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
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

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
    /// Waiters by pid: each one's waker (a waker, not a channel per container:
    /// async-channel's are built for threads). `None`: the waiter gave up; its pid's exit is
    /// discarded when it comes.
    waiters: HashMap<i32, Option<Waker>>,
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
        let waiter = {
            let mut table = self.table.borrow_mut();
            let waiter = table.waiters.remove(&pid);
            if !matches!(waiter, Some(None)) {
                table.unclaimed.insert(pid, exit);
            }
            waiter.flatten()
        };
        if let Some(waker) = waiter {
            waker.wake();
        }
    }

    /// Waits for child `pid` to exit. The pid must be a child of this process (or re-parented
    /// to it); for any other process use [`wait_foreign`].
    pub async fn wait(&self, pid: i32) -> Exit {
        // A status may have arrived since the last reap.
        self.reap_all();
        Wait {
            table: &self.table,
            pid,
            waiting: false,
        }
        .await
    }
}

/// [`Reaper::wait`]'s future. Dropped before it had its exit, that exit is discarded (now or
/// when it comes), not left for a reused pid.
struct Wait<'a> {
    table: &'a RefCell<Table>,
    pid: i32,
    /// Registered as the pid's waiter, and not yet given its exit.
    waiting: bool,
}

impl Future for Wait<'_> {
    type Output = Exit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Exit> {
        let pid = self.pid;
        let mut table = self.table.borrow_mut();
        if let Some(exit) = table.unclaimed.remove(&pid) {
            table.waiters.remove(&pid);
            drop(table);
            self.waiting = false;
            return Poll::Ready(exit);
        }
        table.waiters.insert(pid, Some(cx.waker().clone()));
        drop(table);
        self.waiting = true;
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if self.waiting {
            let mut table = self.table.borrow_mut();
            match table.waiters.get_mut(&self.pid) {
                Some(waiter) => *waiter = None,
                // Delivered to this waiter, never taken.
                None => {
                    table.unclaimed.remove(&self.pid);
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    // `Wait` and `deliver` only: `Reaper::wait` reaps any child, and would steal those of
    // other tests in this process.
    fn wait(reaper: &Reaper, pid: i32) -> Wait<'_> {
        Wait {
            table: &reaper.table,
            pid,
            waiting: false,
        }
    }

    #[test]
    fn an_exit_reaches_its_waiter_before_or_after_it_waits_and_a_dropped_waiter_discards_it() {
        let reaper = Reaper::default();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);

        // Exited before anyone asked.
        reaper.deliver(10, Exit::Code(3));
        let mut w = std::pin::pin!(wait(&reaper, 10));
        assert_eq!(w.as_mut().poll(&mut cx), Poll::Ready(Exit::Code(3)));

        // Asked first, delivered later.
        let mut w = std::pin::pin!(wait(&reaper, 11));
        assert_eq!(w.as_mut().poll(&mut cx), Poll::Pending);
        reaper.deliver(11, Exit::Signal(9));
        assert_eq!(w.as_mut().poll(&mut cx), Poll::Ready(Exit::Signal(9)));

        // A waiter that gave up: its exit is not kept for a later process with that pid.
        let mut w = Box::pin(wait(&reaper, 12));
        assert_eq!(w.as_mut().poll(&mut cx), Poll::Pending);
        drop(w);
        reaper.deliver(12, Exit::Code(0));
        let table = reaper.table.borrow();
        assert!(table.unclaimed.is_empty() && table.waiters.is_empty());
    }
}
