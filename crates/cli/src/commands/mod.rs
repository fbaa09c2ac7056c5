pub mod arch;
pub mod bench;
pub mod classify;
pub mod eval;
pub mod import;
pub mod quantize;
pub mod train;
mod train_data;
mod train_progress;
