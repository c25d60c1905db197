//! Bearer tokens with read, write and admin rights on stream prefixes.
//!
//! A configuration file (TOML) names each token and what it may do:
//!
//! ```toml
//! [[token]]
//! name = "orders-service"
//! secret = "a long random string, 16 characters at least"
//! read = [""]          # every stream, and $all
//! write = ["order-"]   # streams whose names start with "order-"
//!
//! [[token]]
//! name = "operator"
//! secret = "another long random string"
//! admin = [""]
//! ```
//!
//! Rights nest: `admin` on a prefix includes `write`, and `write` includes `read`. Reading a
//! stream or following it needs `read` on a prefix of its name; appending needs `write`; deleting
//! it or setting its metadata needs `admin`. `$all` and its subscription need `read` on the empty
//! prefix (every stream); a listing of streams shows only those the token may read; `/metrics`
//! takes any valid token. `/health`, the web UI and `/openapi.json` are open.
//!
//! Without a token, or with one the file does not hold, the answer is 401; with a token that
//! lacks the right, 403. Secrets are compared in constant time.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::{ApiError, AppState};

/// What a token may do on a stream; each right includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Right {
    /// Read and follow.
    Read,
    /// Append (and read).
    Write,
    /// Delete, tombstone, set metadata (and write, read).
    Admin,
}

impl std::fmt::Display for Right {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Right::Read => "read",
            Right::Write => "write",
            Right::Admin => "admin",
        })
    }
}

/// A mistake in the auth configuration.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// The file could not be read.
    #[error("auth configuration {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys.
    #[error("auth configuration: {0}")]
    Syntax(String),
    /// A token is not acceptable (a short secret, a repeated name or secret, no token at all).
    #[error("auth configuration: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    token: Vec<Token>,
}

/// One token of the configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    /// Who holds it (for logs).
    pub name: String,
    secret: String,
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
    #[serde(default)]
    admin: Vec<String>,
}

impl Token {
    /// Whether the token has `right` on the stream named `stream`.
    pub fn allows(&self, right: Right, stream: &str) -> bool {
        let covers = |prefixes: &[String]| prefixes.iter().any(|p| stream.starts_with(p.as_str()));
        covers(&self.admin)
            || (right <= Right::Write && covers(&self.write))
            || (right == Right::Read && covers(&self.read))
    }
}

/// The tokens the server accepts.
#[derive(Debug)]
pub struct Auth {
    tokens: Vec<Arc<Token>>,
}

/// The shortest secret accepted.
const SECRET_CHARS_MIN: usize = 16;

