//! TODO: sys
