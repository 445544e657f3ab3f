//! Writes a development CA, a server certificate for `localhost` and
//! `127.0.0.1`, and a client certificate into a folder.
//!
//! cargo run --example gen_certs [DIR]
//!
//! DIR defaults to `dev-certs`, where `kvs` and `kvc` look by default.

use std::{env, path::PathBuf};

use kv::{DevCerts, KvError};

fn main() -> Result<(), KvError> {
    let dir = PathBuf::from(env::args().nth(1).unwrap_or_else(|| "dev-certs".into()));
    let paths = DevCerts::generate(&["localhost", "127.0.0.1"])?.write_to(&dir)?;
    for path in [
        &paths.ca_cert,
        &paths.server_cert,
        &paths.server_key,
        &paths.client_cert,
        &paths.client_key,
    ] {
        println!("wrote {}", path.display());
    }
    Ok(())
}
