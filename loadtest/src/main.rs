//! RelayDesk load tester.
fn main() {}
