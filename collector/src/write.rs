//! Batches of rows to Parquet parts: the tables' columns, the encoders, and
//! the threads that write parts and put them in place in order.

pub mod access_batch;
pub mod encodings;
pub mod parquet_file;
pub mod parquet_part;
pub mod parquet_sink;
pub mod tables;
