//! Resume tokens of Push.Subscribe. A cursor names a position in the tenant's partition of
//! the notifications topic: the record to read next and how many of its subscriber ids were
//! already delivered (a stored record may be split into several streamed batches). Clients
//! treat it as opaque.

use std::fmt;

/// A position in a tenant's notification stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Partition of the notifications topic.
    pub partition: i32,
    /// Offset of the next record to read.
    pub offset: i64,
    /// Subscriber ids of that record already delivered.
    pub skip: u32,
}

/// A cursor that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed cursor")]
pub struct BadCursor;

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v1.{}.{}.{}", self.partition, self.offset, self.skip)
    }
}

impl std::str::FromStr for Cursor {
    type Err = BadCursor;
    fn from_str(s: &str) -> Result<Self, BadCursor> {
        let mut parts = s.split('.');
        if parts.next() != Some("v1") {
            return Err(BadCursor);
        }
        let mut next = || parts.next().ok_or(BadCursor);
        let partition: i32 = next()?.parse().map_err(|_| BadCursor)?;
        let offset: i64 = next()?.parse().map_err(|_| BadCursor)?;
        let skip: u32 = next()?.parse().map_err(|_| BadCursor)?;
        if parts.next().is_some() || partition < 0 || offset < 0 {
            return Err(BadCursor);
        }
        Ok(Cursor { partition, offset, skip })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_refuses_garbage() {
        let c = Cursor { partition: 3, offset: 42, skip: 7 };
        assert_eq!(c.to_string().parse::<Cursor>(), Ok(c));
        for bad in ["", "v2.1.1.1", "v1.1.1", "v1.-1.0.0", "v1.1.1.1.1", "v1.a.1.1"] {
            assert_eq!(bad.parse::<Cursor>(), Err(BadCursor), "{bad}");
        }
    }
}
