//! TODO: channel_table
