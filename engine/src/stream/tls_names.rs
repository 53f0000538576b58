//! Which certificates of the CA a side accepts, by name: SeaweedFS's allowlists in
//! `security.toml`. An exporter admits a reader whose certificate's subject common name is in
//! `[grpc.volume] allowed_commonNames`, or a subdomain of `[grpc] allowed_wildcard_domain`
//! (as a volume server admits gRPC clients). A reader reads from an exporter whose common
//! name or a DNS name is in `[grpc] allowed_server_commonNames` (or a subdomain of
//! `allowed_server_wildcard_domain`), or whose URI name is listed exactly. Empty lists admit
//! every certificate the CA signed, as in SeaweedFS.

use std::collections::HashSet;

use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;

/// The subject common name's attribute type (2.5.4.3).
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
/// The subject alternative name extension (2.5.29.17).
const SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");

/// Names one side admits (both empty: any certificate the CA signed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameAllowlist {
    pub names: HashSet<String>,
    /// `.example.com`: a real subdomain of it is admitted.
    pub wildcard_domain: Option<String>,
}

/// The names a certificate holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertificateNames {
    pub common_name: Option<String>,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
}

impl NameAllowlist {
    /// From a comma-separated list and a wildcard domain, as `security.toml` writes them.
    pub fn parse(names: &str, wildcard_domain: &str) -> NameAllowlist {
        let names = names.split(',').map(str::trim).filter(|name| !name.is_empty()).map(str::to_string).collect();
        let wildcard_domain = Some(wildcard_domain.trim()).filter(|domain| !domain.is_empty()).map(str::to_string);
        NameAllowlist { names, wildcard_domain }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.wildcard_domain.is_none()
    }

    /// Whether a reader's certificate is admitted: by its common name.
    pub fn admits_client(&self, names: &CertificateNames) -> bool {
        names.common_name.as_deref().is_some_and(|name| self.admits_dns_like(name))
    }

    /// Whether an exporter's certificate is admitted: by its common name or a DNS name, or a
    /// URI name listed exactly.
    pub fn admits_server(&self, names: &CertificateNames) -> bool {
        names.common_name.iter().chain(&names.dns).any(|name| self.admits_dns_like(name))
            || names.uris.iter().any(|uri| self.names.contains(uri))
    }

    fn admits_dns_like(&self, name: &str) -> bool {
        self.names.contains(name) || self.wildcard_domain.as_deref().is_some_and(|domain| in_domain(name, domain))
    }
}

/// Whether `name` is a real subdomain of `domain` (`.example.com` or `example.com`): it ends
/// with the domain after a label of its own, and is a DNS name (a bare IP address is not).
/// One trailing root dot is ignored on both sides; a leading `*.` label is allowed.
fn in_domain(name: &str, domain: &str) -> bool {
    let (name, domain) = (name.strip_suffix('.').unwrap_or(name), domain.strip_suffix('.').unwrap_or(domain));
    let Some(head) = name.strip_suffix(domain) else { return false };
    if domain.is_empty() || head.is_empty() {
        return false;
    }
    if !domain.starts_with('.') && !head.ends_with('.') {
        return false;
    }
    is_dns_name(name.strip_prefix("*.").unwrap_or(name))
}

/// Labels of letters, digits, `-` and `_` (1 to 63 bytes, not starting or ending with `-`),
/// at most 253 bytes in all, with at least one byte that is not a digit.
fn is_dns_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    });
    labels_ok && name.bytes().any(|byte| !byte.is_ascii_digit() && byte != b'.')
}

/// The names in a DER certificate (`None`: it does not parse as X.509).
pub fn certificate_names(der: &[u8]) -> Option<CertificateNames> {
    let certificate = x509_cert::Certificate::from_der(der).ok()?;
    let tbs = &certificate.tbs_certificate;
    let mut names = CertificateNames::default();
    // The last common name, as Go's crypto/x509 keeps it.
    for attribute in tbs.subject.0.iter().flat_map(|rdn| rdn.0.iter()) {
        if attribute.oid == COMMON_NAME {
            let value = &attribute.value;
            let text = Utf8StringRef::try_from(value)
                .map(|text| text.as_str().to_string())
                .or_else(|_| PrintableStringRef::try_from(value).map(|text| text.as_str().to_string()))
                .or_else(|_| Ia5StringRef::try_from(value).map(|text| text.as_str().to_string()));
            if let Ok(text) = text {
                names.common_name = Some(text);
            }
        }
    }
    for extension in tbs.extensions.iter().flatten() {
        if extension.extn_id != SUBJECT_ALT_NAME {
            continue;
        }
        let alternatives = SubjectAltName::from_der(extension.extn_value.as_bytes()).ok()?;
        for name in alternatives.0 {
            match name {
                GeneralName::DnsName(dns) => names.dns.push(dns.as_str().to_string()),
                GeneralName::UniformResourceIdentifier(uri) => names.uris.push(uri.as_str().to_string()),
                _ => {}
            }
        }
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_from_a_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["volume01.storage.example".to_string(), "volume01".to_string()])
                .unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "reader-7");
        let certificate = params.self_signed(&key).unwrap();
        let names = certificate_names(certificate.der()).unwrap();
        assert_eq!(names.common_name.as_deref(), Some("reader-7"));
        assert_eq!(names.dns, ["volume01.storage.example", "volume01"]);
        assert_eq!(certificate_names(b"not a certificate"), None);
    }

    #[test]
    fn lists_and_wildcard_domains_admit_as_seaweedfs_does() {
        let list = NameAllowlist::parse(" reader-7, reader-8 ,", ".storage.example");
        let client = |name: &str| CertificateNames { common_name: Some(name.into()), ..Default::default() };
        assert!(list.admits_client(&client("reader-7")));
        assert!(list.admits_client(&client("a.storage.example")));
        assert!(list.admits_client(&client("a.storage.example.")));
        assert!(!list.admits_client(&client(".storage.example")), "no label before the domain");
        assert!(!list.admits_client(&client("evilstorage.example")));
        assert!(!list.admits_client(&client("reader-9")));
        assert!(!list.admits_client(&CertificateNames::default()), "no common name");
        let bare = NameAllowlist::parse("", "storage.example");
        assert!(bare.admits_client(&client("a.storage.example")));
        assert!(!bare.admits_client(&client("astorage.example")));
        let digits = NameAllowlist::parse("", ".0.1");
        assert!(!digits.admits_client(&client("10.0.0.1")), "an IP address is not a subdomain");
        let server = CertificateNames {
            common_name: Some("x".into()),
            dns: vec!["volume01".into()],
            uris: vec!["spiffe://cluster/volume".into()],
        };
        assert!(NameAllowlist::parse("volume01", "").admits_server(&server));
        assert!(NameAllowlist::parse("spiffe://cluster/volume", "").admits_server(&server));
        assert!(!NameAllowlist::parse("volume02", ".cluster").admits_server(&server));
        assert!(NameAllowlist::parse("", "").is_empty());
    }
}
