//! Who calls over gRPC: the same tokens and rights as the HTTP API. KurrentDB's clients send
//! `authorization: Basic base64(user:password)`: the user is a token's name, the password its
//! secret. `Bearer <secret>` is taken too. Without an auth configuration every call is allowed
//! (the server listens on loopback only then).

use base64::Engine as _;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::AppState;
use crate::auth::{Caller, Right};

/// The caller of a call, or `UNAUTHENTICATED` when the server has tokens and the call carries
/// none it knows.
pub(crate) fn caller(state: &AppState, metadata: &MetadataMap) -> Result<Caller, Status> {
    let Some(auth) = &state.config.auth else {
        return Ok(Caller(None));
    };
    let header = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let token = match header {
        None => {
            return Err(Status::unauthenticated(
                "credentials are required: a token's name and secret as user name and password",
            ));
        }
        Some(value) => {
            if let Some(encoded) = strip_scheme(value, "basic") {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok());
                decoded.and_then(|pair| {
                    let (name, secret) = pair.split_once(':')?;
                    auth.find_named(name, secret).cloned()
                })
            } else if let Some(secret) = strip_scheme(value, "bearer") {
                auth.find(secret.trim()).cloned()
            } else {
                None
            }
        }
    };
    token
        .map(|token| Caller(Some(token)))
        .ok_or_else(|| Status::unauthenticated("the credentials are not valid"))
}

fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = value.split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// `PERMISSION_DENIED` unless the caller has `right` on `stream`.
pub(crate) fn require(caller: &Caller, right: Right, stream: &str) -> Result<(), Status> {
    caller
        .require(right, stream)
        .map_err(|e| super::convert::access_denied(e.body().error.clone()))
}

/// `PERMISSION_DENIED` unless the caller may read every stream (`$all`).
pub(crate) fn require_all(caller: &Caller) -> Result<(), Status> {
    caller
        .require_all()
        .map_err(|e| super::convert::access_denied(e.body().error.clone()))
}
