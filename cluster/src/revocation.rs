//! Revocation: a certificate revocation list (CRL) signed by the cluster CA, which both
//! ends of a connection check during the handshake (rustls's WebPKI verifiers take it),
//! so a revoked member is refused before it can send a request, with a message that
//! says so.
//!
//! `offload cluster revoke NAME` ([`crate::credentials::revoke`]) adds every certificate
//! issued to NAME to `DIR/crl.pem` (a new list with a higher CRL number, signed by the
//! CA key) and copies the list into each `DIR/nodes/*/` identity directory. A member
//! reads `crl.pem` beside its credentials (or the file its configuration names) when it
//! loads them; a node checks the file again every second (and at once on SIGHUP) and
//! uses a changed list for the next handshake, closing the connections of members it
//! revokes. A list must be signed by the cluster CA and may not go back to a lower
//! number than the one in use: an old list cannot undo a revocation.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateRevocationListDer;

use crate::credentials::CredentialsError;

/// The name of the revocation list in a credentials directory.
pub const FILE_NAME: &str = "crl.pem";

/// A revocation list that verified against the cluster CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationList {
    der: CertificateRevocationListDer<'static>,
    /// Its CRL number: every new list of a cluster has a higher one.
    pub number: u64,
    /// Serial numbers of the revoked certificates ([`crate::certs::serial_hex`]).
    pub serials: BTreeSet<String>,
    /// When it was issued (Unix seconds).
    pub issued: i64,
}

impl RevocationList {
    /// The list as DER, for the verifiers.
    pub(crate) fn der(&self) -> CertificateRevocationListDer<'static> {
        self.der.clone()
    }

    /// Whether the certificate with this serial is revoked.
    pub fn revokes(&self, serial: &str) -> bool {
        self.serials.contains(serial)
    }

    /// Parses and checks a PEM list: signed by `ca` (DER), with a CRL number.
    pub fn from_pem(
        pem: &[u8],
        ca: &[u8],
        path: &Path,
    ) -> Result<RevocationList, CredentialsError> {
        use rustls::pki_types::pem::PemObject;
        use x509_parser::prelude::{FromDer, X509Certificate};
        use x509_parser::revocation_list::CertificateRevocationList;
        let unusable = |reason: String| CredentialsError::Unusable {
            path: path.to_path_buf(),
            reason,
        };
        let der = CertificateRevocationListDer::from_pem_slice(pem)
            .map_err(|e| unusable(format!("not a revocation list (PEM `X509 CRL`): {e}")))?;
        let (_, crl) = CertificateRevocationList::from_der(&der)
            .map_err(|e| unusable(format!("not a revocation list: {e}")))?;
        let (_, ca) =
            X509Certificate::from_der(ca).map_err(|e| unusable(format!("the CA: {e}")))?;
        crl.verify_signature(ca.public_key()).map_err(|_| {
            unusable(format!(
                "the revocation list is not signed by this cluster's CA (fingerprint {}): it comes from another cluster",
                crate::certs::fingerprint(ca.as_ref())
            ))
        })?;
        let number = crl
            .crl_number()
            .and_then(|n| {
                let bytes = n.to_bytes_be();
                (bytes.len() <= 8).then(|| {
                    bytes
                        .iter()
                        .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte))
                })
            })
            .ok_or_else(|| unusable("the revocation list has no CRL number".into()))?;
        let serials = crl
            .iter_revoked_certificates()
            .map(|revoked| crate::certs::serial_hex(revoked.raw_serial()))
            .collect();
        let issued = crl.last_update().timestamp();
        Ok(RevocationList {
            der,
            number,
            serials,
            issued,
        })
    }
}

/// Reads the list at `path`, checked against the CA `ca` (DER); `None` if there is no
/// such file (a cluster that never revoked anything).
pub fn read(path: &Path, ca: &[u8]) -> Result<Option<RevocationList>, CredentialsError> {
    match fs::read(path) {
        Ok(pem) => RevocationList::from_pem(&pem, ca, path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CredentialsError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// What a node does with a list it read again: the same as before, a newer one, or one
/// it refuses (older than the one in use, so it would undo revocations).
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// Nothing changed.
    Same,
    /// A newer list (or the first one) to use from now on.
    Newer(Box<RevocationList>),
    /// The file went away or holds an older list: the one in use stays.
    Refused(String),
}

/// Decides what to do with `found` (the file's current list) given `current`.
pub fn reload(
    current: Option<&RevocationList>,
    found: Option<RevocationList>,
    path: &Path,
) -> Reload {
    match (current, found) {
        (None, None) => Reload::Same,
        (Some(_), None) => Reload::Refused(format!(
            "{} is gone; the revocation list in use stays",
            path.display()
        )),
        (None, Some(new)) => Reload::Newer(Box::new(new)),
        (Some(old), Some(new)) if new == *old => Reload::Same,
        (Some(old), Some(new)) if new.number > old.number => Reload::Newer(Box::new(new)),
        (Some(old), Some(new)) => Reload::Refused(format!(
            "{} holds revocation list number {}, not newer than number {} in use: an older list cannot undo revocations; it is ignored",
            path.display(),
            new.number,
            old.number
        )),
    }
}

/// Where a credentials directory keeps its revocation list.
pub fn default_path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}
