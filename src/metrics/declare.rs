//! [`declare_stats!`]: a stats struct whose fields are its metrics.

/// Declares a stats struct of relaxed atomics and its table of exported metrics (`T::METRICS`), from one
/// declaration per field: the field's visibility, its kind (`counter`, `gauge` or `histogram`), its name and its
/// type (`AtomicU64`, [`PerLabel`](crate::metrics::PerLabel) or [`Histogram`](crate::metrics::Histogram)), with
/// a doc comment that becomes the metric's help text (required). The metric is named `PREFIX` + the field name,
/// plus `_total` for a counter. Fields in the optional `internal { … }` block are not exported.
///
/// ```ignore
/// declare_stats! {
///     prefix "wsgate_";
///     #[derive(Debug, Default)]
///     pub struct ShardStats {
///         /// Connections currently held (any phase).
///         pub gauge connections: AtomicU64,
///     }
///     internal {
///         pub feed_queue_closed: AtomicBool,
///     }
/// }
/// ```
macro_rules! declare_stats {
    (
        prefix $prefix:literal;
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:literal])+
                $fvis:vis $kind:ident $field:ident : $ty:ty,
            )*
        }
        $( internal {
            $( $(#[$imeta:meta])* $ivis:vis $ifield:ident : $ity:ty, )*
        } )?
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[doc = $doc])+ $fvis $field: $ty, )*
            $($( $(#[$imeta])* $ivis $ifield: $ity, )*)?
        }

        impl $name {
            /// Every exported field, in declaration order (see `metrics::declare_stats!`).
            pub const METRICS: &'static [$crate::metrics::Metric<$name>] = &[
                $( $crate::metrics::Metric {
                    name: $crate::metrics::metric_name!($prefix, $kind, $field),
                    help: concat!($(" ", $doc),+),
                    kind: $crate::metrics::metric_kind!($kind),
                    get: {
                        fn get(s: &$name) -> &dyn $crate::metrics::Export {
                            &s.$field
                        }
                        get
                    },
                }, )*
            ];
        }
    };
}

/// The metric name of a declared field.
macro_rules! metric_name {
    ($prefix:literal, counter, $field:ident) => {
        concat!($prefix, stringify!($field), "_total")
    };
    ($prefix:literal, gauge, $field:ident) => {
        concat!($prefix, stringify!($field))
    };
    ($prefix:literal, histogram, $field:ident) => {
        concat!($prefix, stringify!($field))
    };
}

/// The [`Kind`](crate::metrics::Kind) of a declared field.
macro_rules! metric_kind {
    (counter) => {
        $crate::metrics::Kind::Counter
    };
    (gauge) => {
        $crate::metrics::Kind::Gauge
    };
    (histogram) => {
        $crate::metrics::Kind::Histogram
    };
}

pub(crate) use declare_stats;
pub(crate) use metric_kind;
pub(crate) use metric_name;
