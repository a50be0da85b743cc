use libtest_mimic::Trial;

mod s00_install;
mod s01_destinations;
mod s02_security;
mod s03_worker;
mod s04_syncs;
mod s05_planning;
mod s06_sync_security;
mod s07_delivery;
mod s08_durability;
mod s09_rest_and_users;
mod s10_operations;
mod s11_faults;
mod s12_hostile_input;
mod s13_elevation;
mod s14_new_user;
mod s15_scale;
mod s16_databases;
mod s17_live;

/// Every scenario, as test trials named `<file>::<test>`.
pub fn all() -> Vec<Trial> {
    let mut trials = Vec::new();
    trials.extend(s00_install::trials());
    trials.extend(s01_destinations::trials());
    trials.extend(s02_security::trials());
    trials.extend(s03_worker::trials());
    trials.extend(s04_syncs::trials());
    trials.extend(s05_planning::trials());
    trials.extend(s06_sync_security::trials());
    trials.extend(s07_delivery::trials());
    trials.extend(s08_durability::trials());
    trials.extend(s09_rest_and_users::trials());
    trials.extend(s10_operations::trials());
    trials.extend(s11_faults::trials());
    trials.extend(s12_hostile_input::trials());
    trials.extend(s13_elevation::trials());
    trials.extend(s14_new_user::trials());
    trials.extend(s15_scale::trials());
    trials.extend(s16_databases::trials());
    trials.extend(s17_live::trials());
    trials
}

/// Builds a trial from a plain test function that panics on failure.
#[macro_export]
macro_rules! trials {
    ($module:literal: $($f:ident),* $(,)?) => {
        pub fn trials() -> Vec<libtest_mimic::Trial> {
            vec![$(libtest_mimic::Trial::test(concat!($module, "::", stringify!($f)), || {
                $f();
                Ok(())
            })),*]
        }
    };
}
