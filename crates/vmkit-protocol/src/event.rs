use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::{Identity, State};

/// A state change of a workspace, as appended to its `events.jsonl` and, with
/// `--json`, printed as it happens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Which workspace and request this concerns.
    pub identity: Identity,
    /// The state entered.
    pub state: State,
    /// Why, in a few words (`"booted in 0.91s"`, `"qemu exited with status 1"`).
    pub detail: String,
    /// When the host observed the change, RFC 3339 in UTC.
    #[serde(with = "rfc3339")]
    pub observed_at: DateTime<Utc>,
}

impl Event {
    /// An event observed now.
    pub fn now(identity: Identity, state: State, detail: impl Into<String>) -> Self {
        Self {
            identity,
            state,
            detail: detail.into(),
            observed_at: Utc::now(),
        }
    }
}

/// Formats timestamps as RFC 3339 with millisecond precision and a `Z`.
pub(crate) mod rfc3339 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// The same for optional timestamps.
pub(crate) mod rfc3339_opt {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}
