//! Fuzzes the config parser: any bytes must give a Config or a one-line
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(error) = pagecrawl::config::Config::parse(text, "fuzz.toml".as_ref()) {
            assert!(
                !error.to_string().contains('\n'),
                "multi-line error: {error}"
            );
        }
    }
});
