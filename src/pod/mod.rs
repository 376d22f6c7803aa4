//! Pod lifecycle.
