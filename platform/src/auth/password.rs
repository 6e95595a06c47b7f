//! What a password must be. Shared by account routes and by the config check of the admin
//! password, so it sits below both.

pub const PASSWORD_MIN_CHARS: usize = 8;
/// Long enough for any passphrase, short enough that hashing it costs nothing extra.
pub const PASSWORD_MAX_CHARS: usize = 1024;

pub fn check_password(password: &str) -> Result<(), String> {
    if password.chars().count() < PASSWORD_MIN_CHARS {
        return Err(format!(
            "must be at least {PASSWORD_MIN_CHARS} characters long"
        ));
    }
    if password.chars().count() > PASSWORD_MAX_CHARS {
        return Err(format!(
            "must be at most {PASSWORD_MAX_CHARS} characters long"
        ));
    }
    if password.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_need_length_and_no_control_characters() {
        assert!(check_password("correct horse").is_ok());
        assert!(check_password("пароль-пароль").is_ok());
        assert!(check_password("short").is_err());
        assert!(check_password("tab\tinside-password").is_err());
        assert!(check_password(&"x".repeat(PASSWORD_MAX_CHARS + 1)).is_err());
    }
}
