//! `hexcast.v1.NotificationBatch` as the Push stream reads it back from the notifications
//! topic, with the cursor the stream hands out.
#![no_main]

use hexcast_proto::v1 as pb;
use prost::Message as _;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(b) = pb::NotificationBatch::decode(data) else { return };
    if let Some(a) = b.alert {
        let _ = hexcast_core::Alert::try_from(a);
    }
});
