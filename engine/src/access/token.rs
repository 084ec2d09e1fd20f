//! Connection and subscription tokens: JWTs verified against the keys in
//! `[auth]` (an HS256 secret, an RS256/ES256 public key in PEM, a JWKS
//! file). Sans-IO: the caller gives the current time, so expiry is tested
//! with made-up clocks.
//!
//! The algorithm comes from the key, never from the token: a token is only
//! checked against the configured keys of the algorithm its header names,
//! so `alg: none` and key confusion (an RS256 public key used as an HS256
//! secret) find no key and are refused.
#![forbid(unsafe_code)]

use std::path::Path;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use thiserror::Error;

/// Why a token was refused. The `Display` text is the reason put in the
/// 401 body, the close frame or the JSON-RPC error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TokenError {
    /// No token where one is required.
    #[error("token required")]
    Missing,
    /// Not three base64url parts, or a header or claims that are not JSON.
    #[error("invalid token")]
    Malformed,
    /// `alg: none`, or an algorithm no configured key is for (key
    /// confusion, say).
    #[error("token algorithm not accepted")]
    Algorithm,
    #[error("invalid token signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    /// A claim of the wrong type, or no `sub`.
    #[error("invalid token claims")]
    Claims,
    /// A subscription token for another channel or another user.
    #[error("token is for another channel or user")]
    WrongSubject,
}

impl TokenError {
    /// The reason as a static string (HTTP bodies and close frames take
    /// one).
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Missing => "token required",
            TokenError::Malformed => "invalid token",
            TokenError::Algorithm => "token algorithm not accepted",
            TokenError::Signature => "invalid token signature",
            TokenError::Expired => "token expired",
            TokenError::NotYetValid => "token not yet valid",
            TokenError::Claims => "invalid token claims",
            TokenError::WrongSubject => "token is for another channel or user",
        }
    }
}

/// The claims ringcast reads. Unknown claims are ignored.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Claims {
    /// The user id; empty for an anonymous connection token.
    pub sub: String,
    /// Expiry, Unix seconds.
    #[serde(default)]
    pub exp: Option<u64>,
    /// Not before, Unix seconds.
    #[serde(default)]
    pub nbf: Option<u64>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Session id.
    #[serde(default)]
    pub sid: Option<String>,
    /// Channel patterns this connection may subscribe to (`*` at the end
    /// matches any rest), on top of the namespace rules.
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    /// Opaque JSON shown in presence.
    #[serde(default)]
    pub info: Option<serde_json::Value>,
    /// A subscription token's channel.
    #[serde(default)]
    pub channel: Option<String>,
}

struct Key {
    alg: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
}

/// The configured keys.
#[derive(Default)]
pub struct Verifier {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algs: Vec<_> = self.keys.iter().map(|k| k.alg).collect();
        f.debug_struct("Verifier").field("algs", &algs).finish()
    }
}

impl Verifier {
    /// No keys: every token is refused with [`TokenError::Algorithm`].
    pub fn empty() -> Self {
        Verifier { keys: Vec::new() }
    }

    /// Whether any key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Adds an HS256 shared secret.
    pub fn with_hmac_secret(mut self, secret: &[u8]) -> Self {
        self.keys.push(Key {
            alg: Algorithm::HS256,
            kid: None,
            key: DecodingKey::from_secret(secret),
        });
        self
    }

