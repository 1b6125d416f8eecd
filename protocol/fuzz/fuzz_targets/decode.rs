//! Arbitrary bytes through every decoder of the cluster protocol: none may panic, and a
//! message that decodes must encode and decode again to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use offload_protocol::{
    self as protocol, FromWorker, Hello, HelloReply, Request, Response, ToWorker,
};

fn round_trip<T>(data: &[u8], limit: usize)
where
    T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if let Ok(message) = protocol::decode::<T>(data, limit) {
        let frame = protocol::encode(&message, limit).expect("a decoded message encodes");
        let again = protocol::decode_frame::<T>(&frame, limit).expect("an encoded message decodes");
        // Compared as bytes, not with `==`: a decoded f64 (a tuned rate) may be NaN,
        // which is not equal to itself although it round-trips exactly.
        let frame_again = protocol::encode(&again, limit).expect("a decoded message encodes");
        assert_eq!(
            frame_again, frame,
            "encode/decode is not a round trip: {message:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = protocol::decode_frame::<Request>(data, protocol::MAX_DATA);
    round_trip::<Request>(data, protocol::MAX_DATA);
    round_trip::<Response>(data, protocol::MAX_DATA);
    round_trip::<Hello>(data, protocol::MAX_CONTROL);
    round_trip::<HelloReply>(data, protocol::MAX_CONTROL);
    round_trip::<ToWorker>(data, protocol::MAX_DATA);
    round_trip::<FromWorker>(data, protocol::MAX_DATA);
});
