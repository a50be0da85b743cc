//! The SQL functions users call, one file per kind of thing they manage.

mod delivery;
mod destinations;
mod monitoring;
mod running;
mod scheduling;
mod syncs;
