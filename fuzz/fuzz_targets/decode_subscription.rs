//! `hexcast.v1.Subscription` (stored form, cells only) as the push index loader reads it
//! from the subscriptions topic.
#![no_main]

use hexcast_core::Subscription;
use hexcast_proto::v1 as pb;
use prost::Message as _;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(p) = pb::Subscription::decode(data) else { return };
    let _ = Subscription::try_from(p);
});
