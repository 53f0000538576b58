//! Mutual TLS for the stream transport, with the certificates a SeaweedFS operator already
//! has (`crate::security`): the exporter presents `[grpc.volume]`'s certificate and admits
//! only readers whose certificate `[grpc] ca` signed; the reader presents `[grpc.client]`'s
//! and reads only from exporters whose certificate that CA signed. As in SeaweedFS ("the host
//! name is not checked, so the PEM files can be shared"), the names in the exporter's
//! certificate are not compared with the address dialled: the CA is the trust (a volume
//! server's certificate names a host, and readers dial addresses from the master).
//!
//! The protocol inside is unchanged: the same handshake (the read key's challenge and
//! response, when there is a key), requests and replies. [`TlsLink`] is the non-blocking
//! record layer both sides use: ciphertext in from the socket, plaintext handed out without a
//! copy of ours, plaintext in, records out.

use std::io::{self, BufRead, Read, Write};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{self, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};

use super::tls_names::{certificate_names, NameAllowlist};
use crate::security::TlsFiles;

/// Records read and decrypted per call at most, when they bring no plaintext (a peer sending
/// only empty records or key updates cannot hold the caller).
const RECORD_READS_MAX: usize = 16;

/// The crypto provider: ring (the `rustls` features chosen in `Cargo.toml`). rustls 0.23.48
/// marks it deprecated because it has no post-quantum key exchange; aws-lc-rs has one at the
/// cost of building a large C library (`docs/dependencies.md`). Both run AES-GCM in assembly.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(crypto::ring::default_provider())
}

/// The export role's TLS configuration: its certificate, and readers' certificates required
/// and checked against the CA.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let roots = Arc::new(root_store(files)?);
    let provider = provider();
    let signed = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|error| format!("the CA {} cannot check readers: {error}", files.ca.display()))?;
    let verifier: Arc<dyn ClientCertVerifier> = if files.allowed_peers.is_empty() {
        signed
    } else {
        Arc::new(AllowedReaders { signed, allowed: files.allowed_peers.clone() })
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates(files)?, private_key(files)?)
        .map_err(|error| {
            format!("{} and {} do not make a certificate: {error}", files.cert.display(), files.key.display())
        })?;
    // Readers do not resume sessions: no tickets to send.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The read role's TLS configuration: its certificate, and exporters' certificates checked
/// against the CA (not against the address: see the module's comment).
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let verifier = SignedByCa {
        roots: Arc::new(root_store(files)?),
        provider: provider.clone(),
        allowed: files.allowed_peers.clone(),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(certificates(files)?, private_key(files)?)
        .map_err(|error| {
            format!("{} and {} do not make a certificate: {error}", files.cert.display(), files.key.display())
        })?;
    Ok(Arc::new(config))
}

/// The name a reader gives the exporter in its TLS hello (not checked, see above).
pub fn server_name(address: std::net::SocketAddr) -> ServerName<'static> {
    ServerName::IpAddress(address.ip().into())
}

fn root_store(files: &TlsFiles) -> Result<RootCertStore, String> {
    let ca = files.ca.display();
    let mut roots = RootCertStore::empty();
    let certificates =
        CertificateDer::pem_file_iter(&files.ca).map_err(|error| format!("cannot read the CA {ca}: {error}"))?;
    for certificate in certificates {
        let certificate = certificate.map_err(|error| format!("cannot read the CA {ca}: {error}"))?;
        roots
            .add(certificate)
            .map_err(|error| format!("the CA {ca} holds a certificate that cannot be a root: {error}"))?;
    }
    if roots.is_empty() {
        return Err(format!("the CA {ca} holds no certificate"));
    }
    Ok(roots)
}

fn certificates(files: &TlsFiles) -> Result<Vec<CertificateDer<'static>>, String> {
    let cert = files.cert.display();
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| format!("cannot read the certificate {cert}: {error}"))?;
    if chain.is_empty() {
        return Err(format!("{cert} holds no certificate"));
    }
    Ok(chain)
}

fn private_key(files: &TlsFiles) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|error| format!("cannot read the private key {}: {error}", files.key.display()))
}

/// A certificate whose names an allowlist does not admit: the error says which names and
/// which list (the peer gets a `certificate_unknown` alert).
fn name_refused(names: Option<&super::tls_names::CertificateNames>, list: &str) -> rustls::Error {
    let described = match names {
        Some(names) => format!("a certificate with {names:?}"),
        None => "a certificate that does not parse".into(),
    };
    let error = io::Error::other(format!("{described} is not admitted by {list}"));
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(error))))
}

/// Readers' certificates: signed by the CA (rustls's verifier) and with a common name the
/// allowlist admits.
#[derive(Debug)]
struct AllowedReaders {
    signed: Arc<dyn ClientCertVerifier>,
    allowed: NameAllowlist,
}

