//! Authentication building blocks for the control plane: password hashing, access tokens,
//! TOTP second factor, refresh-token secrets and login rate limits.

pub mod limiter;
pub mod password;
pub mod tokens;
pub mod totp;
