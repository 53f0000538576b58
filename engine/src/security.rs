//! SeaweedFS's `security.toml` as the engine reads it (`--security-toml`): the read key
//! (`[jwt.signing.read]` `key`) that readers and exporters prove they hold, and the
//! certificates of mutual TLS (`[grpc]` `ca`, `[grpc.volume]` and `[grpc.client]` `cert` and
//! `key`), which the stream transport runs over when they are there. The export role presents
//! `[grpc.volume]`'s, as a volume server does; the read role `[grpc.client]`'s, as SeaweedFS's
//! clients do. Paths are taken as written, as SeaweedFS takes them.

use std::path::{Path, PathBuf};

use crate::rdma::token::ReadKey;
use crate::stream::tls_names::NameAllowlist;

/// Why `--security-toml` cannot be used (one sentence).
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not valid TOML: {message}")]
    Parse { path: String, message: String },
    #[error(
        "{path} has neither a [jwt.signing.read] key nor [grpc] TLS certificates: nothing to authenticate peers with"
    )]
    Nothing { path: String },
    #[error("{path}: {message}")]
    Tls { path: String, message: String },
    #[error("{path} has no [jwt.signing.read] key, and the UCX transport authenticates peers with it alone (the TLS certificates serve the stream transport)")]
    UcxNeedsKey { path: String },
}

/// One role's certificate files: its own certificate chain and key, the CA its peers'
/// certificates must be signed by, and the peers' names it admits (SeaweedFS's lists; empty:
/// any the CA signed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Exporter: `[grpc.volume] allowed_commonNames` and `[grpc] allowed_wildcard_domain`;
    /// reader: `allowed_server_commonNames` and `allowed_server_wildcard_domain` of
    /// `[grpc.client]`, else of `[grpc]`.
    pub allowed_peers: NameAllowlist,
}

/// What the engine takes from a `security.toml`.
#[derive(Clone, Debug)]
pub struct SecurityToml {
    pub path: PathBuf,
    pub read_key: Option<ReadKey>,
    /// The export role's certificate (`[grpc.volume]`).
    pub volume_tls: Option<TlsFiles>,
    /// The read role's certificate (`[grpc.client]`).
    pub client_tls: Option<TlsFiles>,
}

impl SecurityToml {
    /// Reads `path`. It must give a read key, certificates, or both.
    pub fn load(path: &Path) -> Result<SecurityToml, SecurityError> {
        let path_text = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| SecurityError::Read { path: path_text.clone(), source })?;
        let table: toml::Table = text.parse().map_err(|error: toml::de::Error| SecurityError::Parse {
            path: path_text.clone(),
            message: error.message().into(),
        })?;
        let read_key =
            text_at(&table, &["jwt", "signing", "read", "key"]).map(|key| ReadKey::from_bytes(key.as_bytes()));
        let tls_error = |message: String| SecurityError::Tls { path: path_text.clone(), message };
        let volume_tls = tls_files(&table, "volume").map_err(tls_error)?;
        let client_tls = tls_files(&table, "client").map_err(tls_error)?;
        if read_key.is_none() && volume_tls.is_none() && client_tls.is_none() {
            return Err(SecurityError::Nothing { path: path_text });
        }
        Ok(SecurityToml { path: path.to_path_buf(), read_key, volume_tls, client_tls })
    }

    /// The read key, for the UCX transport, which has no other way to authenticate peers.
    pub fn read_key_for_ucx(&self) -> Result<ReadKey, SecurityError> {
        self.read_key.clone().ok_or_else(|| SecurityError::UcxNeedsKey { path: self.path.display().to_string() })
    }
}

/// The non-empty string at `keys` in `table`.
fn text_at<'a>(table: &'a toml::Table, keys: &[&str]) -> Option<&'a str> {
    let (last, parents) = keys.split_last()?;
    let mut current = table;
    for key in parents {
        current = current.get(*key)?.as_table()?;
    }
    current.get(*last)?.as_str().filter(|text| !text.is_empty())
}

