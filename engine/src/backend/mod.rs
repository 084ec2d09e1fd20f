//! Backend port.
