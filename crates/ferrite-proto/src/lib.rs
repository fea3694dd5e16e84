//! Generated protobuf types of the `ferrite.v1` package (see `proto/ferrite/v1`).

/// The `ferrite.v1` package.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/ferrite.v1.rs"));
}

pub use prost;
pub use prost_types;
