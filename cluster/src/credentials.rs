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
//!     crl.pem                   the revocation list, once anything was revoked
//! DIR/issued/SERIAL.pem   every certificate ever issued (public), for [`issued`]
//! DIR/crl.pem         the revocation list written by [`revoke`] (see [`crate::revocation`])
//! ```
//!
//! An identity's name is its certificate's common name: a node is known by it (its
//! default `--name`), and [`issue`] refuses a name already issued unless asked to
//! re-issue it.
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
    /// `issue` was asked for a name that was issued before.
    #[error("an identity named `{name}` was already issued ({where_}); to issue it a new certificate pass --reissue (the old one stays valid until you revoke it: offload cluster revoke {name})")]
    NameTaken {
        /// The name.
        name: String,
        /// Where it is, in words.
        where_: String,
    },
    /// `revoke` was asked for a name never issued.
    #[error("no identity named `{name}` was issued from {dir} (offload cluster list shows them)")]
    UnknownName {
        /// The name.
        name: String,
        /// The cluster directory.
        dir: PathBuf,
    },
    /// rcgen refused to make or parse a certificate.
    #[error("certificate {what}: {reason}")]
    Certificate {
        /// What was being made or read.
        what: String,
        /// rcgen's message.
        reason: String,
    },
    /// A key or credentials directory that others can read or write: refused.
    #[error("refusing {path}: {reason}")]
    Insecure {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// This member's own certificate cannot be used (expired, not valid yet, wrong
    /// purpose, or not issued by the cluster CA next to it).
    #[error("{path}: {reason}")]
    Unusable {
        /// The certificate.
        path: PathBuf,
        /// Why, and what to do.
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
    write_file(&dir.join("key.pem"), &key, 0o600)?;
    record_issued(dir, &cert)
}

/// Keeps a copy of every certificate issued under `DIR/issued/SERIAL.pem`, so that
/// [`issued`] lists them and [`revoke`] finds their serials after the identity
/// directories were copied away.
fn record_issued(dir: &Path, cert_pem: &str) -> Result<(), CredentialsError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(pem_error(dir))?;
    let summary =
        crate::certs::summarize(&der).map_err(|reason| CredentialsError::Certificate {
            what: "issued certificate".into(),
            reason,
        })?;
    let ledger = dir.join(LEDGER);
    make_dir(&ledger)?;
    write_file(
        &ledger.join(format!("{}.pem", summary.serial)),
        cert_pem,
        0o600,
    )
}

/// The folder of the cluster directory that keeps every issued certificate.
const LEDGER: &str = "issued";

