//! Needle reads. Filled in by the volume-format work: until a transport is
//! configured the engine answers reads with NO_SUCH_VOLUME.

use crate::config::Config;
use crate::execute::Outcome;
use shm_layout::entry::{Cqe, ErrorCode, NeedleRead};
use shm_layout::region::RegionView;

#[derive(Debug, thiserror::Error)]
pub enum ReadSetupError {}

#[derive(Debug)]
pub struct ReadService {}

impl ReadService {
    pub fn from_config(_config: &Config) -> Result<Option<ReadService>, ReadSetupError> {
        Ok(None)
    }

    pub fn read(
        &mut self,
        user_data: u64,
        _read: &NeedleRead,
        _view: &RegionView,
    ) -> (Cqe, Outcome) {
        (
            Cqe::error(user_data, ErrorCode::NO_SUCH_VOLUME),
            Outcome::default(),
        )
    }
}
