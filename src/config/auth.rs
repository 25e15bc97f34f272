//! The `auth` section.

use super::yaml::{self, Ctx, Node, fields};

/// How connections authenticate.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    /// Whether a credential is needed (`none` when the section is absent).
    pub mode: AuthMode,
}

/// Whether a connection needs a credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// A valid token or API key is needed (HTTP 401 otherwise).
    Required,
    /// Anonymous connections are allowed; a credential, when given, must be valid.
    Optional,
    /// No authentication: every connection is anonymous.
    None,
}

const KEYS: &[&str] = &["mode"];

/// Reads the section; absent means `mode: none`.
pub(super) fn compile(ctx: &mut Ctx, node: Option<&Node>) -> Option<AuthSettings> {
    let Some(node) = node else {
        return Some(AuthSettings {
            mode: AuthMode::None,
        });
    };
    let section = fields(ctx, node, "auth", KEYS)?;
    let Some(mode_node) = section.get("mode") else {
        ctx.error(
            node,
            "auth.mode",
            "missing key `mode` (required, optional or none)",
        );
        return None;
    };
    let mode = match yaml::string(ctx, mode_node, "auth.mode")?.as_str() {
        "required" => AuthMode::Required,
        "optional" => AuthMode::Optional,
        "none" => AuthMode::None,
        other => {
            let message = format!("unknown mode `{other}` (expected required, optional or none)");
            ctx.error(mode_node, "auth.mode", message);
            return None;
        }
    };
    Some(AuthSettings { mode })
}
