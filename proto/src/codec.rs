//! The protobuf codec of the Workload API services: prost's, with small buffers.
//!
//! tonic gives every call an encode buffer of its codec's `buffer_size` (8 KiB by default) and
//! keeps it for the life of the call. An agent holds one `FetchX509SVID` stream per workload
//! connection for hours, each sending a message of a few KiB now and then, so that default
//! buffer was a quarter of what an idle workload cost the agent. A small initial buffer grows
//! to the message size on first use and stays there; large messages (many SVIDs) still grow it
//! as far as they need.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial size of each call's encode and decode buffer.
const BUFFER_SIZE: usize = 512;
/// Encoded bytes gathered before they are handed to HTTP/2 (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost encoding with [`BUFFER_SIZE`] buffers; used by the generated Workload API code.
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
