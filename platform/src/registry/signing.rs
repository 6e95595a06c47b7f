//! The key that signs registry tokens, and its certificate for the registry's
//! `rootcertbundle`. Generated on first start (ECDSA P-256) and kept in the database, so every
//! node signs with the same key and restarts keep it.

use crate::auth::tokens::unix_seconds;
use crate::storage::Database;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

const KEY_SETTING: &str = "registry_token_key";

/// The `iss` of every registry token, and the `issuer` of the registry's configuration.
pub const ISSUER: &str = "rally";
/// The registry's `service` name: the `aud` of the tokens it takes.
pub const SERVICE: &str = "rally-registry";
/// The `aud` of a login credential: a password the token endpoint takes, never a token the
/// registry takes.
const LOGIN_AUDIENCE: &str = "rally-registry-login";
/// How a server's subject is written in a login credential.
const SERVER_SUBJECT_PREFIX: &str = "server:";

/// Whom a login credential speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A developer (or staff) account, by id.
    Account(String),
    /// A Docker server of a pool, by name: it pulls the images of the runtimes it runs.
    Server(String),
}

/// One entry of a registry token's `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Granted {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Serialize)]
struct RegistryClaims<'a> {
    iss: &'static str,
    sub: &'a str,
    aud: &'static str,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: &'a [Granted],
}

/// The username a Docker server presents its login credential with.
pub fn server_username(server: &str) -> String {
    format!("server.{server}")
}

/// The claims of a login credential: what `rally registry login` stores for `docker login`,
/// and what the Docker pool hands a daemon to pull with.
#[derive(Debug, Serialize, Deserialize)]
struct LoginClaims {
    sub: String,
    /// The username it is presented with.
    usr: String,
    aud: String,
    iss: String,
    iat: u64,
    exp: u64,
}

/// Why a login credential was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("the registry credential has expired; run `rally registry login` again")]
    Expired,
    #[error("not a registry credential")]
    Invalid,
}

/// What the setting holds: the private key (PKCS#8 PEM) and the self-signed certificate of its
/// public key.
#[derive(Serialize, Deserialize)]
struct Stored {
    key: String,
    certificate: String,
}

/// Signs the JWTs the registry checks.
pub struct TokenSigner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The key id the registry looks the certificate up by.
    kid: String,
    certificate: String,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// The signer of the key kept in the database, generated if there is none yet (the first
    /// node to start wins; the others read its key).
    pub async fn load(database: &Database) -> anyhow::Result<Self> {
        let stored = match database.setting(KEY_SETTING).await? {
            Some(stored) => stored,
            None => insert_new(database).await?,
        };
        let stored: Stored = serde_json::from_str(&stored)?;
        Self::from_pem(&stored.key, stored.certificate)
    }

    fn from_pem(key_pem: &str, certificate: String) -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::from_pem(key_pem)?;
        Ok(Self {
            encoding: EncodingKey::from_ec_pem(key_pem.as_bytes())?,
            decoding: DecodingKey::from_ec_pem(key.public_key_pem().as_bytes())?,
            kid: libtrust_key_id(&key.public_key_der()),
            certificate,
        })
    }

    /// The certificate (PEM) the registry's `rootcertbundle` file must hold.
    pub fn certificate(&self) -> &str {
        &self.certificate
    }

    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// `claims` signed with ES256, the header naming the key.
    pub fn sign(&self, claims: &impl Serialize) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("ES256 signing succeeds")
    }

    /// A token the registry takes: `subject` may do `access` for `ttl_secs`.
    pub fn registry_token(&self, subject: &str, access: &[Granted], ttl_secs: u64) -> String {
        let now = unix_seconds();
        self.sign(&RegistryClaims {
            iss: ISSUER,
            sub: subject,
            aud: SERVICE,
            exp: now + ttl_secs,
            nbf: now.saturating_sub(1),
            iat: now,
            jti: crate::storage::new_id(),
            access,
        })
    }

    /// A login credential for `holder`, presented as `username`, valid for `ttl`; and when it
    /// expires (Unix seconds).
    pub fn issue_login(&self, holder: &Holder, username: &str, ttl: Duration) -> (String, u64) {
        let now = unix_seconds();
        let sub = match holder {
            Holder::Account(id) => id.clone(),
            Holder::Server(name) => format!("{SERVER_SUBJECT_PREFIX}{name}"),
        };
        let claims = LoginClaims {
            sub,
            usr: username.to_owned(),
            aud: LOGIN_AUDIENCE.to_owned(),
            iss: ISSUER.to_owned(),
            iat: now,
            exp: now + ttl.as_secs(),
        };
        (self.sign(&claims), claims.exp)
    }

    /// Whom the login credential `password`, presented with `username`, speaks for.
    pub fn verify_login(&self, username: &str, password: &str) -> Result<Holder, CredentialError> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[LOGIN_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
        validation.leeway = 5;
        let claims = jsonwebtoken::decode::<LoginClaims>(password, &self.decoding, &validation)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => CredentialError::Expired,
                _ => CredentialError::Invalid,
            })?
            .claims;
        if claims.usr != username {
            return Err(CredentialError::Invalid);
        }
        Ok(match claims.sub.strip_prefix(SERVER_SUBJECT_PREFIX) {
            Some(server) => Holder::Server(server.to_owned()),
            None => Holder::Account(claims.sub),
        })
    }
}

async fn insert_new(database: &Database) -> anyhow::Result<String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Rally registry token issuer");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2120, 1, 1);
    let certificate = params.self_signed(&key)?;
    let stored = serde_json::to_string(&Stored {
        key: key.serialize_pem(),
        certificate: certificate.pem(),
    })?;
    Ok(database.setting_or_insert(KEY_SETTING, &stored).await?)
}

/// The key id distribution's libtrust derives from a public key: the SHA-256 of its DER
/// SubjectPublicKeyInfo, cut to 240 bits, in base32, in groups of four joined by `:`.
pub fn libtrust_key_id(public_key_der: &[u8]) -> String {
    let digest = Sha256::digest(public_key_der);
    let encoded = data_encoding::BASE32_NOPAD.encode(&digest[..30]);
    encoded
        .as_bytes()
        .chunks(4)
        .map(|group| std::str::from_utf8(group).expect("base32 is ASCII"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_libtrust_fingerprints() {
        // Worked out apart from this code (Python's hashlib and base64.b32encode).
        assert_eq!(
            libtrust_key_id(b"not a key, only bytes"),
            "A4BV:I4LQ:QTL7:WWWO:IQRE:6LDF:4M7N:MECJ:LS36:XE3X:4AH6:NBKB"
        );
    }
}
