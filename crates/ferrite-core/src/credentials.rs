//! [`Credentials`]: a username and a password that no log line can show.

use std::fmt;

/// An MQTT (or any) login. `Debug` shows the username only; there is no `Display` or `Serialize`,
/// so a config that holds one can derive `Debug` and be logged whole. Read the password with
/// [`Credentials::password`] where it is sent, and nowhere else.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    password: String,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials { username: username.into(), password: password.into() }
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    /// The secret, for the one place that sends it.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `(username, password)`, for clients that still take a pair.
    pub fn into_pair(self) -> (String, String) {
        (self.username, self.password)
    }
}

impl From<(String, String)> for Credentials {
    fn from((username, password): (String, String)) -> Self {
        Credentials { username, password }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

#[cfg(test)]
mod tests {
    use super::Credentials;

    #[test]
    fn debug_never_shows_the_password() {
        let credentials = Credentials::new("service:ingester", "s3cret-value");
        let shown = format!("{credentials:?} {credentials:#?}");
        assert!(shown.contains("service:ingester"), "{shown}");
        assert!(!shown.contains("s3cret-value"), "{shown}");
        assert_eq!(credentials.password(), "s3cret-value");
    }
}
