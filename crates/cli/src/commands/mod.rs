pub mod arch;
pub mod bench;
pub mod classify;
pub mod import;
