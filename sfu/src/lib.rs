//! RelayDesk SFU driver.
