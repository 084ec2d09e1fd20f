//! TODO: publication
