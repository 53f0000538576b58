//! Generates the raw UCX bindings from the headers of the UCX that pkg-config finds.
//!
//! The headers and the library we link are the same installation by construction: pkg-config
//! gives both the include path bindgen reads and the link flags cargo passes on. Set
//! `PKG_CONFIG_PATH` to use a UCX other than the system one.

use std::env;
use std::path::PathBuf;

/// The oldest UCX whose API we bind: `ucp_get_nbx`, `ucp_am_send_nbx`, `ucp_am_recv_data_nbx`
/// and `ucp_ep_close_nbx` are all there, and it is what Debian 12 ships.
const UCX_MINIMUM_VERSION: &str = "1.13";

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    let ucx = match pkg_config::Config::new().atleast_version(UCX_MINIMUM_VERSION).probe("ucx") {
        Ok(library) => library,
        Err(error) => {
            eprintln!(
                "error: ucx-sys needs UCX >= {UCX_MINIMUM_VERSION} found through pkg-config \
                 (Debian: `apt-get install libucx-dev pkg-config libclang-dev`, or point \
                 PKG_CONFIG_PATH at another UCX's lib/pkgconfig).\npkg-config said: {error}"
            );
            std::process::exit(1);
        }
    };

    let mut builder = bindgen::Builder::default()
        .header("wrapper.h")
        .allowlist_function("ucp_.*")
        .allowlist_function("ucs_.*")
        .allowlist_type("ucp_.*")
        .allowlist_type("ucs_.*")
        .allowlist_var("UCP_.*")
        .allowlist_var("UCS_.*")
        // Plain integer constants: a status or flag value this version does not know is just
        // a number, never undefined behaviour (a Rust enum with an unknown value would be).
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .derive_default(true)
        .derive_debug(true)
        .layout_tests(true)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for path in &ucx.include_paths {
        builder = builder.clang_arg(format!("-I{}", path.display()));
    }
    let bindings = builder.generate().unwrap_or_else(|error| {
        eprintln!("error: bindgen could not read the UCX headers (is libclang-dev installed?): {error}");
        std::process::exit(1);
    });

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings.write_to_file(out_dir.join("bindings.rs")).expect("write bindings.rs into OUT_DIR");
    // Visible to dependents as DEP_UCP_VERSION.
    println!("cargo:version={}", ucx.version);
}
