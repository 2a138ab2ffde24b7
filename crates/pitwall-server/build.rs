//! Finds the dashboard's front-end packages (installed from npm by `npm ci` in
//! `crates/pitwall-server/web`, which the README's scripts run) so they are built into
//! the binary.

use std::path::PathBuf;

fn main() {
    let web =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("web");
    let dist = web.join("node_modules/uplot/dist");
    for (file, var) in [
        ("uPlot.iife.min.js", "PITWALL_UPLOT_JS"),
        ("uPlot.min.css", "PITWALL_UPLOT_CSS"),
    ] {
        let path = dist.join(file);
        if !path.is_file() {
            panic!(
                "the dashboard's charting library is missing ({}): run `npm ci --prefix {}` \
                 (scripts/up.sh and scripts/test.sh do it), then build again",
                path.display(),
                web.display()
            );
        }
        println!("cargo:rustc-env={var}={}", path.display());
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        web.join("package-lock.json").display()
    );
}
