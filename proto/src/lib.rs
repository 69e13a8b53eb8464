//! Sluice's gRPC API, package `sluice.v1`: the code tonic and prost generate from
//! `proto/sluice/v1/sluice.proto`, and the encoded descriptor set for server reflection.
//! No logic lives here.
#![allow(missing_docs)]
#![allow(clippy::all)]

/// `sluice.v1`.
pub mod v1 {
    tonic::include_proto!("sluice.v1");

    /// The encoded `FileDescriptorSet` of `sluice.v1`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/sluice_v1_descriptor.bin"));
}
