//! The settings' names, documentation and value kinds, taken from the declaration of [`super::Config`] itself,
//! so that every key of the TOML file is also a command-line flag with the same meaning and help text.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How a flag's text becomes the TOML value of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `--key` alone means true; `--key=false` turns it off.
    Bool,
    /// A whole number.
    Int,
    /// A whole number of milliseconds.
    Millis,
    /// Any text (an address, a path, a name).
    Str,
    /// One of these words.
    Choice(&'static [&'static str]),
    /// Text values: the flag repeated, or one comma-separated value.
    List,
    /// A TOML value written out (arrays of tables and the like).
    Toml,
}

/// The value kind of a setting's type.
pub trait FlagKind {
    const KIND: Kind;
}

macro_rules! flag_kinds {
    ($($ty:ty => $kind:expr),* $(,)?) => {
        $(impl FlagKind for $ty { const KIND: Kind = $kind; })*
    };
}

flag_kinds! {
    bool => Kind::Bool,
    u16 => Kind::Int,
    u32 => Kind::Int,
    u64 => Kind::Int,
    usize => Kind::Int,
    Duration => Kind::Millis,
    String => Kind::Str,
    SocketAddr => Kind::Str,
    PathBuf => Kind::Str,
    Vec<String> => Kind::List,
    super::IoBackend => Kind::Choice(&["auto", "epoll", "uring"]),
    super::FeedOverflow => Kind::Choice(&["backpressure", "drop"]),
    super::LagPolicyName => Kind::Choice(&["disconnect", "drop", "conflate"]),
    crate::upstream::Framing => Kind::Choice(&["auto", "tab", "binary"]),
}

impl<T: FlagKind> FlagKind for Option<T> {
    const KIND: Kind = T::KIND;
}

/// One setting: its key (the flag is the key with dashes), its documentation and its value kind.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    /// The field's doc comment: its first line is the flag's short help.
    pub doc: &'static str,
    pub kind: Kind,
}

impl Key {
    /// `--max-lag-bytes` for `max_lag_bytes`.
    pub fn flag(&self) -> String {
        self.name.replace('_', "-")
    }

    /// The first sentence of the doc comment (the short help, `-h`).
    pub fn summary(&self) -> String {
        let help = self.help();
        let first = help.split("\n\n").next().unwrap_or("");
        match first.find(". ") {
            Some(end) => first[..=end].to_string(),
            None => first.to_string(),
        }
    }

    /// The whole doc comment, re-flowed into one paragraph per blank-line-separated block.
    pub fn help(&self) -> String {
        let mut out = String::new();
        for line in self.doc.lines().map(str::trim) {
            if line.is_empty() {
                out.push_str("\n\n");
            } else {
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push(' ');
                }
                out.push_str(line);
            }
        }
        out
    }
}

/// Declares the configuration struct and, from the same declaration, `KEYS`: one [`Key`] per field, in order.
/// A field's `///` doc comment is its help text and its type gives the flag's value kind ([`FlagKind`]).
macro_rules! settings {
    (
        $(#[$struct_attr:meta])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $(#[serde($($serde:tt)*)])*
                pub $field:ident : $ty:ty,
            )*
        }
    ) => {
        $(#[$struct_attr])*
        pub struct $name {
            $(
                $(#[doc = $doc])*
                $(#[serde($($serde)*)])*
                pub $field: $ty,
            )*
        }

        /// Every setting, in declaration order.
        pub const KEYS: &[keys::Key] = &[
            $(keys::Key {
                name: stringify!($field),
                doc: concat!($($doc, "\n",)* ""),
                kind: <$ty as keys::FlagKind>::KIND,
            },)*
        ];
    };
}
