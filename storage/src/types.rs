//! Small types shared by every repository.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

/// A point in time, stored as milliseconds since the Unix epoch and shown as RFC 3339.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, sqlx::Type)]
#[sqlx(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
    }

    /// Milliseconds since the epoch.
    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// This time plus `duration` (saturating).
    pub fn after(self, duration: Duration) -> Self {
        Self(
            self.0
                .saturating_add(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// Whole seconds from `earlier` to `self`, or zero if `earlier` is later.
    pub fn secs_since(self, earlier: Self) -> u64 {
        u64::try_from(self.0.saturating_sub(earlier.0) / 1000).unwrap_or(0)
    }

    /// RFC 3339 text in UTC, e.g. `2026-11-21T23:50:20.123Z`.
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| self.0.to_string())
    }

    /// Parses RFC 3339 text (`Z` or a numeric offset; fractional seconds optional).
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let t = time::OffsetDateTime::parse(text, &Rfc3339).ok()?;
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .ok()
            .map(Self)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse_rfc3339(&text)
            .ok_or_else(|| serde::de::Error::custom("expected an RFC 3339 date-time"))
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::DateTime,
            )))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Timestamp {}

/// Which rows a caller may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every tenant (superadmin).
    All,
    /// One tenant only.
    Tenant(Uuid),
}

impl Scope {
    /// The tenant id to filter on, or `None` for every tenant.
    pub(crate) fn tenant(self) -> Option<Uuid> {
        match self {
            Self::All => None,
            Self::Tenant(id) => Some(id),
        }
    }
}

/// A request for one page of a list ordered by id.
#[derive(Clone, Copy, Debug)]
pub struct PageRequest {
    /// At most this many items (clamped to 1..=500).
    pub limit: u32,
    /// Continue after (or, for newest-first lists, before) this id.
    pub cursor: Option<Uuid>,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            limit: 50,
            cursor: None,
        }
    }
}

impl PageRequest {
    /// How many rows to fetch: one more than the page, to learn whether another page follows.
    pub(crate) fn fetch(&self) -> i64 {
        i64::from(self.limit.clamp(1, 500)) + 1
    }
}

/// One page of a list.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<Uuid>,
}

impl<T> Page<T> {
    /// Builds a page from `rows` fetched with [`PageRequest::fetch`], using `id` for the cursor.
    pub(crate) fn from_rows(
        mut rows: Vec<T>,
        request: &PageRequest,
        id: impl Fn(&T) -> Uuid,
    ) -> Self {
        let limit = request.limit.clamp(1, 500) as usize;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(id)
        } else {
            None
        };
        Self {
            items: rows,
            next_cursor,
        }
    }

    /// Converts every item.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

/// Declares a string-backed enum stored as text, with `as_str`, `FromStr`, serde and (with the
/// `openapi` feature) a schema.
macro_rules! text_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// The stored and wire form.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::Error;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($text => Ok(Self::$variant),)+
                    other => Err($crate::Error::Corrupt(format!(
                        concat!("unknown ", stringify!($name), " `{}`"),
                        other
                    ))),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = $crate::Error;
            fn try_from(text: String) -> Result<Self, Self::Error> {
                text.parse()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use text_enum;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        for millis in [
            0,
            1,
            999,
            1_000,
            951_782_400_000,
            1_795_305_020_123,
            -86_400_000,
        ] {
            let t = Timestamp(millis);
            assert_eq!(
                Timestamp::parse_rfc3339(&t.to_rfc3339()),
                Some(t),
                "{}",
                t.to_rfc3339()
            );
        }
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(
            Timestamp(951_782_400_000).to_rfc3339(),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn rfc3339_accepts_offsets_and_rejects_garbage() {
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-21T23:50:20+01:00"),
            Timestamp::parse_rfc3339("2026-11-21T22:50:20Z")
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-21T22:50:20.5Z").map(|t| t.0 % 1000),
            Some(500)
        );
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-11-21T22:50:20",
            "2026-11-21T22:50:20.Z",
        ] {
            assert_eq!(Timestamp::parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn page_from_rows_sets_cursor_only_when_more_follow() {
        let request = PageRequest {
            limit: 2,
            cursor: None,
        };
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let page = Page::from_rows(ids.clone(), &request, |id| *id);
        assert_eq!(page.items, ids[..2]);
        assert_eq!(page.next_cursor, Some(ids[1]));
        let last = Page::from_rows(ids[..2].to_vec(), &request, |id| *id);
        assert_eq!(last.next_cursor, None);
    }
}
