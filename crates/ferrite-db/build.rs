//! Rebuilds the crate when a migration is added, because `sqlx::migrate!` embeds the files at compile time.

fn main() {
    // Without this, cargo tracks only the files that existed at the last build, and a new migration would be missed.
    println!("cargo:rerun-if-changed=../../migrations");
}