/// Refuses `path` unless it belongs to this user and nobody else may write it (a
/// directory) or read it (`private`: a key).
fn check_private(path: &Path, private: bool) -> Result<(), CredentialsError> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).map_err(io_error(path))?;
    let insecure = |reason: String| CredentialsError::Insecure {
        path: path.to_path_buf(),
        reason,
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(insecure(format!(
            "it belongs to user {}, not to this user ({me})",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o777;
    let (mask, what, fix) = if private {
        (0o077, "readable or writable by others", "600")
    } else {
        (0o022, "writable by others", "700")
    };
    if mode & mask != 0 {
        return Err(insecure(format!(
            "it is {what} (mode {mode:o}); make it private: chmod {fix} {}",
            path.display()
        )));
    }
    Ok(())
}

/// Issues a certificate for the node or client `name`, signed by the cluster CA in
/// `dir`, into `dir/nodes/NAME/` (ca.pem, cert.pem, key.pem, and the revocation list if
/// there is one). Returns that directory, which is all the machine `name` needs. A name
/// issued before is refused unless `reissue` is set; then the directory gets a new key
/// and certificate (the old certificate stays valid until it is revoked).
pub fn issue(dir: &Path, name: &str, reissue: bool) -> Result<PathBuf, CredentialsError> {
    let valid = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(CredentialsError::BadName(name.to_string()));
    }
    let out = dir.join("nodes").join(name);
    if !reissue {
        let earlier: Vec<Issued> = issued(dir)?
            .into_iter()
            .filter(|i| i.name == name)
            .collect();
        if let Some(first) = earlier.first() {
            let where_ = match &first.location {
                Some(path) => format!("serial {}, in {}", first.serial, path.display()),
                None => format!("serial {}", first.serial),
            };
            return Err(CredentialsError::NameTaken {
                name: name.to_string(),
                where_,
            });
        }
        if out.exists() {
            return Err(CredentialsError::NameTaken {
                name: name.to_string(),
                where_: out.display().to_string(),
            });
        }
    }
    let (cert, key) = sign_identity(dir, name)?;
    make_dir(&out)?;
    let ca_pem_path = dir.join("ca.pem");
    let ca_pem = fs::read_to_string(&ca_pem_path).map_err(io_error(&ca_pem_path))?;
    write_file(&out.join("ca.pem"), &ca_pem, 0o600)?;
    write_file(&out.join("cert.pem"), &cert, 0o600)?;
    write_file(&out.join("key.pem"), &key, 0o600)?;
    let crl = crate::revocation::default_path(dir);
    if crl.exists() {
        let pem = fs::read_to_string(&crl).map_err(io_error(&crl))?;
        write_file(&crate::revocation::default_path(&out), &pem, 0o644)?;
    }
    record_issued(dir, &cert)?;
    Ok(out)
}

/// A certificate issued from a cluster directory, as [`issued`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The identity's name (the certificate's common name).
    pub name: String,
    /// Its serial number ([`crate::certs::serial_hex`]).
    pub serial: String,
    /// Valid from (Unix seconds).
    pub not_before: i64,
    /// Valid until (Unix seconds).
    pub not_after: i64,
    /// Whether the cluster's revocation list revokes it.
    pub revoked: bool,
    /// Whether a later certificate was issued to the same name.
    pub superseded: bool,
    /// Its identity directory, if it is still there (`DIR` for `admin`,
    /// `DIR/nodes/NAME` for the others).
    pub location: Option<PathBuf>,
}

/// Every certificate issued from the cluster directory `dir`, oldest first per name:
/// those in `DIR/issued/`, and the identity directories' own (clusters made before the
/// ledger existed), with their revocation status from `DIR/crl.pem`.
pub fn issued(dir: &Path) -> Result<Vec<Issued>, CredentialsError> {
    let ca_path = dir.join("ca.pem");
    let ca = load_pem(&ca_path, |p| CertificateDer::from_pem_file(p))?;
    let crl = crate::revocation::read(&crate::revocation::default_path(dir), &ca)?;
    let mut files: Vec<(PathBuf, Option<PathBuf>)> = Vec::new();
    let ledger = dir.join(LEDGER);
    if ledger.is_dir() {
        for entry in fs::read_dir(&ledger).map_err(io_error(&ledger))? {
            let path = entry.map_err(io_error(&ledger))?.path();
            if path.extension().is_some_and(|e| e == "pem") {
                files.push((path, None));
            }
        }
    }
    files.push((dir.join("cert.pem"), Some(dir.to_path_buf())));
    let nodes = dir.join("nodes");
    if nodes.is_dir() {
        for entry in fs::read_dir(&nodes).map_err(io_error(&nodes))? {
            let path = entry.map_err(io_error(&nodes))?.path();
            files.push((path.join("cert.pem"), Some(path)));
        }
    }
    let mut found: Vec<Issued> = Vec::new();
    for (path, location) in files {
        let Ok(der) = CertificateDer::from_pem_file(&path) else {
            continue;
        };
        let Ok(cert) = crate::certs::summarize(&der) else {
            continue;
        };
        if !issued_by(&der, &ca) {
            continue;
        }
        match found.iter_mut().find(|i| i.serial == cert.serial) {
            Some(known) => {
                if location.is_some() {
                    known.location = location;
                }
            }
            None => found.push(Issued {
                revoked: crl.as_ref().is_some_and(|l| l.revokes(&cert.serial)),
                name: cert.name,
                serial: cert.serial,
                not_before: cert.not_before,
                not_after: cert.not_after,
                superseded: false,
                location,
            }),
        }
    }
    // Certificates of one name can share their start time (issued within a second, or
    // with a fixed start): the one in the identity directory is the newest, so it goes
    // last; the serial (random) only orders the rest the same way every time.
    found.sort_by(|a, b| {
        (&a.name, a.not_before, a.location.is_some(), &a.serial).cmp(&(
            &b.name,
            b.not_before,
            b.location.is_some(),
            &b.serial,
        ))
    });
    // The identity directory holds the newest certificate of its name: any other of
    // that name was superseded by a re-issue.
    let current: Vec<(String, String)> = found
        .iter()
        .filter(|i| i.location.is_some())
        .map(|i| (i.name.clone(), i.serial.clone()))
        .collect();
    for issued in &mut found {
        issued.superseded = issued.location.is_none()
            && current
                .iter()
                .any(|(name, serial)| *name == issued.name && *serial != issued.serial);
    }
    Ok(found)
}

/// What [`revoke`] did.
#[derive(Debug, Clone)]
pub struct Revocation {
    /// The serials newly revoked (the name's certificates that were not revoked yet).
    pub serials: Vec<String>,
    /// The new list's CRL number.
    pub number: u64,
    /// The list written (`DIR/crl.pem`).
    pub path: PathBuf,
    /// The identity directories that got a copy of it.
    pub copies: Vec<PathBuf>,
}

/// Revokes every certificate issued to `name` from the cluster directory `dir`: writes
/// a new revocation list `DIR/crl.pem` (the earlier entries and these, a CRL number one
/// higher, signed by the CA key) and copies it into every `DIR/nodes/*/` directory.
/// Nodes and clients must get the new file (copy it beside their credentials, or where
/// their configuration names it) to refuse the revoked identity.
pub fn revoke(dir: &Path, name: &str) -> Result<Revocation, CredentialsError> {
    let all = issued(dir)?;
    let targets: Vec<&Issued> = all.iter().filter(|i| i.name == name).collect();
    if targets.is_empty() {
        return Err(CredentialsError::UnknownName {
            name: name.to_string(),
            dir: dir.to_path_buf(),
        });
    }
    let (ca_cert, ca_key, ca_pem) = load_ca(dir)?;
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(pem_error(dir))?;
    let path = crate::revocation::default_path(dir);
    let old = crate::revocation::read(&path, &ca_der)?;
    let mut serials = old.as_ref().map(|l| l.serials.clone()).unwrap_or_default();
    let fresh: Vec<String> = targets
        .iter()
        .filter(|t| serials.insert(t.serial.clone()))
        .map(|t| t.serial.clone())
        .collect();
    let number = old.as_ref().map_or(1, |l| l.number + 1);
    let now = time::OffsetDateTime::now_utc();
    let revoked_certs = serials
        .iter()
        .map(|serial| {
            let bytes = hex_bytes(serial).ok_or_else(|| CredentialsError::Certificate {
                what: "revocation list".into(),
                reason: format!("serial `{serial}` is not hexadecimal"),
            })?;
            Ok(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&bytes),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, CredentialsError>>()?;
    let params = rcgen::CertificateRevocationListParams {
        this_update: now,
        // Lists do not expire: a node keeps refusing revoked members until a newer list
        // comes (the verifiers do not enforce `next_update`).
        next_update: rcgen::date_time_ymd(2124, 1, 1),
        crl_number: rcgen::SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(&ca_cert, &ca_key)
        .map_err(cert_error("revocation list"))?;
    let pem = crl.pem().map_err(cert_error("revocation list"))?;
    write_file(&path, &pem, 0o644)?;
    let mut copies = Vec::new();
    let nodes = dir.join("nodes");
    if nodes.is_dir() {
        for entry in fs::read_dir(&nodes).map_err(io_error(&nodes))? {
            let node = entry.map_err(io_error(&nodes))?.path();
            if node.join("cert.pem").exists() {
                write_file(&crate::revocation::default_path(&node), &pem, 0o644)?;
                copies.push(node);
            }
        }
    }
    copies.sort();
    Ok(Revocation {
        serials: fresh,
        number,
        path,
        copies,
    })
}

/// Hexadecimal digits (an odd count is padded with a leading zero) to bytes.
fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    let padded = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex.to_string()
    };
    padded
        .as_bytes()
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

/// The cluster CA of `dir` as rcgen signs with it: its certificate (rebuilt), its key
/// and its PEM.
fn load_ca(dir: &Path) -> Result<(rcgen::Certificate, KeyPair, String), CredentialsError> {
    let ca_key_path = dir.join("ca.key");
    let ca_pem_path = dir.join("ca.pem");
    // Whoever can read the CA key can admit members: it must be private.
    check_private(&ca_key_path, true)?;
    let ca_key_pem = fs::read_to_string(&ca_key_path).map_err(io_error(&ca_key_path))?;
    let ca_pem = fs::read_to_string(&ca_pem_path).map_err(io_error(&ca_pem_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(cert_error("CA key"))?;
    // rcgen signs with an issuer `Certificate`; rebuilding it from the stored CA
    // certificate and key gives the same subject and key, so signatures chain to ca.pem.
    let ca_params = CertificateParams::from_ca_cert_pem(&ca_pem).map_err(cert_error("CA"))?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_error("CA"))?;
    Ok((ca_cert, ca_key, ca_pem))
}

/// A certificate (PEM) and key (PEM) for `name`, signed by the CA of `dir`.
fn sign_identity(dir: &Path, name: &str) -> Result<(String, String), CredentialsError> {
    let (ca_cert, ca_key, _) = load_ca(dir)?;

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

/// A loaded identity: the cluster CA to trust, this member's certificate and key, and
/// the cluster's revocation list if it has one.
#[derive(Debug)]
pub struct Credentials {
    dir: PathBuf,
    ca: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    crl_path: PathBuf,
    crl: Option<crate::revocation::RevocationList>,
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Credentials {
            dir: self.dir.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            crl_path: self.crl_path.clone(),
            crl: self.crl.clone(),
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
    /// [`init`] or an identity directory made by [`issue`], and `dir/crl.pem`, the
    /// revocation list, if it is there. Refuses a directory others can write to and a
    /// key others can read, a revocation list the CA did not sign, and a certificate of
    /// this member that has expired, is not valid yet, may not be used for offload's
    /// connections, was not issued by the CA beside it or was revoked, each with a
    /// message saying what to do.
    pub fn load(dir: &Path) -> Result<Credentials, CredentialsError> {
        check_private(dir, false)?;
        let key_path = dir.join("key.pem");
        if key_path.exists() {
            check_private(&key_path, true)?;
        }
        let ca = load_pem(&dir.join("ca.pem"), |p| CertificateDer::from_pem_file(p))?;
        let crl_path = crate::revocation::default_path(dir);
        let crl = crate::revocation::read(&crl_path, &ca)?;
        let credentials = Credentials {
            dir: dir.to_path_buf(),
            ca,
            cert: load_pem(&dir.join("cert.pem"), |p| CertificateDer::from_pem_file(p))?,
            key: load_pem(&key_path, |p| PrivatePkcs8KeyDer::from_pem_file(p))?,
            crl_path,
            crl,
        };
        credentials.check_own_certificate(now_unix())?;
        Ok(credentials)
    }

    /// Reads the revocation list from `path` instead of `crl.pem` beside the
    /// credentials (e.g. a file that configuration management or a Kubernetes
    /// ConfigMap keeps current). A missing file means no list.
    pub fn with_revocation_list(mut self, path: &Path) -> Result<Credentials, CredentialsError> {
        self.crl = crate::revocation::read(path, &self.ca)?;
        self.crl_path = path.to_path_buf();
        self.check_own_certificate(now_unix())?;
        Ok(self)
    }

    /// Where the revocation list is read from.
    pub fn revocation_list_path(&self) -> &Path {
        &self.crl_path
    }

    /// The revocation list in use, if any.
    pub fn revocation_list(&self) -> Option<&crate::revocation::RevocationList> {
        self.crl.as_ref()
    }

    /// Reads the revocation list's file again and takes a newer list into use
    /// ([`crate::revocation::reload`] says what counts as newer).
    pub fn reload_revocation_list(
        &mut self,
    ) -> Result<crate::revocation::Reload, CredentialsError> {
        let found = crate::revocation::read(&self.crl_path, &self.ca)?;
        let outcome = crate::revocation::reload(self.crl.as_ref(), found, &self.crl_path);
        if let crate::revocation::Reload::Newer(list) = &outcome {
            self.crl = Some(list.as_ref().clone());
        }
        Ok(outcome)
    }

    /// This identity's name: its certificate's common name.
    pub fn name(&self) -> String {
        crate::certs::summarize(&self.cert).map_or_else(|_| "?".into(), |c| c.name)
    }

    /// This identity's certificate serial ([`crate::certs::serial_hex`]).
    pub fn serial(&self) -> String {
        crate::certs::summarize(&self.cert).map_or_else(|_| "?".into(), |c| c.serial)
    }

    /// Checks this member's certificate at time `now` (Unix seconds).
    fn check_own_certificate(&self, now: i64) -> Result<(), CredentialsError> {
        let path = self.dir.join("cert.pem");
        let unusable = |reason: String| CredentialsError::Unusable {
            path: path.clone(),
            reason,
        };
        let cert = crate::certs::summarize(&self.cert).map_err(unusable)?;
        let name = &cert.name;
        let reissue = format!(
            "issue a new one from the cluster directory: offload cluster add-node --dir CLUSTER --name {name}"
        );
        if now > cert.not_after {
            return Err(unusable(format!(
                "this identity's certificate (`{name}`) expired on {}; {reissue}",
                crate::certs::date(cert.not_after)
            )));
        }
        if now < cert.not_before {
            return Err(unusable(format!(
                "this identity's certificate (`{name}`) is not valid before {}: is this machine's clock right?",
                crate::certs::date(cert.not_before)
            )));
        }
        if !cert.server_and_client_auth {
            return Err(unusable(format!(
                "this identity's certificate (`{name}`) may not be used for offload connections (its extended key usage lacks TLS server and client authentication); {reissue}"
            )));
        }
        if !issued_by(&self.cert, &self.ca) {
            return Err(unusable(format!(
                "this identity's certificate (`{name}`) was not issued by the CA in {} (fingerprint {}): the files come from different clusters",
                self.dir.join("ca.pem").display(),
                crate::certs::fingerprint(&self.ca)
            )));
        }
        if self.crl.as_ref().is_some_and(|l| l.revokes(&cert.serial)) {
            return Err(unusable(format!(
                "this identity's certificate (`{name}`, serial {}) is revoked by the revocation list {}; {}",
                cert.serial,
                self.crl_path.display(),
                reissue.replace("--name", "--reissue --name")
            )));
        }
        Ok(())
    }

    /// The SHA-256 fingerprint of this cluster's CA certificate.
    pub fn ca_fingerprint(&self) -> String {
        crate::certs::fingerprint(&self.ca)
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

    /// This member's certificate chain: its certificate and the cluster CA, so that a
    /// peer of another cluster can be told which CA we belong to.
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone(), self.ca.clone()]
    }

    /// The check of clients' certificates: signed by the CA, not revoked.
    fn client_verifier(
        &self,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<crate::certs::ExplainingClientVerifier, CredentialsError> {
        let mut builder =
            rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, provider);
        if let Some(crl) = &self.crl {
            // Only members' certificates can be revoked: the CA is the trust anchor.
            builder = builder
                .with_crls([crl.der()])
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status();
        }
        let inner = builder.build().map_err(|e| self.tls_error(e))?;
        Ok(crate::certs::ExplainingClientVerifier {
            inner,
            our_ca: self.ca_fingerprint(),
        })
    }

    /// A server configuration that requires a client certificate signed by the CA.
    pub(crate) fn server_config(&self) -> Result<rustls::ServerConfig, CredentialsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(self.client_verifier(provider.clone())?);
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| self.tls_error(e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain(), PrivateKeyDer::Pkcs8(self.key.clone_key()))
            .map_err(|e| self.tls_error(e))?;
        config.alpn_protocols = vec![crate::protocol::ALPN.to_vec()];
        Ok(config)
    }

    /// A client configuration that trusts only the CA and presents this identity.
    pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig, CredentialsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut builder = rustls::client::WebPkiServerVerifier::builder_with_provider(
            self.roots()?,
            provider.clone(),
        );
        if let Some(crl) = &self.crl {
            builder = builder
                .with_crls([crl.der()])
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status();
        }
        let inner = builder.build().map_err(|e| self.tls_error(e))?;
        let verifier = Arc::new(crate::certs::ExplainingServerVerifier {
            inner,
            our_ca: self.ca_fingerprint(),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| self.tls_error(e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain(), PrivateKeyDer::Pkcs8(self.key.clone_key()))
            .map_err(|e| self.tls_error(e))?;
        config.alpn_protocols = vec![crate::protocol::ALPN.to_vec()];
        Ok(config)
    }
}

/// Now, in Unix seconds.
fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Whether `cert`'s signature verifies with `ca`'s public key.
fn issued_by(cert: &[u8], ca: &[u8]) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (Ok((_, cert)), Ok((_, ca))) = (
        X509Certificate::from_der(cert),
        X509Certificate::from_der(ca),
    ) else {
        return false;
    };
    cert.verify_signature(Some(ca.public_key())).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An identity directory for `name` in `cluster`'s CA, with its own validity and
    /// key usage (what `issue` does, with the dates and purposes a test needs).
    fn crafted_identity(
        cluster: &Path,
        out: &Path,
        name: &str,
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) {
        let ca_key =
            KeyPair::from_pem(&fs::read_to_string(cluster.join("ca.key")).expect("ca.key"))
                .expect("CA key");
        let ca_pem = fs::read_to_string(cluster.join("ca.pem")).expect("ca.pem");
        let ca = CertificateParams::from_ca_cert_pem(&ca_pem)
            .expect("CA params")
            .self_signed(&ca_key)
            .expect("CA");
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()]).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = params.signed_by(&key, &ca, &ca_key).expect("sign");
        make_dir(out).expect("dir");
        write_file(&out.join("ca.pem"), &ca_pem, 0o600).expect("ca.pem");
        write_file(&out.join("cert.pem"), &cert.pem(), 0o600).expect("cert.pem");
        write_file(&out.join("key.pem"), &key.serialize_pem(), 0o600).expect("key.pem");
    }

    fn both_auths() -> Vec<ExtendedKeyUsagePurpose> {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    }

    fn load_error(dir: &Path) -> String {
        Credentials::load(dir)
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn own_certificates_that_cannot_work_are_refused_at_load_saying_why() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = dir.path().join("cluster");
        init(&cluster).expect("init");
        let expired = dir.path().join("expired");
        crafted_identity(
            &cluster,
            &expired,
            "old",
            (2020, 1, 1),
            (2021, 1, 1),
            both_auths(),
        );
        let text = load_error(&expired);
        assert!(
            text.contains("expired on 2021-01-01") && text.contains("add-node"),
            "{text}"
        );
        let future = dir.path().join("future");
        crafted_identity(
            &cluster,
            &future,
            "soon",
            (2200, 1, 1),
            (2201, 1, 1),
            both_auths(),
        );
        let text = load_error(&future);
        assert!(text.contains("not valid before 2200-01-01"), "{text}");
        let wrong = dir.path().join("wrong");
        let server_only = vec![ExtendedKeyUsagePurpose::ServerAuth];
        crafted_identity(
            &cluster,
            &wrong,
            "web",
            (2024, 1, 1),
            (2124, 1, 1),
            server_only,
        );
        let text = load_error(&wrong);
        assert!(
            text.contains("may not be used for offload connections"),
            "{text}"
        );
        // Files from two clusters: a certificate of one beside the CA of the other.
        let other = dir.path().join("other");
        init(&other).expect("init other");
        fs::copy(other.join("cert.pem"), cluster.join("cert.pem")).expect("mix");
        let text = load_error(&cluster);
        assert!(text.contains("was not issued by the CA"), "{text}");
    }

    #[test]
    fn keys_and_directories_others_can_reach_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = dir.path().join("cluster");
        init(&cluster).expect("init");
        let key = cluster.join("key.pem");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
        let text = load_error(&cluster);
        assert!(
            text.contains("key.pem") && text.contains("chmod 600"),
            "{text}"
        );
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::set_permissions(&cluster, fs::Permissions::from_mode(0o777)).expect("chmod");
        let text = load_error(&cluster);
        assert!(
            text.contains("writable by others") && text.contains("chmod 700"),
            "{text}"
        );
        fs::set_permissions(&cluster, fs::Permissions::from_mode(0o700)).expect("chmod");
        fs::set_permissions(cluster.join("ca.key"), fs::Permissions::from_mode(0o640))
            .expect("chmod");
        let text = issue(&cluster, "n1", false)
            .expect_err("a readable CA key")
            .to_string();
        assert!(text.contains("ca.key"), "{text}");
        fs::set_permissions(cluster.join("ca.key"), fs::Permissions::from_mode(0o600))
            .expect("chmod");
        Credentials::load(&cluster).expect("private again: loads");
    }

    /// The node-side view: what the explaining verifier says of `dir`'s certificate
    /// when verified against `cluster`'s CA.
    fn node_view(cluster: &Credentials, dir: &Path) -> String {
        use rustls::server::danger::ClientCertVerifier;
        let cert = CertificateDer::from_pem_file(dir.join("cert.pem")).expect("cert");
        let ca = CertificateDer::from_pem_file(dir.join("ca.pem")).expect("ca");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = cluster.client_verifier(provider).expect("verifier");
        verifier
            .verify_client_cert(&cert, &[ca], rustls::pki_types::UnixTime::now())
            .map(|_| "accepted".to_string())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn refused_peers_are_told_why_in_words() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = dir.path().join("cluster");
        init(&cluster).expect("init");
        let ours = Credentials::load(&cluster).expect("load");
        let member = issue(&cluster, "n1", false).expect("issue");
        assert_eq!(node_view(&ours, &member), "accepted");
        let expired = dir.path().join("expired");
        crafted_identity(
            &cluster,
            &expired,
            "old",
            (2020, 1, 1),
            (2021, 1, 1),
            both_auths(),
        );
        let text = node_view(&ours, &expired);
        assert!(
            text.contains("the client (`old`) expired on 2021-01-01"),
            "{text}"
        );
        let future = dir.path().join("future");
        crafted_identity(
            &cluster,
            &future,
            "soon",
            (2200, 1, 1),
            (2201, 1, 1),
            both_auths(),
        );
        let text = node_view(&ours, &future);
        assert!(text.contains("not valid before 2200-01-01"), "{text}");
        let wrong = dir.path().join("wrong");
        let server_only = vec![ExtendedKeyUsagePurpose::ServerAuth];
        crafted_identity(
            &cluster,
            &wrong,
            "web",
            (2024, 1, 1),
            (2124, 1, 1),
            server_only,
        );
        let text = node_view(&ours, &wrong);
        assert!(
            text.contains("may not be used for offload connections"),
            "{text}"
        );
        let other = dir.path().join("other");
        init(&other).expect("init other");
        let theirs = Credentials::load(&other).expect("load other");
        let text = node_view(&ours, &other);
        assert!(
            text.contains("belongs to another cluster")
                && text.contains(&theirs.ca_fingerprint())
                && text.contains(&ours.ca_fingerprint()),
            "{text}"
        );
    }

    #[test]
    fn a_name_is_issued_once_unless_reissued_and_listed_with_its_status() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = dir.path().join("cluster");
        init(&cluster).expect("init");
        issue(&cluster, "box", false).expect("issue");
        let text = issue(&cluster, "box", false)
            .expect_err("a second box")
            .to_string();
        assert!(
            text.contains("already issued") && text.contains("--reissue"),
            "{text}"
        );
        let text = issue(&cluster, "admin", false)
            .expect_err("the admin exists")
            .to_string();
        assert!(text.contains("`admin`"), "{text}");
        // Copied away and deleted here: the ledger still knows the name.
        fs::remove_dir_all(cluster.join("nodes").join("box")).expect("remove");
        assert!(issue(&cluster, "box", false).is_err());
        let again = issue(&cluster, "box", true).expect("reissue");
        assert_eq!(Credentials::load(&again).expect("load").name(), "box");
        let list = issued(&cluster).expect("list");
        let names: Vec<(&str, bool)> = list
            .iter()
            .map(|i| (i.name.as_str(), i.superseded))
            .collect();
        assert_eq!(
            names,
            [("admin", false), ("box", true), ("box", false)],
            "{list:?}"
        );
        assert!(list.iter().all(|i| !i.revoked));
    }

    #[test]
    fn revoked_identities_are_refused_in_the_handshake_saying_so() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = dir.path().join("cluster");
        init(&cluster).expect("init");
        let laptop = issue(&cluster, "laptop", false).expect("issue");
        let other = issue(&cluster, "desk", false).expect("issue");
        let revocation = revoke(&cluster, "laptop").expect("revoke");
        assert_eq!(revocation.number, 1);
        assert_eq!(revocation.serials.len(), 1);
        assert!(revocation.copies.contains(&other), "{revocation:?}");
        // The cluster directory's identity now carries the list and refuses the laptop.
        let ours = Credentials::load(&cluster).expect("load");
        assert!(ours.revocation_list().is_some_and(|l| l.number == 1));
        let text = node_view(&ours, &laptop);
        assert!(
            text.contains("the client (`laptop`") && text.contains("was revoked"),
            "{text}"
        );
        assert_eq!(node_view(&ours, &other), "accepted");
        // The laptop's own directory got the list too: it cannot even load.
        let text = load_error(&laptop);
        assert!(
            text.contains("is revoked") && text.contains("--reissue"),
            "{text}"
        );
        let list = issued(&cluster).expect("list");
        assert!(
            list.iter().any(|i| i.name == "laptop" && i.revoked),
            "{list:?}"
        );
        // Revoking again keeps the entries and raises the number; a re-issued laptop is
        // accepted.
        let second = revoke(&cluster, "laptop").expect("revoke again");
        assert_eq!((second.number, second.serials.len()), (2, 0));
        let renewed = issue(&cluster, "laptop", true).expect("reissue");
        let ours = Credentials::load(&cluster).expect("load");
        assert_eq!(node_view(&ours, &renewed), "accepted");
        assert!(matches!(
            revoke(&cluster, "nobody"),
            Err(CredentialsError::UnknownName { .. })
        ));
    }

    #[test]
    fn a_newer_revocation_list_is_taken_and_an_older_one_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = dir.path().join("cluster");
        init(&cluster).expect("init");
        let node = issue(&cluster, "node", false).expect("issue");
        issue(&cluster, "a", false).expect("issue");
        issue(&cluster, "b", false).expect("issue");
        let mut creds = Credentials::load(&node).expect("load");
        assert_eq!(
            creds.reload_revocation_list().expect("reload"),
            crate::revocation::Reload::Same
        );
        revoke(&cluster, "a").expect("revoke a");
        let first = fs::read(node.join("crl.pem")).expect("copy");
        match creds.reload_revocation_list().expect("reload") {
            crate::revocation::Reload::Newer(list) => assert_eq!(list.number, 1),
            other => panic!("{other:?}"),
        }
        revoke(&cluster, "b").expect("revoke b");
        assert!(matches!(
            creds.reload_revocation_list().expect("reload"),
            crate::revocation::Reload::Newer(_)
        ));
        // Putting the first list back would un-revoke b: refused, the newer stays.
        fs::write(node.join("crl.pem"), &first).expect("old list");
        assert!(matches!(
            creds.reload_revocation_list().expect("reload"),
            crate::revocation::Reload::Refused(_)
        ));
        assert_eq!(creds.revocation_list().map(|l| l.number), Some(2));
        // A list another cluster's CA signed is refused when read.
        let other = dir.path().join("other");
        init(&other).expect("init other");
        issue(&other, "x", false).expect("issue");
        revoke(&other, "x").expect("revoke x");
        fs::copy(other.join("crl.pem"), node.join("crl.pem")).expect("foreign list");
        let text = creds
            .reload_revocation_list()
            .expect_err("foreign")
            .to_string();
        assert!(text.contains("not signed by this cluster's CA"), "{text}");
    }

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
        let node = issue(&cluster, "node-1", false).expect("issue");
        assert!(!node.join("ca.key").exists());
        let creds = Credentials::load(&node).expect("load");
        creds.server_config().expect("server config");
        creds.client_config().expect("client config");
        assert!(matches!(
            issue(&cluster, "../x", false),
            Err(CredentialsError::BadName(_))
        ));
    }
}