impl Auth {
    /// Reads a TOML auth configuration file.
    pub fn load(path: &Path) -> Result<Auth, AuthConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Auth::from_toml(&text)
    }

    /// Parses a TOML auth configuration.
    pub fn from_toml(text: &str) -> Result<Auth, AuthConfigError> {
        let file: File = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |span| {
                text[..span.start.min(text.len())].lines().count().max(1)
            });
            AuthConfigError::Syntax(format!("line {line}: {}", e.message()))
        })?;
        if file.token.is_empty() {
            return Err(AuthConfigError::Invalid(
                "no [[token]]: nobody could use the server".into(),
            ));
        }
        for (i, token) in file.token.iter().enumerate() {
            if token.name.trim().is_empty() {
                return Err(AuthConfigError::Invalid(format!(
                    "token {} has no name",
                    i + 1
                )));
            }
            if token.secret.chars().count() < SECRET_CHARS_MIN {
                return Err(AuthConfigError::Invalid(format!(
                    "the secret of token '{}' is shorter than {SECRET_CHARS_MIN} characters",
                    token.name
                )));
            }
            if token
                .secret
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(AuthConfigError::Invalid(format!(
                    "the secret of token '{}' holds white space",
                    token.name
                )));
            }
            for other in &file.token[..i] {
                if other.name == token.name {
                    return Err(AuthConfigError::Invalid(format!(
                        "two tokens are named '{}'",
                        token.name
                    )));
                }
                if other.secret == token.secret {
                    return Err(AuthConfigError::Invalid(format!(
                        "tokens '{}' and '{}' have the same secret",
                        other.name, token.name
                    )));
                }
            }
        }
        Ok(Auth {
            tokens: file.token.into_iter().map(Arc::new).collect(),
        })
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there are none (never, once loaded).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token of this name and secret (HTTP Basic credentials, which KurrentDB's clients
    /// send); every token is compared, each in constant time.
    pub(crate) fn find_named(&self, name: &str, secret: &str) -> Option<&Arc<Token>> {
        let mut found = None;
        for token in &self.tokens {
            let secret_matches = constant_time_eq(token.secret.as_bytes(), secret.as_bytes());
            if secret_matches && constant_time_eq(token.name.as_bytes(), name.as_bytes()) {
                found = Some(token);
            }
        }
        found
    }

    /// The token whose secret this is; every secret is compared, each in constant time.
    pub(crate) fn find(&self, secret: &str) -> Option<&Arc<Token>> {
        let mut found = None;
        for token in &self.tokens {
            if constant_time_eq(token.secret.as_bytes(), secret.as_bytes()) {
                found = Some(token);
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who is calling: `None` when the server has no auth configuration (everything is allowed).
#[derive(Clone, Debug)]
pub(crate) struct Caller(pub(crate) Option<Arc<Token>>);

impl Caller {
    /// 403 unless the caller has `right` on `stream`.
    pub(crate) fn require(&self, right: Right, stream: &str) -> Result<(), ApiError> {
        match &self.0 {
            Some(token) if !token.allows(right, stream) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("token '{}' has no {right} right on '{stream}'", token.name),
            )),
            _ => Ok(()),
        }
    }

    /// 403 unless the caller may read every stream (what `$all` holds).
    pub(crate) fn require_all(&self) -> Result<(), ApiError> {
        match &self.0 {
            Some(token) if !token.allows(Right::Read, "") => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "token '{}' may not read $all: that takes read on every stream (prefix \"\")",
                    token.name
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The caller's token's name (`None` without auth).
    pub(crate) fn name(&self) -> Option<&str> {
        self.0.as_ref().map(|token| token.name.as_str())
    }

    /// Whether the caller may read `stream` (for filtering listings).
    pub(crate) fn can_read(&self, stream: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|token| token.allows(Right::Read, stream))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller(None)))
    }
}

/// Paths anyone may open: liveness, the web UI and the API's description.
fn is_open(path: &str) -> bool {
    path == "/" || path == "/health" || path == "/openapi.json" || path.starts_with("/ui/")
}

/// Identifies the caller by `Authorization: Bearer <secret>`; 401 without a known token.
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(auth) = &state.config.auth else {
        return next.run(request).await;
    };
    if is_open(request.uri().path()) {
        return next.run(request).await;
    }
    let secret = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let token = match secret.and_then(|s| auth.find(s)) {
        Some(token) => token,
        None => {
            let message = if secret.is_none() {
                "a bearer token is required (header Authorization: Bearer <token>)"
            } else {
                "the bearer token is not valid"
            };
            let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"factum\""),
            );
            return response;
        }
    };
    request.extensions_mut().insert(Caller(Some(token.clone())));
    next.run(request).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rights_nest_and_follow_prefixes() {
        let auth = Auth::from_toml(
            r#"
            [[token]]
            name = "orders"
            secret = "0123456789abcdef"
            read = ["cart-"]
            write = ["order-"]
            admin = ["tmp-"]
            "#,
        )
        .unwrap();
        let token = auth.find("0123456789abcdef").unwrap();
        assert!(token.allows(Right::Read, "cart-1"));
        assert!(!token.allows(Right::Write, "cart-1"));
        assert!(token.allows(Right::Read, "order-1"));
        assert!(token.allows(Right::Write, "order-1"));
        assert!(!token.allows(Right::Admin, "order-1"));
        assert!(token.allows(Right::Admin, "tmp-1"));
        assert!(!token.allows(Right::Read, "stock-1"));
        assert!(!token.allows(Right::Read, ""));
        assert!(auth.find("0123456789abcdeX").is_none());
        assert!(auth.find("0123456789abcde").is_none());
    }

    #[test]
    fn bad_configurations_are_refused_with_the_reason() {
        for (text, reason) in [
            ("", "no [[token]]"),
            (
                "[[token]]\nname = \"a\"\nsecret = \"short\"",
                "shorter than 16",
            ),
            (
                "[[token]]\nname = \"a\"\nsecret = \"0123456789abcdef\"\nrights = []",
                "unknown field",
            ),
            (
                "[[token]]\nname = \"a\"\nsecret = \"0123456789abcdef\"\n[[token]]\nname = \"a\"\nsecret = \"0123456789abcdeg\"",
                "two tokens are named 'a'",
            ),
            (
                "[[token]]\nname = \"a\"\nsecret = \"0123456789abcdef\"\n[[token]]\nname = \"b\"\nsecret = \"0123456789abcdef\"",
                "the same secret",
            ),
            (
                "[[token]]\nname = \"a\"\nsecret = \"0123456789 abcdef\"",
                "white space",
            ),
            ("[[token]\n", "line 1: unclosed array table"),
        ] {
            let error = Auth::from_toml(text).unwrap_err().to_string();
            assert!(error.contains(reason), "{text:?}: {error}");
        }
    }
}
