//! `settings!`: a settings struct whose fields carry their defaults beside them. The
//! macro writes the struct, its `Default`, and a "Default: …" line at the end of each
//! field's documentation, so that every default is written once.

/// Declares `pub struct Name { pub field: Type = default, … }` with `Default` and the
/// defaults in the fields' documentation; attributes on the struct and on the fields are
/// kept.
macro_rules! settings {
    (
        $(#[$struct_meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                pub $field:ident: $ty:ty = $default:expr,
            )*
        }
    ) => {
        $(#[$struct_meta])*
        pub struct $name {
            $(
                $(#[$field_meta])*
                #[doc = ""]
                #[doc = concat!("Default: `", stringify!($default), "`.")]
                pub $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $($field: $default,)* }
            }
        }
    };
}

pub(crate) use settings;
