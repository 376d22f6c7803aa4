//! A small stderr logger for the `log` facade.
