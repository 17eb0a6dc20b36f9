//! Small domain enums every stage speaks: camera states and the incident lifecycle.
//!
//! Each has a stable lowercase name used in the database, the API and MQTT payloads.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $var),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = crate::Error;
            fn from_str(s: &str) -> Result<Self, crate::Error> {
                match s {
                    $($s => Ok($name::$var),)+
                    _ => Err(crate::Error::new(
                        crate::ErrorKind::InvalidArgument,
                        format!(concat!("unknown ", stringify!($name), " {:?}; expected one of {}"), s,
                            [$($s),+].join(", ")),
                    )),
                }
            }
        }
    };
}

named_enum!(
    /// Connection state of one camera stream.
    CameraState {
        /// Configured but no session yet, or reconnecting.
        Connecting => "connecting",
        /// Frames are arriving.
        Online => "online",
        /// Failed; `last_error` says why.
        Offline => "offline",
    }
);

named_enum!(
    /// The workflow of an incident, driven by people.
    IncidentState {
        Raised => "raised",
        Acknowledged => "acknowledged",
        Dispatched => "dispatched",
        Resolved => "resolved",
    }
);

named_enum!(
    /// The condition behind an incident, driven by the source (a button latched, a camera back).
    Condition {
        Active => "active",
        Cleared => "cleared",
    }
);

named_enum!(
    /// What a person decided the incident was.
    Outcome {
        Genuine => "genuine",
        False => "false",
        Test => "test",
        Malicious => "malicious",
        Duplicate => "duplicate",
    }
);

named_enum!(
    /// Where a raw alarm signal came from.
    SignalSource {
        Device => "device",
        Motion => "motion",
        Camera => "camera",
        System => "system",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_explained() {
        for s in IncidentState::ALL {
            assert_eq!(s.as_str().parse::<IncidentState>().unwrap(), *s);
        }
        let e = "closed".parse::<IncidentState>().unwrap_err();
        assert_eq!(
            e.message(),
            "unknown IncidentState \"closed\"; expected one of raised, acknowledged, dispatched, resolved"
        );
        assert_eq!(
            serde_json::to_string(&CameraState::Online).unwrap(),
            "\"online\""
        );
    }
}
