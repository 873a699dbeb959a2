//! How the store's unsigned numbers meet SQL's signed 64-bit integers, for both engines.
//!
//! Ids use the whole `u64` range and are stored bit for bit (two's complement), so every id
//! round-trips. Positions, seqs and marks are counts that start at zero and grow by one: a
//! stored one never passes `i64::MAX`. A number given to the store (a client's cursor or
//! `before`) may be any `u64`, though, and a cast would wrap one past `i64::MAX` below zero,
//! where it compares below every stored count; clamped, it compares above them all, as it
//! should.

use confab_protocol::Id;

/// An id as its column holds it.
pub(super) fn id_to_sql(id: Id) -> i64 {
    id.0.cast_signed()
}

/// An id from its column.
pub(super) fn id_from_sql(v: i64) -> Id {
    Id(v.cast_unsigned())
}

/// A position, seq or bound given to the store, clamped to what SQL can hold (see the module
/// docs for why clamping keeps its order with every stored count).
pub(super) fn count_to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A page size as a `LIMIT`, clamped like [`count_to_sql`].
pub(super) fn limit_to_sql(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_counts_clamp() {
        for id in [0, 1, i64::MAX.cast_unsigned(), 1 << 63, u64::MAX] {
            assert_eq!(id_from_sql(id_to_sql(Id(id))), Id(id));
        }
        assert_eq!(count_to_sql(7), 7);
        assert_eq!(count_to_sql(1 << 63), i64::MAX);
        assert_eq!(count_to_sql(u64::MAX), i64::MAX);
        assert_eq!(limit_to_sql(usize::MAX), i64::MAX);
    }
}
