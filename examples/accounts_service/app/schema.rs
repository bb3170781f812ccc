//! One diesel schema module per version: each binding compiles against the
//! tables of its own version only.

/// Version 1: one name, one email.
pub mod v1 {
    diesel::table! {
        accounts (id) {
            id -> BigInt,
            name -> Text,
            email -> Text,
        }
    }
}

/// Version 2: many emails per account, one primary.
pub mod v2 {
    diesel::table! {
        accounts (id) {
            id -> BigInt,
            name -> Text,
        }
    }
    diesel::table! {
        account_emails (id) {
            id -> BigInt,
            account_id -> BigInt,
            email -> Text,
            is_primary -> Bool,
        }
    }
}

/// Version 3: first and last name, and a plan.
pub mod v3 {
    diesel::table! {
        accounts (id) {
            id -> BigInt,
            first_name -> Text,
            last_name -> Text,
            plan -> Text,
        }
    }
    pub use super::v2::account_emails;
}
