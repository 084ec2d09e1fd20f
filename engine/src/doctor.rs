//! TODO: doctor
