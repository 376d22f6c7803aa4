//! The read-only commands: `ps`, `logs`, `images`.
//!
//! They read what the agent wrote (the status snapshot, the CRI log files, the image store) and
//! never run a second copy of the agent's state machine, so they are safe while it runs.

pub mod logs;
pub mod ps;
