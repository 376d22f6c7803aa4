//! `nanolet logs`: a container's CRI log files, as `kubectl logs` shows them.
