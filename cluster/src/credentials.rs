//! Cluster credentials: a cluster CA (made with rcgen) that signs one certificate per
//! node or client, and the rustls configurations that make both ends of every
//! connection prove membership (mutual TLS).
//!
//! Layout of a cluster directory made by [`init`]:
//!
//! ```text
//! DIR/ca.pem          the cluster CA certificate (public)
//! DIR/ca.key          the CA's private key (0600): whoever holds it can admit members
//! DIR/cert.pem        an identity named "admin", so DIR itself is usable as --credentials
//! DIR/key.pem         its private key (0600)
//! DIR/nodes/NAME/     one directory per identity issued by [`issue`]:
//!     ca.pem cert.pem key.pem   (copy this directory to the machine NAME; no CA key in it)
//! ```
//!
//! Every certificate names the DNS name [`SERVER_NAME`]: clients reach nodes by IP
//! address, and membership is decided by the CA signature, not by host names.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The DNS name every cluster certificate carries and every client checks.
pub const SERVER_NAME: &str = "offload-node";

/// Errors of making or loading credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `init` found credentials already there.
    #[error("{0} already holds cluster credentials; refusing to overwrite them")]
    Exists(PathBuf),
    /// A name that cannot be a directory name.
    #[error("`{0}` is not a valid identity name (use letters, digits, `-`, `_`, `.`)")]
    BadName(String),
    /// rcgen refused to make or parse a certificate.
    #[error("certificate {what}: {reason}")]
    Certificate {
        /// What was being made or read.
        what: String,
        /// rcgen's message.
        reason: String,
    },
    /// rustls refused the certificates or keys.
    #[error("TLS configuration from {dir}: {reason}")]
    Tls {
        /// The credentials directory.
        dir: PathBuf,
        /// The message.
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CredentialsError + '_ {
    move |source| CredentialsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn cert_error(what: &str) -> impl FnOnce(rcgen::Error) -> CredentialsError + '_ {
    move |e| CredentialsError::Certificate {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

/// Writes `contents` to `path` with mode `mode`, created fresh (the mode is set at
/// creation so a key is never readable by others, not even for a moment).
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CredentialsError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io_error(path))?;
    // An existing file keeps its old mode through `open`: set it explicitly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_error(path))?;
    file.write_all(contents.as_bytes()).map_err(io_error(path))
}

