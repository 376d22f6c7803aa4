//! Read-only commands.
