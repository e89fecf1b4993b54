//! Who is asking: the authenticated principal behind a command.

use serde::{Deserialize, Serialize};

/// The principal a command is attributed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Stable actor id as it appears in `created_by` / `updated_by` (`admin:<token-id>`,
    /// or the value of a valid `x-caracal-authorized-by` header).
    pub id: String,
    /// The break-glass bootstrap token (`CARACAL_ADMIN_TOKEN`): the only principal that may
    /// write into the reserved `caracal.sys` namespace.
    pub is_bootstrap: bool,
    /// `x-caracal-created-via: operator` was present on the request.
    pub via_operator_header: bool,
}

impl Actor {
    pub fn system() -> Self {
        Actor {
            id: "system".to_owned(),
            is_bootstrap: true,
            via_operator_header: false,
        }
    }
}
