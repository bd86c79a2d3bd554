//! The warehouse: Firehose's Redshift destination, loading into PostgreSQL
//! (and anything that speaks its protocol).
//!
//! This module grows toward `RedshiftDestinationConfiguration`:
//!
//! - `jdbc`: where the warehouse is (`ClusterJDBCURL`);
//! - `copy`: how records become rows (`CopyCommand.CopyOptions`), with
//!   Redshift's meaning, refusing by name what hydrant does not do;
//! - `row`: a staged object into rows, or reasons they are not;
//! - `load`: one staged object into a table, exactly once (the argument is
//!   at the top of that module), each refused row apart.
//!
//! Nothing in the API accepts a Redshift destination yet: that waits for
//! delivery to drive the loader (staging, retries, the error output).

pub mod copy;
pub mod jdbc;
pub mod load;
pub mod row;
