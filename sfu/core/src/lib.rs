//! RelayDesk SFU core.
