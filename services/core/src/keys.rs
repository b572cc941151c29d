//! Keys a push backend hands to APNs and FCM: a collapse key per incident (stable across
//! its updates and its close, so the newest notification replaces the earlier one on the
//! phone) and an idempotency key per (alert version, subscriber) for backends that retry.
//! Both are FNV-1a 64 hashes, written as "hx-" and 16 lowercase hex digits: short enough for
//! APNs' 64-byte `apns-collapse-id`, stable across releases (the algorithm is part of the
//! API contract: docs/API.md), and free of the ids they are made from.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `parts`, each followed by a NUL byte so that ("ab", "c") and ("a", "bc")
/// differ.
fn fnv1a64(parts: &[&str]) -> u64 {
    let mut h = FNV_OFFSET;
    for p in parts {
        for &b in p.as_bytes().iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(FNV_PRIME);
        }
    }
    h
}

/// The collapse key of every notification of one incident.
pub fn collapse_key(incident_id: &str) -> String {
    format!("hx-{:016x}", fnv1a64(&[incident_id]))
}

/// The idempotency key of one alert version for one subscriber of one tenant.
pub fn idempotency_key(alert_id: &str, tenant: &str, subscriber_id: &str) -> String {
    format!("hx-{:016x}", fnv1a64(&[alert_id, tenant, subscriber_id]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_published_test_vectors() {
        // FNV-1a 64 of "" is the offset basis and of "a" is 0xaf63dc4c8601ec8c; with the NUL
        // separator, "a" hashes as the bytes "a\0".
        let raw = |s: &[u8]| s.iter().fold(FNV_OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME));
        assert_eq!(raw(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(raw(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(&["a"]), raw(b"a\0"));
    }

    #[test]
    fn collapse_key_is_per_incident_and_idempotency_key_per_version_and_subscriber() {
        assert_eq!(collapse_key("montco:1"), collapse_key("montco:1"));
        assert_ne!(collapse_key("montco:1"), collapse_key("montco:2"));
        assert_eq!(collapse_key("x").len(), 19);
        let k = idempotency_key("montco:1@1", "alpha", "s1");
        assert_eq!(k, idempotency_key("montco:1@1", "alpha", "s1"));
        assert_ne!(k, idempotency_key("montco:1@2", "alpha", "s1"));
        assert_ne!(k, idempotency_key("montco:1@1", "alpha", "s2"));
        assert_ne!(idempotency_key("a", "bc", "d"), idempotency_key("ab", "c", "d"));
    }
}