fn make_dir(path: &Path) -> Result<(), CredentialsError> {
    fs::create_dir_all(path).map_err(io_error(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io_error(path))
}

/// Creates a cluster CA in `dir` and an "admin" identity next to it (see the module doc
/// for the layout). Refuses to overwrite existing credentials.
pub fn init(dir: &Path) -> Result<(), CredentialsError> {
    let ca_key_path = dir.join("ca.key");
    if ca_key_path.exists() {
        return Err(CredentialsError::Exists(dir.to_path_buf()));
    }
    make_dir(dir)?;
    let ca_key = KeyPair::generate().map_err(cert_error("CA key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error("CA"))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "offload cluster CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let ca_cert = params.self_signed(&ca_key).map_err(cert_error("CA"))?;
    write_file(&ca_key_path, &ca_key.serialize_pem(), 0o600)?;
    write_file(&dir.join("ca.pem"), &ca_cert.pem(), 0o600)?;
    let (cert, key) = sign_identity(dir, "admin")?;
    write_file(&dir.join("cert.pem"), &cert, 0o600)?;
    write_file(&dir.join("key.pem"), &key, 0o600)
}

/// Issues a certificate for the node or client `name`, signed by the cluster CA in
/// `dir`, into `dir/nodes/NAME/` (ca.pem, cert.pem, key.pem). Returns that directory,
/// which is all the machine `name` needs. Issuing again replaces the identity.
pub fn issue(dir: &Path, name: &str) -> Result<PathBuf, CredentialsError> {
    let valid = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(CredentialsError::BadName(name.to_string()));
    }
    let (cert, key) = sign_identity(dir, name)?;
    let out = dir.join("nodes").join(name);
    make_dir(&out)?;
    let ca_pem_path = dir.join("ca.pem");
    let ca_pem = fs::read_to_string(&ca_pem_path).map_err(io_error(&ca_pem_path))?;
    write_file(&out.join("ca.pem"), &ca_pem, 0o600)?;
    write_file(&out.join("cert.pem"), &cert, 0o600)?;
    write_file(&out.join("key.pem"), &key, 0o600)?;
    Ok(out)
}

/// A certificate (PEM) and key (PEM) for `name`, signed by the CA of `dir`.
fn sign_identity(dir: &Path, name: &str) -> Result<(String, String), CredentialsError> {
    let ca_key_path = dir.join("ca.key");
    let ca_pem_path = dir.join("ca.pem");
    let ca_key_pem = fs::read_to_string(&ca_key_path).map_err(io_error(&ca_key_path))?;
    let ca_pem = fs::read_to_string(&ca_pem_path).map_err(io_error(&ca_pem_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(cert_error("CA key"))?;
    // rcgen signs with an issuer `Certificate`; rebuilding it from the stored CA
    // certificate and key gives the same subject and key, so signatures chain to ca.pem.
    let ca_params = CertificateParams::from_ca_cert_pem(&ca_pem).map_err(cert_error("CA"))?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_error("CA"))?;

    let key = KeyPair::generate().map_err(cert_error(name))?;
    let mut params =
        CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(cert_error(name))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .map_err(cert_error(name))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A loaded identity: the cluster CA to trust and this member's certificate and key.
#[derive(Debug)]
pub struct Credentials {
    dir: PathBuf,
    ca: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Credentials {
            dir: self.dir.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// Reads one PEM object; a missing file is reported as such, not as a PEM error.
fn load_pem<T>(
    path: &Path,
    parse: impl FnOnce(&Path) -> Result<T, rustls::pki_types::pem::Error>,
) -> Result<T, CredentialsError> {
    if let Err(source) = fs::metadata(path) {
        return Err(CredentialsError::Io {
            path: path.to_path_buf(),
            source,
        });
    }
    parse(path).map_err(pem_error(path))
}

fn pem_error(path: &Path) -> impl FnOnce(rustls::pki_types::pem::Error) -> CredentialsError + '_ {
    move |e| CredentialsError::Certificate {
        what: path.display().to_string(),
        reason: e.to_string(),
    }
}

impl Credentials {
    /// Loads `dir/ca.pem`, `dir/cert.pem` and `dir/key.pem`: a cluster directory made by
    /// [`init`] or an identity directory made by [`issue`].
    pub fn load(dir: &Path) -> Result<Credentials, CredentialsError> {
        Ok(Credentials {
            dir: dir.to_path_buf(),
            ca: load_pem(&dir.join("ca.pem"), |p| CertificateDer::from_pem_file(p))?,
            cert: load_pem(&dir.join("cert.pem"), |p| CertificateDer::from_pem_file(p))?,
            key: load_pem(&dir.join("key.pem"), |p| {
                PrivatePkcs8KeyDer::from_pem_file(p)
            })?,
        })
    }

    /// The directory the credentials came from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn tls_error(&self, reason: impl std::fmt::Display) -> CredentialsError {
        CredentialsError::Tls {
            dir: self.dir.clone(),
            reason: reason.to_string(),
        }
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, CredentialsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(|e| self.tls_error(e))?;
        Ok(Arc::new(roots))
    }

    /// A server configuration that requires a client certificate signed by the CA.
    pub(crate) fn server_config(&self) -> Result<rustls::ServerConfig, CredentialsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            provider.clone(),
        )
        .build()
        .map_err(|e| self.tls_error(e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| self.tls_error(e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .map_err(|e| self.tls_error(e))?;
        config.alpn_protocols = vec![crate::protocol::ALPN.to_vec()];
        Ok(config)
    }

    /// A client configuration that trusts only the CA and presents this identity.
    pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig, CredentialsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| self.tls_error(e))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .map_err(|e| self.tls_error(e))?;
        config.alpn_protocols = vec![crate::protocol::ALPN.to_vec()];
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_private_files_and_issue_makes_a_loadable_identity() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = dir.path().join("cluster");
        init(&cluster).expect("init");
        for file in ["ca.key", "ca.pem", "cert.pem", "key.pem"] {
            let mode = fs::metadata(cluster.join(file))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        assert!(matches!(init(&cluster), Err(CredentialsError::Exists(_))));
        let node = issue(&cluster, "node-1").expect("issue");
        assert!(!node.join("ca.key").exists());
        let creds = Credentials::load(&node).expect("load");
        creds.server_config().expect("server config");
        creds.client_config().expect("client config");
        assert!(matches!(
            issue(&cluster, "../x"),
            Err(CredentialsError::BadName(_))
        ));
    }
}
