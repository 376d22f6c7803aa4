//! The agent: sources, pod workers and the status snapshot, wired on one executor thread.
