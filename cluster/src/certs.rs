//! What a certificate says (name, validity, purpose, issuer), and TLS verifiers that
//! say in words why a peer's certificate was refused.
//!
//! rustls's own errors name the rule that failed (`UnknownIssuer`, `Expired`), not the
//! situation. The verifiers here wrap the WebPKI ones and turn a refusal into what a user
//! can act on: the peer belongs to another cluster (with both CAs' SHA-256 fingerprints,
//! as `openssl x509 -noout -fingerprint -sha256` prints them), a certificate expired on a
//! given day or is not valid yet, was revoked by the cluster's administrator, or may not
//! be used for offload's connections. The text travels to the refused peer too: quinn
//! puts it in the CONNECTION_CLOSE it sends.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

/// The parts of a certificate that offload checks and reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The subject's common name (the identity's name), or the whole subject.
    pub name: String,
    /// The issuer's common name.
    pub issuer: String,
    /// The serial number in hexadecimal, without leading zeros (what a revocation list
    /// names).
    pub serial: String,
    /// Valid from (Unix seconds).
    pub not_before: i64,
    /// Valid until (Unix seconds).
    pub not_after: i64,
    /// Whether the extended key usage allows both TLS server and client authentication
    /// (every offload member is both).
    pub server_and_client_auth: bool,
}

/// Reads `der` as an X.509 certificate.
pub fn summarize(der: &[u8]) -> Result<Summary, String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not a certificate: {e}"))?;
    let common_name = |name: &x509_parser::x509::X509Name<'_>| {
        name.iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| name.to_string())
    };
    let server_and_client_auth = match cert.extended_key_usage() {
        Ok(Some(eku)) => eku.value.server_auth && eku.value.client_auth,
        // No extension: any purpose is allowed.
        Ok(None) => true,
        Err(_) => false,
    };
    Ok(Summary {
        name: common_name(cert.subject()),
        issuer: common_name(cert.issuer()),
        serial: serial_hex(cert.raw_serial()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        server_and_client_auth,
    })
}

/// A DER integer's content bytes as lowercase hexadecimal without leading zeros, so
/// that the serial of a certificate and the same serial in a revocation list compare
/// equal whatever padding each encoding carries.
pub fn serial_hex(raw: &[u8]) -> String {
    let digits: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.to_string()
    }
}

/// The SHA-256 fingerprint of a certificate, as `AB:CD:...` (what OpenSSL prints).
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// A Unix time as a UTC date and time, `2025-01-31 23:59 UTC`.
pub fn date(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let seconds = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        seconds / 3600,
        seconds % 3600 / 60
    )
}

/// A refusal explained in words.
#[derive(Debug)]
struct Explained(String);

impl fmt::Display for Explained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Explained {}

/// Rewrites a verifier's refusal of `who`'s certificate `end_entity` (presented with
/// `intermediates`; offload members send their cluster CA there) into words, given our
/// CA's fingerprint.
fn explain(
    error: Error,
    who: &str,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    our_ca: &str,
) -> Error {
    let Error::InvalidCertificate(problem) = &error else {
        return error;
    };
    let Ok(cert) = summarize(end_entity) else {
        return error;
    };
    let name = &cert.name;
    let text = match problem {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!(
            "the certificate of {who} (`{name}`) expired on {}: issue a new one (offload cluster add-node --name {name})",
            date(cert.not_after)
        ),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => format!(
            "the certificate of {who} (`{name}`) is not valid before {}: is a clock wrong?",
            date(cert.not_before)
        ),
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            let theirs = intermediates.first().map_or_else(
                || format!("a CA named `{}` that it did not send", cert.issuer),
                |ca| format!("the CA with SHA-256 fingerprint {}", fingerprint(ca)),
            );
            format!(
                "{who} belongs to another cluster: its certificate (`{name}`) was issued by {theirs}, but this cluster's CA has fingerprint {our_ca}"
            )
        }
        CertificateError::Revoked => format!(
            "the certificate of {who} (`{name}`, serial {}) was revoked by the cluster's administrator (offload cluster revoke {name}); a member with a new certificate (offload cluster add-node --name {name} --reissue) is accepted again",
            cert.serial
        ),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            format!(
                "the certificate of {who} (`{name}`) may not be used for offload connections: its extended key usage lacks TLS server and client authentication"
            )
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "the certificate of {who} (`{name}`) is not an offload cluster certificate (it does not name `{}`)",
                crate::credentials::SERVER_NAME
            )
        }
        _ => return error,
    };
    // `Error::Other` shows its text as it is (`CertificateError::Other` would show
    // Rust debug syntax), after rustls's `other error: `, which `plain` removes.
    Error::Other(rustls::OtherError(Arc::new(Explained(text))))
}

/// A TLS error's text without rustls's prefixes (`invalid peer certificate: `,
/// `other error: `), for messages.
pub fn plain(text: &str) -> String {
    let mut text = text.trim();
    for prefix in ["invalid peer certificate: ", "other error: "] {
        text = text.strip_prefix(prefix).unwrap_or(text);
    }
    text.to_string()
}

/// The client's check of a node's certificate, explaining refusals.
#[derive(Debug)]
pub(crate) struct ExplainingServerVerifier {
    pub(crate) inner: Arc<rustls::client::WebPkiServerVerifier>,
    pub(crate) our_ca: String,
}

impl ServerCertVerifier for ExplainingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| explain(e, "the node", end_entity, intermediates, &self.our_ca))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The node's check of a client's certificate, explaining refusals (in the node's log,
/// and to the client through the connection's close).
#[derive(Debug)]
pub(crate) struct ExplainingClientVerifier {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    pub(crate) our_ca: String,
}

impl ClientCertVerifier for ExplainingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| explain(e, "the client", end_entity, intermediates, &self.our_ca))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_read_as_utc_calendar_days() {
        assert_eq!(date(0), "1970-01-01 00:00 UTC");
        assert_eq!(date(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(date(1_735_689_599), "2024-12-31 23:59 UTC");
        assert_eq!(date(-86_400), "1969-12-31 00:00 UTC");
    }

    #[test]
    fn serials_compare_without_padding() {
        assert_eq!(serial_hex(&[0x00, 0x8a, 0x01]), "8a01");
        assert_eq!(serial_hex(&[0x0a, 0x01]), "a01");
        assert_eq!(serial_hex(&[0x00]), "0");
    }

    #[test]
    fn fingerprints_are_sha256_in_openssl_form() {
        let text = fingerprint(b"abc");
        assert!(text.starts_with("BA:78:16:BF:8F:01:CF:EA"), "{text}");
        assert_eq!(text.len(), 32 * 3 - 1);
    }
}
