//! Points the dashboard at its charting library, uPlot, whose built files are kept in
//! `web/vendor/uplot` (with its licence and version) so a fresh clone's `cargo build`
//! needs no npm; npm is only for the browser tests.

use std::path::PathBuf;

fn main() {
    let vendor =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("web/vendor/uplot");
    for (file, var) in [
        ("uPlot.iife.min.js", "PITWALL_UPLOT_JS"),
        ("uPlot.min.css", "PITWALL_UPLOT_CSS"),
    ] {
        let path = vendor.join(file);
        if !path.is_file() {
            panic!(
                "the dashboard's charting library is missing ({}): it is part of the \
                 repository; restore it with `git checkout -- {}`",
                path.display(),
                vendor.display()
            );
        }
        println!("cargo:rustc-env={var}={}", path.display());
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