    /// Adds a public key in PEM: RSA (RS256) or EC P-256 (ES256).
    pub fn with_public_pem(mut self, pem: &[u8]) -> Result<Self, String> {
        let (alg, key) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            (Algorithm::RS256, k)
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            (Algorithm::ES256, k)
        } else {
            return Err("not an RSA or EC P-256 public key in PEM".into());
        };
        self.keys.push(Key {
            alg,
            kid: None,
            key,
        });
        Ok(self)
    }

    /// Adds the RSA and EC P-256 keys of a JWKS document (`{"keys":[..]}`).
    pub fn with_jwks(mut self, json: &[u8]) -> Result<Self, String> {
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let before = self.keys.len();
        for jwk in &set.keys {
            let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
                (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
                (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
                    if p.curve == EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                _ => continue,
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("bad key in JWKS: {e}"))?;
            self.keys.push(Key {
                alg,
                kid: jwk.common.key_id.clone(),
                key,
            });
        }
        if self.keys.len() == before {
            return Err("no RS256 or ES256 key in the JWKS document".into());
        }
        Ok(self)
    }

    /// Reads the keys `[auth]` names: `hmac_secret`, `public_key` (a PEM
    /// file), `jwks` (a JWKS file).
    pub fn from_config(
        hmac_secret: &str,
        public_key: &str,
        jwks: &str,
    ) -> Result<Self, (&'static str, String)> {
        let mut v = Verifier::empty();
        if !hmac_secret.is_empty() {
            v = v.with_hmac_secret(hmac_secret.as_bytes());
        }
        let read = |key: &'static str, path: &str| {
            std::fs::read(Path::new(path)).map_err(|e| (key, format!("cannot read {path:?}: {e}")))
        };
        if !public_key.is_empty() {
            let pem = read("auth.public_key", public_key)?;
            v = v
                .with_public_pem(&pem)
                .map_err(|e| ("auth.public_key", format!("{public_key:?}: {e}")))?;
        }
        if !jwks.is_empty() {
            let json = read("auth.jwks", jwks)?;
            v = v
                .with_jwks(&json)
                .map_err(|e| ("auth.jwks", format!("{jwks:?}: {e}")))?;
        }
        Ok(v)
    }

    /// Verifies `token` at `now` (Unix seconds): signature by a configured
    /// key of the algorithm the header names, then `exp` and `nbf` (no
    /// leeway), then the claims' types.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let alg = header_alg(token)?;
        let kid = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid);
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let mut last = TokenError::Algorithm;
        for k in self.keys.iter().filter(|k| k.alg == alg) {
            if let (Some(want), Some(have)) = (&kid, &k.kid) {
                if want != have {
                    continue;
                }
            }
            match jsonwebtoken::decode::<serde_json::Value>(token, &k.key, &validation) {
                Ok(data) => {
                    let claims: Claims =
                        serde_json::from_value(data.claims).map_err(|_| TokenError::Claims)?;
                    return check_times(claims, now);
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => TokenError::Signature,
                        ErrorKind::InvalidAlgorithm => TokenError::Algorithm,
                        ErrorKind::Json(_) | ErrorKind::MissingRequiredClaim(_) => {
                            TokenError::Claims
                        }
                        _ => TokenError::Malformed,
                    }
                }
            }
        }
        Err(last)
    }
}