/// `[grpc.<role>]`'s certificate and key with `[grpc]`'s CA: all three, or none (`Ok(None)`);
/// some but not all is an error, since the operator meant TLS and would get plaintext.
fn tls_files(table: &toml::Table, role: &str) -> Result<Option<TlsFiles>, String> {
    let cert = text_at(table, &["grpc", role, "cert"]);
    let key = text_at(table, &["grpc", role, "key"]);
    let ca = text_at(table, &["grpc", "ca"]);
    match (ca, cert, key) {
        (Some(ca), Some(cert), Some(key)) => {
            let allowed_peers = match role {
                "volume" => NameAllowlist::parse(
                    text_at(table, &["grpc", "volume", "allowed_commonNames"]).unwrap_or(""),
                    text_at(table, &["grpc", "allowed_wildcard_domain"]).unwrap_or(""),
                ),
                _ => {
                    let either = |key: &str| {
                        text_at(table, &["grpc", role, key]).or_else(|| text_at(table, &["grpc", key])).unwrap_or("")
                    };
                    NameAllowlist::parse(either("allowed_server_commonNames"), either("allowed_server_wildcard_domain"))
                }
            };
            Ok(Some(TlsFiles {
                ca: PathBuf::from(ca),
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
                allowed_peers,
            }))
        }
        (_, None, None) => Ok(None),
        (ca, cert, key) => {
            let missing: Vec<String> = [
                (ca, "[grpc] ca".to_string()),
                (cert, format!("[grpc.{role}] cert")),
                (key, format!("[grpc.{role}] key")),
            ]
            .into_iter()
            .filter(|(value, _)| value.is_none())
            .map(|(_, name)| name)
            .collect();
            Err(format!(
                "[grpc.{role}] names a certificate or key but {} is missing: give all of them for mutual TLS, or none",
                missing.join(" and ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<SecurityToml, SecurityError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("security.toml");
        std::fs::write(&path, text).unwrap();
        SecurityToml::load(&path)
    }

    #[test]
    fn the_read_key_and_each_roles_certificates_are_found() {
        let full = load(
            "[jwt.signing.read]\nkey = \"k\"\n[grpc]\nca = \"/ca.pem\"\n[grpc.volume]\ncert = \"/v.pem\"\nkey = \"/v.key\"\n\
             [grpc.client]\ncert = \"/c.pem\"\nkey = \"/c.key\"\n",
        )
        .unwrap();
        assert_eq!(full.read_key.unwrap().bytes(), b"k");
        let volume = full.volume_tls.unwrap();
        assert_eq!(
            (volume.ca.to_str(), volume.cert.to_str(), volume.key.to_str()),
            (Some("/ca.pem"), Some("/v.pem"), Some("/v.key"))
        );
        assert_eq!(full.client_tls.unwrap().cert, PathBuf::from("/c.pem"));
        assert!(volume.allowed_peers.is_empty());

        let listed = load(
            "[grpc]\nca = \"/ca.pem\"\nallowed_wildcard_domain = \".example\"\nallowed_server_commonNames = \"volume01\"\n\
             [grpc.volume]\ncert = \"/v.pem\"\nkey = \"/v.key\"\nallowed_commonNames = \"reader-1, reader-2\"\n\
             [grpc.client]\ncert = \"/c.pem\"\nkey = \"/c.key\"\n",
        )
        .unwrap();
        let volume = listed.volume_tls.unwrap().allowed_peers;
        assert_eq!(volume, NameAllowlist::parse("reader-1,reader-2", ".example"));
        assert_eq!(listed.client_tls.unwrap().allowed_peers, NameAllowlist::parse("volume01", ""));

        let key_only =
            load("[jwt.signing.read]\nkey = \"k\"\n[grpc]\nca = \"\"\n[grpc.volume]\ncert = \"\"\nkey = \"\"\n")
                .unwrap();
        assert!(key_only.volume_tls.is_none() && key_only.client_tls.is_none());
        assert!(key_only.read_key_for_ucx().is_ok());

        let tls_only = load("[grpc]\nca = \"/ca.pem\"\n[grpc.client]\ncert = \"/c.pem\"\nkey = \"/c.key\"\n").unwrap();
        assert!(tls_only.read_key.is_none() && tls_only.client_tls.is_some());
        let refusal = tls_only.read_key_for_ucx().unwrap_err().to_string();
        assert!(refusal.contains("UCX transport"), "{refusal}");
    }

    #[test]
    fn nothing_usable_or_half_a_certificate_is_refused_by_name() {
        let error = load("[jwt.signing.read]\nkey = \"\"\n").unwrap_err().to_string();
        assert!(error.contains("neither a [jwt.signing.read] key nor [grpc] TLS certificates"), "{error}");
        let error = load("[grpc]\nca = \"/ca.pem\"\n[grpc.volume]\ncert = \"/v.pem\"\n").unwrap_err().to_string();
        assert!(error.contains("[grpc.volume] key is missing"), "{error}");
        let error = load("[grpc.client]\ncert = \"/c.pem\"\nkey = \"/c.key\"\n").unwrap_err().to_string();
        assert!(error.contains("[grpc] ca is missing"), "{error}");
        assert!(matches!(load("not toml ["), Err(SecurityError::Parse { .. })));
    }
}
