//! Reactors (placeholder).