fn check_times(claims: Claims, now: u64) -> Result<Claims, TokenError> {
    if claims.exp.is_some_and(|exp| exp <= now) {
        return Err(TokenError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now) {
        return Err(TokenError::NotYetValid);
    }
    Ok(claims)
}

/// The algorithm a token's header names, read without trusting anything
/// else in it: `none` (any case) and unknown names are
/// [`TokenError::Algorithm`].
fn header_alg(token: &str) -> Result<Algorithm, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed)?;
    #[derive(Deserialize)]
    struct Header {
        alg: String,
    }
    let h: Header = serde_json::from_slice(&raw).map_err(|_| TokenError::Malformed)?;
    match h.alg.as_str() {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        _ => Err(TokenError::Algorithm),
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &[u8] = b"test-secret-of-thirty-two-bytes!";
    const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/keys/rsa_private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/keys/rsa_public.pem");
    const EC_PRIVATE: &[u8] = include_bytes!("../../tests/keys/ec_private.pem");
    const EC_PUBLIC: &[u8] = include_bytes!("../../tests/keys/ec_public.pem");
    const NOW: u64 = 1_800_000_000;

    fn hs(claims: &serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn b64(v: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    #[test]
    fn hs256_claims_are_read() {
        let v = Verifier::empty().with_hmac_secret(SECRET);
        let t = hs(&serde_json::json!({
            "sub": "42", "exp": NOW + 60, "groups": ["staff"], "sid": "s1",
            "channels": ["news:*"], "info": {"name": "Ann"}
        }));
        let c = v.verify(&t, NOW).unwrap();
        assert_eq!(c.sub, "42");
        assert_eq!(c.groups, vec!["staff"]);
        assert_eq!(c.sid.as_deref(), Some("s1"));
        assert_eq!(c.channels, Some(vec!["news:*".to_string()]));
        assert_eq!(c.info, Some(serde_json::json!({"name": "Ann"})));
    }

    #[test]
    fn expiry_and_not_before_use_the_given_clock() {
        let v = Verifier::empty().with_hmac_secret(SECRET);
        let t = hs(&serde_json::json!({"sub": "1", "exp": NOW + 10, "nbf": NOW - 5}));
        assert!(v.verify(&t, NOW).is_ok());
        assert_eq!(v.verify(&t, NOW + 10), Err(TokenError::Expired));
        assert_eq!(v.verify(&t, NOW - 6), Err(TokenError::NotYetValid));
    }

    #[test]
    fn bad_signature_and_malformed_tokens() {
        let v = Verifier::empty().with_hmac_secret(SECRET);
        let other = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "1"}),
            &EncodingKey::from_secret(b"another secret"),
        )
        .unwrap();
        assert_eq!(v.verify(&other, NOW), Err(TokenError::Signature));
        assert_eq!(v.verify("abc", NOW), Err(TokenError::Malformed));
        assert_eq!(v.verify("a.b.c.d", NOW), Err(TokenError::Malformed));
        assert_eq!(v.verify("!!.e30.x", NOW), Err(TokenError::Malformed));
        let t = hs(&serde_json::json!({"sub": 5}));
        assert_eq!(v.verify(&t, NOW), Err(TokenError::Claims));
        let t = hs(&serde_json::json!({"name": "no sub"}));
        assert_eq!(v.verify(&t, NOW), Err(TokenError::Claims));
    }

    #[test]
    fn alg_none_is_refused() {
        let v = Verifier::empty().with_hmac_secret(SECRET);
        for alg in ["none", "None", "NONE"] {
            let t = format!(
                "{}.{}.",
                b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes()),
                b64(br#"{"sub":"admin"}"#)
            );
            assert_eq!(v.verify(&t, NOW), Err(TokenError::Algorithm), "{alg}");
        }
    }

    #[test]
    fn rs256_public_key_as_hs256_secret_is_refused() {
        let v = Verifier::empty().with_public_pem(RSA_PUBLIC).unwrap();
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "admin"}),
            &EncodingKey::from_secret(RSA_PUBLIC),
        )
        .unwrap();
        assert_eq!(v.verify(&forged, NOW), Err(TokenError::Algorithm));
        let good = encode(
            &Header::new(Algorithm::RS256),
            &serde_json::json!({"sub": "7"}),
            &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&good, NOW).unwrap().sub, "7");
        // With an HS256 secret configured too, the forgery is checked
        // against the secret only, never against the public key.
        let v = v.with_hmac_secret(SECRET);
        assert_eq!(v.verify(&forged, NOW), Err(TokenError::Signature));
    }

    #[test]
    fn es256_pem_and_jwks() {
        let v = Verifier::empty().with_public_pem(EC_PUBLIC).unwrap();
        let t = encode(
            &Header::new(Algorithm::ES256),
            &serde_json::json!({"sub": "e"}),
            &EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&t, NOW).unwrap().sub, "e");
        let jwks = include_bytes!("../../tests/keys/jwks.json");
        let v = Verifier::empty().with_jwks(jwks).unwrap();
        assert_eq!(v.verify(&t, NOW).unwrap().sub, "e");
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("rsa-1".into());
        let t = encode(
            &h,
            &serde_json::json!({"sub": "r"}),
            &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&t, NOW).unwrap().sub, "r");
        h.kid = Some("unknown".into());
        let t = encode(
            &h,
            &serde_json::json!({"sub": "r"}),
            &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&t, NOW), Err(TokenError::Algorithm));
        assert!(Verifier::empty().with_jwks(b"{\"keys\":[]}").is_err());
        assert!(Verifier::empty().with_public_pem(b"nope").is_err());
    }
}