impl ClientCertVerifier for AllowedReaders {
    fn offer_client_auth(&self) -> bool {
        self.signed.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.signed.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.signed.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.signed.verify_client_cert(end_entity, intermediates, now)?;
        let names = certificate_names(end_entity);
        match &names {
            Some(found) if self.allowed.admits_client(found) => Ok(verified),
            _ => Err(name_refused(names.as_ref(), "[grpc.volume] allowed_commonNames")),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signed.verify_tls12_signature(message, certificate, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signed.verify_tls13_signature(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signed.supported_verify_schemes()
    }
}

/// Accepts an exporter's certificate when the CA signed it (its chain, validity and key use)
/// and, when the reader has an allowlist, one of its names is admitted; whatever address was
/// dialled. Its handshake signatures are checked as usual.
#[derive(Debug)]
struct SignedByCa {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    allowed: NameAllowlist,
}

impl ServerCertVerifier for SignedByCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let certificate = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &certificate,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if !self.allowed.is_empty() {
            let names = certificate_names(end_entity);
            if !names.as_ref().is_some_and(|found| self.allowed.admits_server(found)) {
                return Err(name_refused(names.as_ref(), "allowed_server_commonNames"));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            certificate,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// One connection's TLS state over a non-blocking socket.
#[derive(Debug)]
pub struct TlsLink {
    tls: rustls::Connection,
    /// Decrypted bytes rustls holds that nobody has taken (the socket's readiness cannot show
    /// them).
    plaintext_held: usize,
    /// The last [`TlsLink::read_plaintext`] stopped at its bound of records with bytes maybe
    /// left in the socket (an edge-triggered caller must come back without an event).
    cut_short: bool,
}

impl TlsLink {
    pub fn new(tls: impl Into<rustls::Connection>) -> TlsLink {
        TlsLink { tls: tls.into(), plaintext_held: 0, cut_short: false }
    }

    /// A link whose handshake is done and whose peer may already have sent plaintext (the
    /// reader's, after its blocking handshake).
    pub fn established(tls: impl Into<rustls::Connection>) -> io::Result<TlsLink> {
        let mut link = TlsLink::new(tls);
        let state = link.tls.process_new_packets().map_err(invalid_data)?;
        link.plaintext_held = state.plaintext_bytes_to_read();
        Ok(link)
    }

    /// Whether decrypted bytes wait to be taken.
    pub fn holds_plaintext(&self) -> bool {
        self.plaintext_held > 0
    }

    pub fn is_handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }

    /// Whether the last [`TlsLink::read_plaintext`] stopped at its bound rather than at an
    /// empty socket.
    pub fn was_cut_short(&self) -> bool {
        self.cut_short
    }

    /// Hands `take` the next decrypted bytes (it returns how many it used), reading and
    /// decrypting records from `socket` when none are held. `Ok(0)`: the peer closed the
    /// connection; `WouldBlock`: the socket has no whole record yet.
    pub fn read_plaintext<S: Read + Write>(
        &mut self,
        socket: &mut S,
        take: impl FnOnce(&[u8]) -> usize,
    ) -> io::Result<usize> {
        let mut take = Some(take);
        self.cut_short = false;
        for _ in 0..RECORD_READS_MAX {
            let mut reader = self.tls.reader();
            match reader.fill_buf() {
                Ok([]) => return Ok(0),
                Ok(chunk) => {
                    let used = take.take().map_or(0, |take| take(chunk)).min(chunk.len());
                    reader.consume(used);
                    self.plaintext_held = self.plaintext_held.saturating_sub(used);
                    return Ok(used);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                // The TCP connection ended without TLS's close: the peer is gone all the same.
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(error) => return Err(error),
            }
            if self.tls.read_tls(socket)? == 0 {
                return Ok(0);
            }
            match self.tls.process_new_packets() {
                Ok(state) => self.plaintext_held = state.plaintext_bytes_to_read(),
                Err(error) => {
                    // rustls queued an alert saying why: send it if the socket takes it.
                    let _ = self.tls.write_tls(socket);
                    return Err(invalid_data(error));
                }
            }
        }
        self.cut_short = true;
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// Encrypts what of `bytes` rustls takes (it holds a bounded amount: `Ok(0)` when full).
    pub fn write_plaintext(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.tls.writer().write(bytes)
    }

    /// Sends the records rustls holds: the bytes sent, and whether it holds none now (`false`:
    /// the socket is full).
    pub fn send_records<S: Write>(&mut self, socket: &mut S) -> io::Result<(usize, bool)> {
        let mut sent = 0;
        // Bounded: each pass sends bytes or returns; rustls holds a bounded amount.
        while self.tls.wants_write() {
            match self.tls.write_tls(socket) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(count) => sent += count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok((sent, false)),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok((sent, true))
    }
}

fn invalid_data(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}
