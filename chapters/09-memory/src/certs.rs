// ANCHOR: imports
//! Development certificates: a CA of our own, and a server and a client
//! certificate it signed. Good for a laptop and for tests; a real
//! deployment gets its certificates from a real CA.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::KvError;
// ANCHOR_END: imports

// ANCHOR: dev_certs
/// A CA certificate, and a certificate and key for a server and a client,
/// all PEM-encoded. The CA's own key is thrown away once it has signed:
/// nothing can be signed with it later, so nothing can leak it.
pub struct DevCerts {
    pub ca_cert: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

impl DevCerts {
    /// New certificates; the server's is valid for `server_names` (DNS
    /// names or IP addresses).
    pub fn generate(server_names: &[&str]) -> Result<Self, KvError> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "kv development CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

        let names: Vec<String> = server_names.iter().map(|name| name.to_string()).collect();
        let mut server = CertificateParams::new(names)?;
        server
            .distinguished_name
            .push(DnType::CommonName, "kv server");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate()?;
        let server_cert = server.signed_by(&server_key, &ca)?;

        let mut client = CertificateParams::new(Vec::<String>::new())?;
        client
            .distinguished_name
            .push(DnType::CommonName, "kv client");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate()?;
        let client_cert = client.signed_by(&client_key, &ca)?;

        Ok(Self {
            ca_cert: ca.pem(),
            server_cert: server_cert.pem(),
            server_key: server_key.serialize_pem(),
            client_cert: client_cert.pem(),
            client_key: client_key.serialize_pem(),
        })
    }

    /// Writes the five files into `dir`, creating it if needed. Keys are
    /// readable by their owner only.
    pub fn write_to(&self, dir: &Path) -> Result<DevCertPaths, KvError> {
        fs::create_dir_all(dir)?;
        let paths = DevCertPaths::in_dir(dir);
        write_file(&paths.ca_cert, &self.ca_cert, false)?;
        write_file(&paths.server_cert, &self.server_cert, false)?;
        write_file(&paths.server_key, &self.server_key, true)?;
        write_file(&paths.client_cert, &self.client_cert, false)?;
        write_file(&paths.client_key, &self.client_key, true)?;
        Ok(paths)
    }
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), KvError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path)?;
    // `mode` only applies when the file is created: make sure an old file
    // gets it too.
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(contents.as_bytes())?;
    Ok(())
}
// ANCHOR_END: dev_certs

// ANCHOR: paths
/// Where the development certificates live inside a folder.
pub struct DevCertPaths {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl DevCertPaths {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }

    /// Whether all five files exist.
    pub fn exist(&self) -> bool {
        [
            &self.ca_cert,
            &self.server_cert,
            &self.server_key,
            &self.client_cert,
            &self.client_key,
        ]
        .iter()
        .all(|path| path.is_file())
    }
}
// ANCHOR_END: paths

// ANCHOR: tests
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_five_files_and_keeps_keys_private() {
        let dir = tempfile::tempdir().unwrap();
        let certs_dir = dir.path().join("certs");
        let paths = DevCerts::generate(&["localhost"])
            .unwrap()
            .write_to(&certs_dir)
            .unwrap();
        assert!(paths.exist());
        let key = fs::read_to_string(&paths.server_key).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&paths.client_key)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
// ANCHOR_END: tests
