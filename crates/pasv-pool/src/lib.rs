//! Passive port pool (under construction).
