//! Writing needles and volumes as SeaweedFS does.

mod encode;
mod volume_writer;

pub use encode::{encode_needle, EncodeError, NeedleSpec, MAX_NAME_SIZE_BYTES, MAX_PAIRS_SIZE_BYTES};
pub use volume_writer::{
    volume_file_stem, VolumeWriter, VolumeWriterOptions, WriteError, WriteSummary, WRITER_VERSION,
};
