//! The planner: what a sync sends, decided without Postgres.
//!
//! `definition` checks what a user declares (object, behavior, options);
//! `mapping` resolves the mappings (or the conventions) against the columns of the
//! sync's query; `sql` renders the result as set-based SQL that builds, validates
//! and hashes every record inside Postgres, so no result is ever held in memory here;
//! `compare` tells, row by row as the query runs, which rows changed since delivery.

pub mod compare;
pub mod definition;
pub mod mapping;
pub mod sql;

pub use definition::{Behavior, Object, Options, PlanError};
pub use mapping::{plan, Column, ColumnType, Field, Plan, Target};
