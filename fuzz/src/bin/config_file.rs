//! The configuration file: TOML parse (`FileConfig::parse`) and validation (`Config::merge`, which runs
//! `Config::validate`, the live settings' checks and the compilation of the operator's masking patterns).
//!
//! Properties: no panic, no hang (libFuzzer's timeout); a file that validates once validates again
//! (validation is idempotent).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use relaydesk_signalling::Config;
use relaydesk_signalling::config::{FileConfig, Overrides};

fuzz_target!(|data: &[u8]| {
    let Some(text) = relaydesk_fuzz::text(data) else { return };
    let Ok(file) = FileConfig::parse(text, Path::new("fuzz.toml")) else {
        return;
    };
    if let Ok(config) = Config::merge(Overrides::default(), file) {
        let again = config.clone().validate();
        assert!(again.is_ok(), "a valid config fails a second validation: {again:?}");
    }
});
