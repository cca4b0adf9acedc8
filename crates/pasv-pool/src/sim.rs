//! Discrete-event simulation of a pool under load.
