//! Path info (to be filled).
